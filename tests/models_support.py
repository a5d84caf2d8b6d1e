"""Helpers shared by the model-zoo tests: cheap initialisation for big networks, and each
network's canonical and smallest inputs."""
import contextlib

import numpy as np

from tinycnn.nn import init

# The registry name -> (C, H, W) the network is specified for.
CANONICAL_INPUT = {
    "lenet": (1, 28, 28), "lenet5": (1, 32, 32), "lenet_d2l": (1, 28, 28),
    "alexnet_paper": (3, 227, 227),
    "inception_v3": (3, 299, 299), "inception_v4": (3, 299, 299),
    "inception_resnet_v1": (3, 299, 299), "inception_resnet_v2": (3, 299, 299),
}
CIFAR_MODELS = {f"{kind}{depth}" for kind in ("resnet", "plain") for depth in (20, 32, 44, 56, 110)}
CIFAR_MODELS.add("densenet_bc_100")


def canonical_input(name):
    if name in CANONICAL_INPUT:
        return CANONICAL_INPUT[name]
    return (3, 32, 32) if name in CIFAR_MODELS else (3, 224, 224)


def num_classes_of(name):
    if name.startswith("lenet") or name in CIFAR_MODELS:
        return 10
    return 1000


@contextlib.contextmanager
def skipped_init():
    """Leave weights as numpy.empty left them (never touched, so a 138M-parameter VGG costs no memory
    and no time). Only for tests that count parameters or run in shape-only mode, where no value
    is ever read. BatchNorm's ones/zeros (cheap) are kept."""
    saved = {name: getattr(init, name) for name in ("uniform_", "normal_", "trunc_normal_")}
    for name in saved:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


@contextlib.contextmanager
def _uniform_init(uniform_):
    """Route nn.init's random draws through `uniform_(tensor, a, b)`: normal_ becomes the uniform
    distribution with the same mean and standard deviation, trunc_normal_ that one clipped."""
    saved = {name: getattr(init, name) for name in ("uniform_", "normal_", "trunc_normal_")}

    def normal_(tensor, mean=0.0, std=1.0):
        half_width = np.sqrt(3.0) * std  # U(-w, w) has standard deviation w / sqrt(3)
        return uniform_(tensor, mean - half_width, mean + half_width)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        normal_(tensor, mean, std)
        array = init._data(tensor)
        np.clip(array, a, b, out=array)
        return tensor

    init.uniform_, init.normal_, init.trunc_normal_ = uniform_, normal_, trunc_normal_
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def fast_init(seed=0):
    """Draw every random initial weight from a float32 uniform distribution with the mean and
    standard deviation the model asks for (nn.init draws float64 and converts: ~4 s for VGG's fc6
    alone). For forward/backward smoke tests, which check shapes and gradient flow, not
    initialisation (nn.init has its own tests)."""
    rng = np.random.default_rng(seed)

    def uniform_(tensor, a=0.0, b=1.0):
        array = init._data(tensor)
        values = rng.random(array.shape, dtype=np.float32)
        array[...] = values * np.float32(b - a) + np.float32(a)
        return tensor

    return _uniform_init(uniform_)


def tiled_init():
    """Fill every randomly initialised weight with one block of 2**20 uniform draws, repeated and
    scaled to the range the model asks for. For checks that need weights that are not zero, not a
    particular draw (the zoo's ONNX export): a VGG's 138M parameters cost a memory copy instead of
    a random draw each."""
    block = np.random.default_rng(0).random(2 ** 20, dtype=np.float32)

    def uniform_(tensor, a=0.0, b=1.0):
        flat = init._data(tensor).reshape(-1)  # a view: parameters are contiguous
        for start in range(0, flat.size, block.size):
            chunk = flat[start:start + block.size]
            np.multiply(block[:chunk.size], np.float32(b - a), out=chunk)
            chunk += np.float32(a)
        return tensor

    return _uniform_init(uniform_)
