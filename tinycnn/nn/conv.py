"""Conv2d and ZeroPad2d: the convolution layer and the padding layer that often precedes it."""
import numbers

import numpy

from tinycnn import functional as F
from tinycnn.autograd import Parameter
from tinycnn.nn import init
from tinycnn.nn.module import Module

__all__ = ["Conv2d", "ZeroPad2d"]


def _pair(value, layer, name):
    """(value, value) for an int, the pair itself for a 2-sequence."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{layer}: expected {name} as an int or a pair of ints, got {value!r}")


class Conv2d(Module):
    """2-D convolution over (N, C_in, H, W): weight (C_out, C_in / groups, KH, KW), bias (C_out,).

    padding is an int, a pair (pad_H, pad_W), 'valid' (none) or 'same' (output size = input size,
    stride 1 only). Initialised as torch: weight kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C_in / groups * KH * KW.
    Only padding_mode='zeros' is implemented.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=numpy.float32):
        super().__init__()
        if groups <= 0:
            raise ValueError(f"Conv2d: groups must be a positive integer, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"Conv2d: out_channels ({out_channels}) must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is implemented, got {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "Conv2d", "kernel_size")
        self.stride = _pair(stride, "Conv2d", "stride")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"Conv2d: padding='same' is not supported for strided convolutions, got "
                                 f"stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "Conv2d", "padding")
        self.dilation = _pair(dilation, "Conv2d", "dilation")
        self.groups = groups
        self.padding_mode = padding_mode
        KH, KW = self.kernel_size
        self.weight = Parameter(numpy.empty((out_channels, in_channels // groups, KH, KW), dtype=dtype))
        if bias:
            self.bias = Parameter(numpy.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init._default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class ZeroPad2d(Module):
    """Pad the last two dimensions with zeros: padding is an int or (left, right, top, bottom)."""

    def __init__(self, padding):
        super().__init__()
        if isinstance(padding, int) and not isinstance(padding, bool):
            padding = (padding,) * 4
        if not (isinstance(padding, (tuple, list)) and len(padding) == 4
                and all(isinstance(p, int) for p in padding)):
            raise TypeError(f"ZeroPad2d: expected padding as an int or 4 ints (left, right, top, bottom), "
                            f"got {padding!r}")
        self.padding = tuple(padding)

    def forward(self, x):
        return F.pad(x, self.padding, "constant", 0.0)

    def extra_repr(self):
        return f"{self.padding}"
