"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, LogSoftmax."""
import warnings

from tinycnn import functional as F
from tinycnn.nn.module import Module

__all__ = ["LeakyReLU", "LogSoftmax", "ReLU", "Sigmoid", "Softmax", "Tanh"]


class ReLU(Module):
    """max(x, 0).

    inplace=True, as in torch, writes the result into the input's array, in inference and in
    training, unless a recorded backward keeps that memory or the input is a leaf that requires a
    gradient: then the result is a new array with the same values (see
    tinycnn/functional/_inplace.py).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x, inplace=self.inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise; `inplace` honoured only when no graph is recorded
    and no recorded backward keeps the input's memory (its in-place forward keeps nothing for a
    backward)."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope, inplace=self.inplace)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


def _legacy_softmax_dim(layer, ndim):
    # torch's rule for a softmax built without dim: the first axis of 0-, 1- and 3-D inputs, else the second.
    warnings.warn(f"{layer}: implicit dimension choice is deprecated; pass dim", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """exp(x_i) / sum_j exp(x_j) along `dim`."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        dim = self.dim if self.dim is not None else _legacy_softmax_dim("Softmax", x.ndim)
        return F.softmax(x, dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """log(softmax(x)) along `dim`, computed stably."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        dim = self.dim if self.dim is not None else _legacy_softmax_dim("LogSoftmax", x.ndim)
        return F.log_softmax(x, dim)

    def extra_repr(self):
        return f"dim={self.dim}"
