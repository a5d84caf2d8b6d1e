"""Linear, Flatten and Identity: the layers of a classifier head."""

import numpy

from tinycnn import functional as F
from tinycnn.autograd import Parameter
from tinycnn.nn import init
from tinycnn.nn.module import Module

__all__ = ["Flatten", "Identity", "Linear"]


class Linear(Module):
    """y = x W^T + b, with weight (out_features, in_features) and bias (out_features,).

    Initialised as torch: weight kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)), and
    bias U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=numpy.float32):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(numpy.empty((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(numpy.empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init._default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Merge dimensions start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Return the input unchanged (a placeholder where a layer is removed); arguments are ignored."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
