"""2-D convolution by im2col and a matrix product, and zero padding.

Convolution is a matrix product once every window of the input is laid out as a column:
im2col turns x (N, C, H, W) into col (N, C, KH, KW, OH, OW), and then

    y[n, o, oh, ow] = sum over (c, i, j) of W[o, c, i, j] * col[n, c, i, j, oh, ow] + b[o]

is the weight, viewed as (OC, C*KH*KW), times col viewed as (C*KH*KW, N*OH*OW). The arithmetic
lives in the kernels (tinycnn.kernels.conv2d_forward and conv2d_backward): the reference does it
for the whole batch in one product per group; the Numba kernels a few samples at a time, on every
core; the CuPy kernels as the reference, on the GPU. This module validates the arguments as
PyTorch does and records the op for autograd.
"""
import operator

from tinycnn import backend, kernels
from tinycnn.autograd import Function
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating

__all__ = ["conv2d", "pad"]


def _pair(op, name, value):
    """(value, value) for an int, the pair itself for a 2-sequence of ints; else a TypeError naming `op`."""
    try:
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise TypeError
            return tuple(operator.index(v) for v in value)
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
        return (v, v)
    except TypeError:
        raise TypeError(f"{op}: expected {name} as an int or a pair of ints, got {value!r}") from None


def _check_positive(op, name, pair):
    if min(pair) <= 0:
        raise ValueError(f"{op}: {name} must be positive, got {pair}")


def _check_non_negative(op, name, pair):
    if min(pair) < 0:
        raise ValueError(f"{op}: {name} must be non-negative, got {pair}")


class Conv2d(Function):
    """y = W * x + b (cross-correlation, as every framework computes it), with symmetric zero padding.

    Inputs x (N, C, H, W), W (OC, C / groups, KH, KW), b (OC,) or None -> y (N, OC, OH, OW).
    """

    explanation = Explanation(
        forward="""
y[n, o, oh, ow] = sum over c, i, j of W[o, c, i, j] * x_padded[n, c, oh*SH + i*DH, ow*SW + j*DW] + b[o]
As a matrix product: im2col lays every window of x out as a column, col (C*KH*KW, N*OH*OW), and
y = W_mat col + b with W_mat = W viewed as (OC, C*KH*KW) (one product per group).""",
        backward="""
1. For a matrix product Y = A B, dL/dA = gY B^T and dL/dB = A^T gY.
2. With A = W_mat and B = col: gW = gy col^T. The product's inner axis runs over every sample and
   output position, so the weight's gradient sums over all the places it was used.
3. gcol = W_mat^T gy: the gradient of every entry of every column.
4. im2col copied each pixel of x into every window that covers it (KH*KW of them at stride 1), so
   its adjoint col2im adds those column gradients back into the pixel: gx = col2im(W_mat^T gy).
   Gradients that land in the zero padding are dropped: the padding is not an input.
5. b[o] is added to every output of channel o: gb[o] = sum of gy[:, o] over N, OH, OW.""",
        saved="x and W, the inputs themselves (no copy). col is not kept: backward runs im2col again for gW,\n"
              "which spares KH*KW times x's memory for one more pass over x.",
        kernels=("conv2d_forward", "conv2d_backward", "im2col", "col2im"))
    examples = {"conv2d": Example(shape=(2, 3, 7, 7), inputs=lambda shape, rng: [(4, shape[1], 3, 3), (4,)],
                                  options={"stride": 2, "padding": 1})}

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self.SH, self.SW = _pair("conv2d", "stride", stride)
        self.PH, self.PW = _pair("conv2d", "padding", padding)
        self.DH, self.DW = _pair("conv2d", "dilation", dilation)
        _check_positive("conv2d", "stride", (self.SH, self.SW))
        _check_non_negative("conv2d", "padding", (self.PH, self.PW))
        _check_positive("conv2d", "dilation", (self.DH, self.DW))
        try:
            self.groups = operator.index(groups)
        except TypeError:
            raise TypeError(f"conv2d: expected groups as an int, got {groups!r}") from None
        if self.groups <= 0:
            raise ValueError(f"conv2d: groups must be positive, got {groups}")

    def forward(self, x, W, b):
        self._check(x, W, b)
        self.save_for_backward(x, W)
        return kernels.conv2d_forward(x, W, b, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW, self.groups)

    def forward_shape_only(self, x, W, b):
        N, C, OC, KH, KW, OH, OW = self._check(x, W, b)
        return backend.get_array_module(x).zeros((N, OC, OH, OW), dtype=x.dtype)

    def backward(self, gy):
        # The derivation (dW = gy col^T, dx = col2im(W^T gy), db = gy summed) is written out in
        # tinycnn.kernels.reference.conv2d_backward, the readable version of every backend's.
        x, W = self.saved_arrays
        return kernels.conv2d_backward(gy, x, W, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW,
                                       self.groups, self.needs_input_grad)

    def _check(self, x, W, b):
        """Validate the inputs as PyTorch does; return N, C, OC, KH, KW, OH, OW."""
        if x.ndim != 4:
            raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if W.ndim != 4:
            raise ValueError(f"conv2d: expected a 4-D weight (OC, C / groups, KH, KW), got shape {tuple(W.shape)}")
        check_floating("conv2d", input=x, weight=W, bias=b)
        N, C, H, W_ = x.shape
        OC, C_group, KH, KW = W.shape
        G = self.groups
        if C != C_group * G:
            raise ValueError(f"conv2d: input of shape {tuple(x.shape)} has {C} channels, but weight of shape "
                             f"{tuple(W.shape)} with groups={G} expects {C_group * G}")
        if OC % G != 0:
            raise ValueError(f"conv2d: groups={G} must divide the {OC} output channels of weight {tuple(W.shape)}")
        if b is not None:
            if tuple(b.shape) != (OC,):
                raise ValueError(f"conv2d: expected a bias of shape ({OC},) for weight {tuple(W.shape)}, "
                                 f"got {tuple(b.shape)}")
        padded = (H + 2 * self.PH, W_ + 2 * self.PW)
        dilated = (self.DH * (KH - 1) + 1, self.DW * (KW - 1) + 1)
        if dilated[0] > padded[0] or dilated[1] > padded[1]:
            raise ValueError(f"conv2d: kernel of size {KH}x{KW} (dilated {dilated[0]}x{dilated[1]}) is larger than "
                             f"the padded input {padded[0]}x{padded[1]} (input {tuple(x.shape)}, weight "
                             f"{tuple(W.shape)}, padding {(self.PH, self.PW)}, dilation {(self.DH, self.DW)})")
        OH = kernels.conv_output_size(H, KH, self.SH, self.PH, self.DH)
        OW = kernels.conv_output_size(W_, KW, self.SW, self.PW, self.DW)
        return N, C, OC, KH, KW, OH, OW


def _same_padding(weight, dilation, stride):
    """Padding (top, bottom, left, right) that keeps H and W, as PyTorch's padding='same':
    the total d*(k-1) is split with the odd one out at the bottom / right."""
    if stride != (1, 1):
        raise ValueError(f"conv2d: padding='same' is not supported for strided convolutions, got stride={stride}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (OC, C / groups, KH, KW), got shape {tuple(weight.shape)}")
    KH, KW = weight.shape[2:]
    total_h, total_w = dilation[0] * (KH - 1), dilation[1] * (KW - 1)
    return total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution as torch.nn.functional.conv2d.

    input (N, C, H, W), weight (OC, C / groups, KH, KW), bias (OC,) or None -> (N, OC, OH, OW) with
    OH = (H + 2 PH - DH (KH - 1) - 1) // SH + 1. stride, padding and dilation are ints or pairs;
    padding may also be 'valid' (no padding) or 'same' (stride 1 only; output size = input size).
    """
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            top, bottom, left, right = _same_padding(weight, _pair("conv2d", "dilation", dilation),
                                                     _pair("conv2d", "stride", stride))
            if bottom != top or right != left:
                # An even total (even dilated kernel) cannot be split evenly: pad the extra row and
                # column first, so the convolution itself pads symmetrically.
                input = pad(input, (0, right - left, 0, bottom - top))
            padding = (top, left)
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return Conv2d(stride, padding, dilation, groups)(input, weight, bias)


class Pad(Function):
    """Constant padding of the last len(pad) // 2 axes; negative amounts crop, as torch.nn.functional.pad."""

    explanation = Explanation(
        forward="y = x with `before` and `after` elements of the constant value added at the two ends of each padded\n"
                "axis (a negative amount crops instead); pad lists the last axis first, as PyTorch",
        backward="""
1. Every element of y is either a copy of one element of x (dy/dx = 1) or the constant (no x in it).
2. So gx takes gy's elements where x was copied, the inner part: gy with the added borders sliced off.
3. Elements of x that a negative amount cropped away never reached y: their gradient is 0.""",
        saved="only x's shape and the (before, after) amounts: no array.")
    examples = {"pad": Example(shape=(2, 3, 4, 4), options={"pad": (1, 2, -1, 0)})}

    def __init__(self, pad, value):
        self.pad = pad
        self.value = value

    def forward(self, x):
        xp = backend.get_array_module(x)
        amounts = self._amounts(x)
        # Positive amounts grow the array with xp.pad; negative ones crop it afterwards.
        grown = [(max(before, 0), max(after, 0)) for before, after in amounts]
        y = xp.pad(x, grown, mode="constant", constant_values=self.value) if any(map(any, grown)) else x.copy()
        crop = tuple(slice(-min(before, 0), y.shape[axis] + min(after, 0))
                     for axis, (before, after) in enumerate(amounts))
        self.input_shape = x.shape
        self.amounts = amounts
        return y[crop]

    def backward(self, gy):
        # y is x with slices added or removed at the borders: the gradient of x is gy with the
        # added borders sliced off, and zeros where x was cropped away.
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.input_shape, dtype=gy.dtype)
        x_part = tuple(slice(max(-before, 0), size - max(-after, 0))
                       for (before, after), size in zip(self.amounts, self.input_shape))
        y_part = tuple(slice(max(before, 0), gy.shape[axis] - max(after, 0))
                       for axis, (before, after) in enumerate(self.amounts))
        gx[x_part] = gy[y_part]
        return gx

    def _amounts(self, x):
        """(before, after) for every axis of x: torch's pad tuple lists the last axis first."""
        padded_axes = len(self.pad) // 2
        if padded_axes > x.ndim:
            raise ValueError(f"pad: {len(self.pad)} padding values pad {padded_axes} axes, but the input of "
                             f"shape {tuple(x.shape)} has only {x.ndim}")
        amounts = [(0, 0)] * (x.ndim - padded_axes)
        for axis in range(padded_axes):
            before, after = self.pad[2 * (padded_axes - 1 - axis):2 * (padded_axes - axis)]
            size = x.shape[x.ndim - padded_axes + axis]
            if size + min(before, 0) + min(after, 0) < 0:
                raise ValueError(f"pad: padding {tuple(self.pad)} crops axis {x.ndim - padded_axes + axis} of "
                                 f"size {size} below zero (input shape {tuple(x.shape)})")
            amounts.append((before, after))
        return amounts


def pad(input, pad, mode="constant", value=0):
    """Pad the last axes as torch.nn.functional.pad: pad = (left, right) pads the last axis,
    (left, right, top, bottom) the last two, and so on. Negative amounts crop, as in PyTorch.
    Only mode='constant' is implemented (zero padding for convolutions); `value` fills the border."""
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is implemented, got mode={mode!r}")
    try:
        pad = tuple(operator.index(p) for p in pad)
    except TypeError:
        raise TypeError(f"pad: expected pad as a sequence of ints, got {pad!r}") from None
    if len(pad) % 2 != 0:
        raise ValueError(f"pad: expected an even number of padding values (before, after per axis), got {pad}")
    return Pad(pad, value)(input)
