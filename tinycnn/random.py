"""The random state behind dropout, weight initialisation and data shuffling.

One NumPy Generator, seeded by `tinycnn.manual_seed(seed)`, so a run is reproducible and its state
can be saved in a checkpoint (`get_rng_state` / `set_rng_state`) and restored exactly on resume.
"""
import copy

import numpy

_generator = numpy.random.default_rng()


def manual_seed(seed):
    """Seed the generator used by tinycnn (dropout masks, init, DataLoader shuffling)."""
    global _generator
    _generator = numpy.random.default_rng(seed)
    return _generator


def generator():
    """The current numpy.random.Generator."""
    return _generator


def get_rng_state():
    return copy.deepcopy(_generator.bit_generator.state)


def set_rng_state(state):
    _generator.bit_generator.state = state
