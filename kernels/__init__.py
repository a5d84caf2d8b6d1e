"""Kernel dispatch: one function per primitive, routed by array type and tinycnn.config.kernels.

    CuPy array                          -> CuPy GPU kernels   (tinycnn.kernels.gpu)
    NumPy array, kernels "auto"/"numba" -> Numba CPU kernels  (tinycnn.kernels.cpu)
    NumPy array, kernels "numpy"        -> the readable NumPy reference (tinycnn.kernels.reference)

Choose with `tinycnn.config.set_kernels("numpy")`, `with tinycnn.config.using(kernels="numpy"):` or
TINYCNN_KERNELS=numpy in the environment. "numba" insists on Numba: a CuPy array under it is an
error rather than a silent switch to the GPU kernels. A CuPy array under "numpy" still runs the
CuPy kernels ("numpy" chooses among the CPU implementations).

tinycnn.functional calls only these functions, so the maths of an op lives in one place per
backend. Each is written out below with the reference's arguments (the reference's own docstring
has the maths); the first argument decides the backend. The three implementations take the same
arguments and return the same results (the reference is the test oracle).

kernels.cpu and kernels.gpu are imported on first use: importing Numba costs a fraction of a
second, CuPy more, and neither is needed to build a model or to run the reference. The first use of
the Numba kernels also limits OpenBLAS to one thread (see tinycnn._threading).
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
    "batch_norm_forward_inference", "batch_norm_backward_inference", "relu_forward", "relu_backward",
    "add_in_place", "conv2d_batch_norm_relu_inference", "concat_batch_norm_relu_inference",
    "batch_norm_relu_forward_training", "batch_norm_relu_backward", "concatenate", "sgd_update",
)

_numba_kernels = None  # tinycnn.kernels.cpu, once imported


def implementation(name, array):
    """The module (tinycnn.kernels.gpu, .cpu or .reference) whose function `name` runs when
    tinycnn.kernels.<name> is called with `array` as its first argument under the current
    tinycnn.config.kernels. Raises ValueError for a name that is not one of PRIMITIVES, and the
    call's own error where no backend can run it (a CuPy array under kernels="numba", say)."""
    if name not in PRIMITIVES:
        raise ValueError(f"tinycnn.kernels.implementation: expected one of the primitives {PRIMITIVES}, got {name!r}")
    return _backend(name, array)


def _backend(name, array):
    """The module that runs primitive `name` for `array` (implementation() without the name check,
    for the dispatchers below, whose names are right by construction)."""
    kernels = config.kernels
    if is_gpu_array(array):
        if kernels == "numba":
            raise TypeError(f"tinycnn.kernels.{name}: kernels='numba' runs on NumPy arrays, got a CuPy array; "
                            "choose kernels='auto' for the CuPy kernels, or move the data to the CPU")
        from tinycnn.kernels import gpu
        return gpu
    if kernels == "auto" or kernels == "numba":
        return _numba(name)
    if kernels == "numpy":
        return reference
    # config.set_kernels and config.using check the value; this catches `config.kernels = ...`.
    raise ValueError(f"tinycnn.kernels.{name}: tinycnn.config.kernels must be 'auto', 'numba' or 'numpy', "
                     f"got {kernels!r}")


def _numba(name):
    global _numba_kernels
    if _numba_kernels is None:
        try:
            from tinycnn.kernels import cpu
        except ImportError as error:
            raise ImportError(f"tinycnn.kernels.{name}: the Numba kernels could not be imported ({error}); install "
                              "numba, or choose the NumPy reference with tinycnn.config.set_kernels('numpy') or "
                              "TINYCNN_KERNELS=numpy") from error
        _numba_kernels = cpu
    return _numba_kernels


def matmul(a, b):
    """a @ b for 2-D a (M, K) and b (K, N).

    Runs on a's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.matmul, which has the maths."""
    return _backend("matmul", a).matmul(a, b)


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """(N, C, H, W) -> (N, C, KH, KW, OH, OW): every window of x as a column.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.im2col, which has the maths."""
    return _backend("im2col", x).im2col(x, KH, KW, SH, SW, PH, PW, DH, DW)


def col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    """(N, C, KH, KW, OH, OW) -> (N, C, H, W), the adjoint of im2col.

    Runs on col's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.col2im, which has the maths."""
    return _backend("col2im", col).col2im(col, H, W, SH, SW, PH, PW, DH, DW)


def conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups):
    """y (N, OC, OH, OW) = W * x + b.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.conv2d_forward, which has the maths."""
    return _backend("conv2d_forward", x).conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups)


def conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad=(True, True, True)):
    """(gx, gW, gb) of conv2d_forward, each None where needs_grad says so.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.conv2d_backward, which has the maths."""
    return _backend("conv2d_backward", gy).conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad)


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    """(y, argmax) of max pooling.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.max_pool2d_forward, which has the maths."""
    return _backend("max_pool2d_forward", x).max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode)


def max_pool2d_backward(gy, argmax, H, W):
    """gx (N, C, H, W) of max pooling.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.max_pool2d_backward, which has the maths."""
    return _backend("max_pool2d_backward", gy).max_pool2d_backward(gy, argmax, H, W)


def avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """y of average pooling.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.avg_pool2d_forward, which has the maths."""
    return _backend("avg_pool2d_forward", x).avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode,
                                                                count_include_pad)


def avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """gx (N, C, H, W) of average pooling.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.avg_pool2d_backward, which has the maths."""
    return _backend("avg_pool2d_backward", gy).avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode,
                                                                   count_include_pad)


def batch_norm_forward_training(x, gamma, beta, eps):
    """(y, mean, var, inv_std) of batch normalisation with the batch's statistics.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_forward_training, which has the maths."""
    return _backend("batch_norm_forward_training", x).batch_norm_forward_training(x, gamma, beta, eps)


def batch_norm_backward(gy, x, gamma, mean, inv_std):
    """(gx, ggamma, gbeta) of batch_norm_forward_training.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_backward, which has the maths."""
    return _backend("batch_norm_backward", gy).batch_norm_backward(gy, x, gamma, mean, inv_std)


def lrn_forward(x, size, alpha, beta, k):
    """(y, scale) of local response normalisation across channels.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.lrn_forward, which has the maths."""
    return _backend("lrn_forward", x).lrn_forward(x, size, alpha, beta, k)


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """gx of lrn_forward.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.lrn_backward, which has the maths."""
    return _backend("lrn_backward", x).lrn_backward(x, y, scale, gy, size, alpha, beta)


def batch_norm_forward_inference(x, gamma, beta, mean, inv_std):
    """y of batch normalisation with given (C,) statistics: evaluation mode's running ones.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_forward_inference, which has the maths."""
    return _backend("batch_norm_forward_inference", x).batch_norm_forward_inference(x, gamma, beta, mean, inv_std)


def batch_norm_backward_inference(gy, x, gamma, mean, inv_std):
    """(gx, ggamma, gbeta) of batch_norm_forward_inference.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_backward_inference, which has the maths."""
    return _backend("batch_norm_backward_inference", gy).batch_norm_backward_inference(gy, x, gamma, mean, inv_std)


def relu_forward(x, out=None):
    """y = max(x, 0); written into `out` (x's shape and dtype; x itself for ReLU in place) and out
    returned, when out is given.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.relu_forward, which has the maths."""
    return _backend("relu_forward", x).relu_forward(x, out)


def add_in_place(y, x):
    """y += x (x broadcast to y's shape), returning y: the residual add of inference.

    Runs on y's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.add_in_place, which has the maths."""
    return _backend("add_in_place", y).add_in_place(y, x)


def conv2d_batch_norm_relu_inference(x, W, b, SH, SW, PH, PW, DH, DW, groups, gamma, beta, mean, inv_std, residual,
                                     relu):
    """relu(batch_norm_forward_inference(conv2d_forward(x, W, b, ...), gamma, beta, mean, inv_std)
    + residual) in one call (the residual only when not None, the ReLU only when relu is True):
    inference's conv -> BatchNorm -> ReLU, or a ResNet block's last conv -> BatchNorm -> add -> ReLU.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.conv2d_batch_norm_relu_inference, which has the maths."""
    return _backend("conv2d_batch_norm_relu_inference", x).conv2d_batch_norm_relu_inference(
        x, W, b, SH, SW, PH, PW, DH, DW, groups, gamma, beta, mean, inv_std, residual, relu)


def concat_batch_norm_relu_inference(xs, gamma, beta, mean, inv_std, relu):
    """relu(batch_norm_forward_inference(concat(xs, axis=1), gamma, beta, mean, inv_std)) in one
    call (the ReLU only when relu is True), xs a sequence of (N, C_k, ...) arrays: inference's
    concat -> BatchNorm -> ReLU, a DenseNet layer's first steps.

    Runs on the backend of xs[0]: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.concat_batch_norm_relu_inference, which has the maths."""
    return _backend("concat_batch_norm_relu_inference", xs[0]).concat_batch_norm_relu_inference(
        xs, gamma, beta, mean, inv_std, relu)


def batch_norm_relu_forward_training(x, gamma, beta, eps, residual, relu):
    """(y, mean, var, inv_std) of batch_norm_forward_training, with y = relu(normalised x +
    residual) (the residual only when not None, the ReLU only when relu is True): training's
    BatchNorm -> add -> ReLU in one call.

    Runs on x's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_relu_forward_training, which has the maths."""
    return _backend("batch_norm_relu_forward_training", x).batch_norm_relu_forward_training(
        x, gamma, beta, eps, residual, relu)


def batch_norm_relu_backward(gy, y, x, gamma, mean, inv_std, relu, needs_residual_grad):
    """(gx, ggamma, gbeta, gresidual) of batch_norm_relu_forward_training, from its output y.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.batch_norm_relu_backward, which has the maths."""
    return _backend("batch_norm_relu_backward", gy).batch_norm_relu_backward(
        gy, y, x, gamma, mean, inv_std, relu, needs_residual_grad)


def concatenate(xs, axis):
    """The arrays xs joined along `axis` (all other axes equal): concat's forward.

    Runs on the backend of xs[0]: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.concatenate, which has the maths."""
    return _backend("concatenate", xs[0]).concatenate(xs, axis)


def relu_backward(gy, y):
    """gx of relu_forward, from its output y.

    Runs on gy's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.relu_backward, which has the maths."""
    return _backend("relu_backward", gy).relu_backward(gy, y)


def sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    """One step of SGD (torch.optim.SGD's rule) on one parameter and its momentum buffer (None
    without momentum), in place; returns (param, buffer).

    Runs on param's backend: Numba (tinycnn.kernels.cpu) for a NumPy array, CuPy
    (tinycnn.kernels.gpu) for a CuPy array. tinycnn.config.set_kernels("numpy") chooses the NumPy
    reference for NumPy arrays, tinycnn.kernels.reference.sgd_update, which has the maths."""
    return _backend("sgd_update", param).sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay,
                                                    nesterov, maximize, first_step)
