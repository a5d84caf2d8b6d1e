"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, GlobalAvgPool2d."""
from tinycnn import functional as F
from tinycnn.nn.module import Module

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "GlobalAvgPool2d", "MaxPool2d"]


class MaxPool2d(Module):
    """Maximum over each KH x KW window; stride defaults to kernel_size (windows do not overlap)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Mean over each KH x KW window; count_include_pad=True counts padded zeros in the divisor.

    torch's divisor_override is not provided."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average into a fixed output_size (OH, OW) whatever the input size (an int means square)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(Module):
    """Mean over all of H and W (Network in Network, Lin et al., 2013): (N, C, H, W) -> (N, C, 1, 1).

    Not a torch layer: torch writes AdaptiveAvgPool2d(1), which gives the same values.
    """

    def forward(self, x):
        return F.global_avg_pool2d(x)
