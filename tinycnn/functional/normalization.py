"""Batch normalisation and local response normalisation.

The maths lives in the kernels (tinycnn.kernels.batch_norm_forward_training, lrn_forward, ...),
whose NumPy reference in kernels/reference.py is the one to read; these Functions validate, keep
what backward needs and update the running statistics.
"""
from tinycnn import backend, kernels
from tinycnn.autograd import Function, Tensor
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating

__all__ = ["batch_norm", "batch_norm_relu", "local_response_norm"]


def _array(value):
    return value.data if isinstance(value, Tensor) else value


def update_running_statistics(running_mean, running_var, mean, var, n, momentum):
    """Move the running statistics (updated in place; either may be None) towards a batch's mean
    and biased variance `var` over n values per channel: r = (1 - momentum) r + momentum * batch."""
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
    if running_var is not None:
        running_var *= 1 - momentum
        running_var += momentum * var * (n / (n - 1))  # the unbiased variance, as PyTorch stores it


def inference_statistics(running_mean, running_var, eps, dtype):
    """(mean, inv_std) of evaluation mode, in the input's dtype: the running mean, and
    1 / sqrt(running_var + eps)."""
    xp = backend.get_array_module(running_mean)
    return running_mean.astype(dtype), (1 / xp.sqrt(running_var + eps)).astype(dtype)


def check_batch_norm_inputs(op, x, gamma, beta, running_mean, running_var, training):
    """Validate batch normalisation's inputs as PyTorch does, the errors naming `op` (batch_norm,
    or batch_norm_relu, which takes the same inputs)."""
    check_floating(op, input=x, weight=gamma, bias=beta)
    if x.ndim < 2:
        raise ValueError(f"{op}: expected input of shape (N, C) or (N, C, H, W), got {tuple(x.shape)}")
    C = x.shape[1]
    for name, a in (("weight", gamma), ("bias", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"{op}: expected {name} of shape ({C},) for input of shape "
                             f"{tuple(x.shape)}, got {tuple(a.shape)}")
    if training and x.size and x.size // C <= 1:  # an empty batch passes through, as in PyTorch
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input "
                         f"of shape {tuple(x.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var, got None")


class BatchNorm(Function):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta per channel (axis 1) of x (N, C, ...).

    Training normalises with the batch's own mean and biased variance and, when running
    statistics are given, updates them in place: running = (1 - momentum) * running + momentum *
    batch, with the unbiased variance (times n / (n - 1), n = N * H * W), as PyTorch. Evaluation
    normalises with the running statistics, which are then constants.
    """

    explanation = Explanation(
        forward="""
per channel c, over its n = N*H*W values: mean = sum x / n, var = sum (x - mean)^2 / n,
x_hat = (x - mean) * inv_std with inv_std = 1 / sqrt(var + eps), y = gamma x_hat + beta
(training; evaluation uses the running statistics instead, and y is then affine in x)""",
        backward="""
Sums run over the n values of one channel.
1. dy/dbeta = 1 and dy/dgamma = x_hat: gbeta = sum gy, ggamma = sum gy * x_hat.
2. g_hat = dL/dx_hat = gamma * gy.
3. x reaches x_hat directly and through mean and var, which depend on all n values:
   dL/dvar  = sum g_hat (x - mean) * (-1/2) (var + eps)^(-3/2)
   dL/dmean = -inv_std sum g_hat   (the term through var vanishes: sum (x - mean) = 0)
   gx = g_hat inv_std + dL/dvar * 2 (x - mean) / n + dL/dmean / n
4. Substituting x - mean = x_hat / inv_std:
   gx = gamma inv_std (gy - sum(gy) / n - x_hat sum(gy x_hat) / n)
   = gamma inv_std (gy - gbeta / n - x_hat ggamma / n): the two sums of step 1 reused.""",
        saved="x and gamma (the inputs themselves, no copy) and the batch's mean and inv_std, (C,) each:\n"
              "x_hat is recomputed from them rather than kept, sparing an array of x's size.",
        kernels=("batch_norm_forward_training", "batch_norm_backward", "batch_norm_forward_inference",
                 "batch_norm_backward_inference"))
    # Training mode without running statistics: they are state the op updates, not inputs.
    examples = {"batch_norm": Example(shape=(4, 3, 2, 2),
                                      inputs=lambda shape, rng: [None, None, (shape[1],), (shape[1],)],
                                      options={"training": True})}

    def __init__(self, running_mean, running_var, training, momentum, eps):
        # The running statistics are state updated in place, not inputs: no gradient reaches them.
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x, gamma, beta):
        check_batch_norm_inputs("batch_norm", x, gamma, beta, self.running_mean, self.running_var, self.training)
        if self.training:
            y, mean, var, inv_std = kernels.batch_norm_forward_training(x, gamma, beta, self.eps)
            if x.size:  # an empty batch has no statistics: the running ones stay as they are (as PyTorch)
                update_running_statistics(self.running_mean, self.running_var, mean, var, x.size // x.shape[1],
                                          self.momentum)
        else:
            mean, inv_std = inference_statistics(self.running_mean, self.running_var, self.eps, x.dtype)
            y = kernels.batch_norm_forward_inference(x, gamma, beta, mean, inv_std)
        self.save_for_backward(x, gamma, mean, inv_std)
        return y

    def forward_shape_only(self, x, gamma, beta):
        # A summary in shape-only mode sees zeros, not data: it must not touch the running statistics.
        check_batch_norm_inputs("batch_norm", x, gamma, beta, self.running_mean, self.running_var, self.training)
        return backend.get_array_module(x).zeros_like(x)

    def backward(self, gy):
        x, gamma, mean, inv_std = self.saved_arrays
        if self.training:
            gx, ggamma, gbeta = kernels.batch_norm_backward(gy, x, gamma, mean, inv_std)
        else:
            # With constant statistics y is affine in x: dx = gy * gamma * inv_std,
            # dgamma = sum(gy * x_hat), dbeta = sum(gy), sums over every axis but the channel's.
            gx, ggamma, gbeta = kernels.batch_norm_backward_inference(gy, x, gamma, mean, inv_std)
        return (gx if self.needs_input_grad[0] else None,
                ggamma if self.needs_input_grad[1] else None,
                gbeta if self.needs_input_grad[2] else None)

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation as torch.nn.functional.batch_norm.

    running_mean and running_var (C,) are arrays (or Tensors, whose data is used) updated in place
    when training; they may be None in training (track_running_stats=False).
    """
    running_mean, running_var = _array(running_mean), _array(running_var)
    return BatchNorm(running_mean, running_var, training, momentum, eps)(input, weight, bias)


class BatchNormReLU(Function):
    """y = relu(batch_norm(x) + residual) in training mode, as one op: the run of layers that ends
    most blocks of a ResNet (bn -> add shortcut -> relu, or bn -> relu) and begins a DenseNet layer
    (norm -> relu). BatchNorm's statistics are the batch's, and the running ones, when given, are
    updated as BatchNorm updates them. residual may be None; relu=False leaves out the ReLU.

    One op instead of two or three saves passes over memory: the forward writes y once (BatchNorm,
    the add and the ReLU each read and wrote the whole array), and the backward runs the ReLU's
    mask and BatchNorm's two passes over one block of channels at a time, while it is in cache
    (relu_backward wrote the whole masked gradient out for BatchNorm's backward to read twice). It
    keeps what the separate ops kept: x for BatchNorm, y for the ReLU's mask.
    """

    explanation = Explanation(
        forward="""
per channel c, over its n = N*H*W values: mean, var (biased), inv_std = 1 / sqrt(var + eps),
x_hat = (x - mean) * inv_std, z = gamma x_hat + beta  (batch_norm, training mode)
y = max(z + residual, 0)  (the residual, a ResNet block's shortcut, when given; the max when relu)""",
        backward="""
1. y = max(s, 0) with s = z + residual: dy/ds = 1 where y > 0, else 0 (relu's rule, also at 0),
   so dL/ds = g = gy where y > 0, else 0. Without the ReLU, g = gy.
2. s = z + residual: each is added as it is, so the residual's gradient is g, and so is z's.
3. z is batch_norm's output: its backward of g gives gbeta = sum g, ggamma = sum g x_hat and
   gx = gamma inv_std (g - sum(g) / n - x_hat sum(g x_hat) / n) (see batch_norm's derivation).
4. The kernel applies step 1's mask as it reads gy in both of step 3's passes, or, for a residual
   that needs its gradient, writes the masked g first and reads that in both.""",
        saved="x and gamma (the inputs, no copy), y (the output: its sign is the ReLU's mask), and the\n"
              "batch's mean and inv_std, (C,) each: what batch_norm and relu keep, and no more.",
        # (the reference composes the separate kernels, which the Numba one fuses)
        kernels=("batch_norm_relu_forward_training", "batch_norm_relu_backward", "batch_norm_forward_training",
                 "batch_norm_backward", "add_in_place", "relu_forward", "relu_backward"))
    examples = {"batch_norm_relu": Example(shape=(4, 3, 2, 2),
                                           inputs=lambda shape, rng: [None, None, (shape[1],), (shape[1],), shape])}

    def __init__(self, running_mean, running_var, momentum, eps, relu):
        # The running statistics are state updated in place, not inputs: no gradient reaches them.
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps, self.relu = momentum, eps, relu

    def forward(self, x, gamma, beta, residual):
        check_batch_norm_inputs("batch_norm_relu", x, gamma, beta, self.running_mean, self.running_var, True)
        if residual is not None and tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"batch_norm_relu: expected a residual of the input's shape {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}")
        if residual is not None and residual.dtype != x.dtype:
            raise TypeError(f"batch_norm_relu: expected a residual of the input's dtype {x.dtype}, got "
                            f"{residual.dtype}")
        y, mean, var, inv_std = kernels.batch_norm_relu_forward_training(x, gamma, beta, self.eps, residual,
                                                                         self.relu)
        if x.size:  # an empty batch has no statistics: the running ones stay as they are (as PyTorch)
            update_running_statistics(self.running_mean, self.running_var, mean, var, x.size // x.shape[1],
                                      self.momentum)
        self.save_for_backward(x, gamma, y, mean, inv_std)
        return y

    def forward_shape_only(self, x, gamma, beta, residual):
        # A summary in shape-only mode sees zeros, not data: it must not touch the running statistics.
        check_batch_norm_inputs("batch_norm_relu", x, gamma, beta, self.running_mean, self.running_var, True)
        return backend.get_array_module(x).zeros_like(x)

    def backward(self, gy):
        # Steps 1-3 of the explanation: the ReLU's mask, the residual's share, BatchNorm's backward.
        x, gamma, y, mean, inv_std = self.saved_arrays
        gx, ggamma, gbeta, gresidual = kernels.batch_norm_relu_backward(
            gy, y, x, gamma, mean, inv_std, self.relu, self.needs_input_grad[3])
        return (gx if self.needs_input_grad[0] else None,
                ggamma if self.needs_input_grad[1] else None,
                gbeta if self.needs_input_grad[2] else None,
                gresidual)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, residual=None, momentum=0.1,
                    eps=1e-5, relu=True):
    """relu(batch_norm(input, running_mean, running_var, weight, bias, training=True, momentum, eps)
    + residual) as one op (BatchNormReLU): training mode, the batch's statistics. residual (the
    input's shape and dtype) may be None; relu=False leaves the ReLU out. The running statistics
    (arrays or Tensors, or None) are updated in place as batch_norm updates them."""
    running_mean, running_var = _array(running_mean), _array(running_var)
    return BatchNormReLU(running_mean, running_var, momentum, eps, relu)(input, weight, bias, residual)


class LocalResponseNorm(Function):
    """Normalise each value by the energy of its neighbouring channels (AlexNet, GoogLeNet):
    y_c = x_c / (k + alpha * sum of x^2 over the window of c)^beta, where `alpha` here is the
    coefficient of each square (kernels.lrn_forward has the window)."""

    explanation = Explanation(
        forward="""
scale_c = k + a * sum of x_c'^2 over the channels c' in [c - size//2, c + (size - 1)//2] (zeros beyond)
y_c = x_c * scale_c^(-beta),  a = alpha / size (PyTorch, Caffe) or alpha (alpha_divided_by_size=False)""",
        backward="""
1. y_c depends on x_c directly and on every x_j of its window through scale_c; d scale_c/dx_j = 2 a x_j.
2. dy_c/dx_j = [c == j] scale_c^(-beta) - beta x_c scale_c^(-beta-1) * 2 a x_j.
3. gx_j = sum_c gy_c dy_c/dx_j = gy_j scale_j^(-beta) - 2 a beta x_j sum_c gy_c x_c scale_c^(-beta-1),
   the sum over the channels c whose window holds j: c in [j - (size-1)//2, j + size//2] (the window
   mirrored, which matters for an even size).
4. x_c scale_c^(-beta-1) = y_c / scale_c, so the sum is a window sum of gy * y / scale.""",
        saved="x and y (the input and output themselves, no copy) and scale, new memory of x's size (step 4).",
        kernels=("lrn_forward", "lrn_backward"))
    examples = {"local_response_norm": Example(shape=(2, 5, 3, 3),
                                               options={"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0})}

    def __init__(self, size, alpha, beta, k):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        check_floating("local_response_norm", input=x)
        if x.ndim < 2:
            raise ValueError(f"local_response_norm: expected input of shape (N, C, ...), got {tuple(x.shape)}")
        y, scale = kernels.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self.save_for_backward(x, y, scale)
        return y

    def backward(self, gy):
        # The derivation is in kernels.lrn_backward: every x_j reaches its own y_j and, through
        # the window sums, the y_c of its neighbours.
        x, y, scale = self.saved_arrays
        return kernels.lrn_backward(x, y, scale, gy, self.size, self.alpha, self.beta)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, alpha_divided_by_size=True):
    """Local response normalisation across channels of (N, C, ...) input.

    The default is PyTorch's (and Caffe's) form, b_c = a_c / (k + alpha/size * sum a^2)^beta, alpha
    always divided by size; alpha_divided_by_size=False gives the AlexNet paper's and TensorFlow's
    undivided form, b_c = a_c / (k + alpha * sum a^2)^beta. The window is
    [c - size//2, c + (size - 1)//2], zero-padded at the borders.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive integer, got {size!r}")
    coefficient = alpha / size if alpha_divided_by_size else alpha
    return LocalResponseNorm(size, coefficient, beta, k)(input)
