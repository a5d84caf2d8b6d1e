"""Kernel dispatch: one function per primitive, routed by array type and tinycnn.config.kernels.

    CuPy array                      -> CuPy GPU kernel  (tinycnn.kernels.gpu)
    NumPy array                     -> Numba CPU kernel (tinycnn.kernels.cpu)
    NumPy array, kernels == "numpy" -> the readable NumPy reference (tinycnn.kernels.reference)

tinycnn.functional calls only these names, so the maths of an op lives in one place per backend.
The three implementations take the same arguments and return the same results (the reference is
the test oracle). kernels.cpu and kernels.gpu are imported on first use: importing Numba costs a
fraction of a second, CuPy more, and neither is needed to build a model or run the reference.
"""
from tinycnn import config
from tinycnn.backend import is_gpu_array
from tinycnn.kernels import reference
from tinycnn.kernels.reference import avg_pool_divisor, conv_output_size  # noqa: F401 - shared index maths

PRIMITIVES = (
    "matmul", "im2col", "col2im", "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "batch_norm_forward_training", "batch_norm_backward",
    "lrn_forward", "lrn_backward",
)


def implementation(name, array):
    """The module whose `name` function handles `array` under the current config."""
    if is_gpu_array(array):
        from tinycnn.kernels import gpu
        return gpu
    if config.kernels == "numpy":
        return reference
    from tinycnn.kernels import cpu  # "auto" and "numba"
    return cpu


def _dispatcher(name):
    def dispatch(*args, **kwargs):
        return getattr(implementation(name, args[0]), name)(*args, **kwargs)
    dispatch.__name__ = name
    dispatch.__doc__ = getattr(reference, name).__doc__
    return dispatch


for _name in PRIMITIVES:
    globals()[_name] = _dispatcher(_name)
