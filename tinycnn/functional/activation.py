"""Element-wise activations and the (log-)softmax over one axis.

The `inplace` arguments exist so code written for torch.nn.functional runs unchanged; tinycnn
always returns a new tensor, because overwriting the input would destroy what backward needs.
"""
from tinycnn import backend
from tinycnn.autograd import Function

__all__ = ["leaky_relu", "log_softmax", "relu", "sigmoid", "softmax", "tanh"]


class ReLU(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.maximum(x, 0)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # y = max(x, 0): dy/dx = 1 where x > 0, else 0 (also at x = 0, as PyTorch). y > 0 exactly
        # where x > 0, so the output is all that needs keeping.
        (y,) = self.saved_arrays
        return gy * (y > 0)


def relu(input, inplace=False):
    return ReLU()(input)


class LeakyReLU(Function):
    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.save_for_backward(x)
        return xp.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def backward(self, gy):
        # y = x for x > 0, slope * x otherwise: dy/dx is 1 or the slope.
        (x,) = self.saved_arrays
        xp = backend.get_array_module(x)
        return xp.where(x > 0, gy, gy * gy.dtype.type(self.negative_slope))


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return LeakyReLU(negative_slope)(input)


class Sigmoid(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        # sigma(x) = 1 / (1 + e^-x) = (1 + tanh(x/2)) / 2; the tanh form never overflows.
        y = (xp.tanh(x * x.dtype.type(0.5)) + 1) * x.dtype.type(0.5)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # d sigma/dx = sigma (1 - sigma), from the output alone.
        (y,) = self.saved_arrays
        return gy * y * (1 - y)


def sigmoid(input):
    return Sigmoid()(input)


class Tanh(Function):
    def forward(self, x):
        y = backend.get_array_module(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # d tanh/dx = 1 - tanh^2.
        (y,) = self.saved_arrays
        return gy * (1 - y * y)


def tanh(input):
    return Tanh()(input)


def _check_dim(op, x, dim):
    if not -max(x.ndim, 1) <= dim < max(x.ndim, 1):
        raise ValueError(f"{op}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")


class Softmax(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        _check_dim("softmax", x, self.dim)
        xp = backend.get_array_module(x)
        # Subtracting the maximum leaves the ratios unchanged and keeps exp() from overflowing.
        e = xp.exp(x - x.max(axis=self.dim, keepdims=True))
        y = e / e.sum(axis=self.dim, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # dy_i/dx_j = y_i (delta_ij - y_j), so gx_j = y_j (gy_j - sum_i gy_i y_i).
        (y,) = self.saved_arrays
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


def softmax(input, dim):
    """exp(x) / sum(exp(x)) along `dim` (required: there is no implicit choice as in old PyTorch)."""
    return Softmax(dim)(input)


class LogSoftmax(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        _check_dim("log_softmax", x, self.dim)
        xp = backend.get_array_module(x)
        # log softmax(x) = x - m - log sum exp(x - m) with m = max x: every exp is at most 1.
        shifted = x - x.max(axis=self.dim, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=self.dim, keepdims=True))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # dy_i/dx_j = delta_ij - softmax_j, so gx_j = gy_j - softmax_j sum_i gy_i.
        (y,) = self.saved_arrays
        xp = backend.get_array_module(y)
        return gy - xp.exp(y) * gy.sum(axis=self.dim, keepdims=True)


def log_softmax(input, dim):
    """log(softmax(x)) along `dim`, computed stably (never the log of a rounded-to-zero softmax)."""
    return LogSoftmax(dim)(input)
