"""Pooling: max and average over sliding windows, adaptive and global average pooling.

Max and average pooling call the kernels in tinycnn.kernels (NumPy reference, Numba, CuPy); the
window arithmetic, including ceil_mode and padding, is PyTorch's and is described there.
"""
import operator

from tinycnn import backend, kernels
from tinycnn.autograd import Function, Tensor
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating
from tinycnn.functional.conv import _check_non_negative, _check_positive, _pair

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "global_avg_pool2d", "max_pool2d"]


def _pool_arguments(op, kernel_size, stride, padding, dilation):
    """Validate the hyper-parameters as PyTorch does; return KH, KW, SH, SW, PH, PW, DH, DW."""
    KH, KW = _pair(op, "kernel_size", kernel_size)
    # stride=None (or torch's empty list) means non-overlapping windows: stride = kernel_size.
    SH, SW = (KH, KW) if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else _pair(op, "stride", stride)
    PH, PW = _pair(op, "padding", padding)
    DH, DW = _pair(op, "dilation", dilation)
    _check_positive(op, "kernel_size", (KH, KW))
    _check_positive(op, "stride", (SH, SW))
    _check_non_negative(op, "padding", (PH, PW))
    _check_positive(op, "dilation", (DH, DW))
    if PH > KH // 2 or PW > KW // 2:
        # A larger padding could make a whole window padding, with no input pixel to pool.
        raise ValueError(f"{op}: padding should be at most half of the kernel size, got padding {(PH, PW)} "
                         f"for kernel_size {(KH, KW)}")
    return KH, KW, SH, SW, PH, PW, DH, DW


def _pool_output_size(op, x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    H, W = x.shape[2:]
    OH = kernels.conv_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = kernels.conv_output_size(W, KW, SW, PW, DW, ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: kernel of size {KH}x{KW} (dilation {(DH, DW)}) is larger than the padded input "
                         f"{H + 2 * PH}x{W + 2 * PW} (input {tuple(x.shape)}, padding {(PH, PW)}): "
                         f"output size {OH}x{OW} is too small")
    return OH, OW


def _check_no_empty_window(op, x, size, kernel, stride, padding, dilation, out, axis):
    """With dilation, a window starting in the padding can skip over every input pixel: there is
    nothing to take the max of (PyTorch returns -inf and an index outside the input there)."""
    for o in range(out):
        start = o * stride - padding
        if not any(0 <= start + i * dilation < size for i in range(kernel)):
            raise ValueError(f"{op}: the window at output {axis} {o} covers only padding (input {tuple(x.shape)}, "
                             f"kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation} along "
                             f"the {axis}s); use a smaller padding or dilation")


class MaxPool2d(Function):
    """y[n, c, oh, ow] = max of x over the window at (oh, ow); padding never wins (it is -inf)."""

    explanation = Explanation(
        forward="y[n, c, oh, ow] = max over i < KH, j < KW of x_padded[n, c, oh*SH + i*DH, ow*SW + j*DW]\n"
                "(padding is -inf, so it never wins); argmax records where each maximum came from",
        backward="""
1. y = x[argmax]: near x, y moves with its window's winning pixel alone, so dy/dx is 1 at the winner
   and 0 at every other pixel of the window.
2. So each gy goes to its window's winner: gx[argmax] += gy, and 0 to the pixels that did not win.
3. With overlapping windows (stride < kernel) one pixel can win several: its gradients add up.
4. At a tie the max is not differentiable; the first winner takes all, as PyTorch.""",
        saved="argmax, the flat index h*W + w of each window's winner: int64, one per output (new memory).\n"
              "x itself is not kept.",
        kernels=("max_pool2d_forward", "max_pool2d_backward"))
    examples = {"max_pool2d": Example(shape=(2, 3, 6, 6), options={"kernel_size": 3, "stride": 2, "padding": 1})}

    def __init__(self, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
        self.KH, self.KW, self.SH, self.SW = KH, KW, SH, SW
        self.PH, self.PW, self.DH, self.DW = PH, PW, DH, DW
        self.ceil_mode = ceil_mode

    def forward(self, x):
        check_floating("max_pool2d", input=x)
        OH, OW = _pool_output_size("max_pool2d", x, self.KH, self.KW, self.SH, self.SW, self.PH, self.PW,
                                   self.DH, self.DW, self.ceil_mode)
        if self.DH > 1:  # without dilation, padding <= kernel / 2 already rules out empty windows
            _check_no_empty_window("max_pool2d", x, x.shape[2], self.KH, self.SH, self.PH, self.DH, OH, "row")
        if self.DW > 1:
            _check_no_empty_window("max_pool2d", x, x.shape[3], self.KW, self.SW, self.PW, self.DW, OW, "column")
        y, self.argmax = kernels.max_pool2d_forward(x, self.KH, self.KW, self.SH, self.SW, self.PH, self.PW,
                                                    self.DH, self.DW, self.ceil_mode)
        self.input_size = x.shape[2:]
        return y

    def backward(self, gy):
        # y = x[argmax]: dy/dx is 1 at the winning pixel and 0 elsewhere in the window, so each
        # output's gradient goes to its winner (summed where one pixel won several windows).
        H, W = self.input_size
        return kernels.max_pool2d_backward(gy, self.argmax, H, W)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling as torch.nn.functional.max_pool2d: input (N, C, H, W) -> (N, C, OH, OW).

    stride defaults to kernel_size; padding (at most half the kernel) never wins a window;
    ceil_mode keeps a last, partial window. With return_indices, also returns the int64 Tensor of
    the flat index h * W + w of each winner in its input plane, as PyTorch.
    """
    function = MaxPool2d(*_pool_arguments("max_pool2d", kernel_size, stride, padding, dilation), bool(ceil_mode))
    y = function(input)
    if return_indices:
        return y, Tensor(function.argmax)
    return y


class AvgPool2d(Function):
    """y[n, c, oh, ow] = sum of x over the window at (oh, ow), divided by the window's count."""

    explanation = Explanation(
        forward="y[n, c, oh, ow] = (1 / d) sum over i < KH, j < KW of x_padded[n, c, oh*SH + i, ow*SW + j]\n"
                "d: the window clipped to the padded input (count_include_pad) or its real pixels only",
        backward="""
1. dy[oh, ow]/dx[h, w] = 1 / d[oh, ow] for every pixel (h, w) of that window, 0 outside it.
2. gx[h, w] = sum over the windows that cover (h, w) of gy[oh, ow] / d[oh, ow]: each output gradient
   spread evenly over its window, overlaps adding up (col2im of the spread gradient).
3. Shares that fall on the padding are dropped.""",
        saved="only x's height and width: d is recomputed from the sizes, and no array is kept.",
        kernels=("avg_pool2d_forward", "avg_pool2d_backward"))
    examples = {"avg_pool2d": Example(shape=(2, 3, 6, 6), options={
        "kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False})}

    def __init__(self, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
        self.KH, self.KW, self.SH, self.SW, self.PH, self.PW = KH, KW, SH, SW, PH, PW
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x):
        check_floating("avg_pool2d", input=x)
        _pool_output_size("avg_pool2d", x, self.KH, self.KW, self.SH, self.SW, self.PH, self.PW, 1, 1,
                          self.ceil_mode)
        self.input_size = x.shape[2:]
        return kernels.avg_pool2d_forward(x, self.KH, self.KW, self.SH, self.SW, self.PH, self.PW,
                                          self.ceil_mode, self.count_include_pad)

    def backward(self, gy):
        # y = (1 / divisor) * sum over the window: every pixel of the window gets gy / divisor.
        H, W = self.input_size
        return kernels.avg_pool2d_backward(gy, H, W, self.KH, self.KW, self.SH, self.SW, self.PH, self.PW,
                                           self.ceil_mode, self.count_include_pad)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling as torch.nn.functional.avg_pool2d: input (N, C, H, W) -> (N, C, OH, OW).

    stride defaults to kernel_size. count_include_pad=True divides by the window size clipped to
    the padded input (padded zeros count); False divides by the number of real input pixels.
    """
    KH, KW, SH, SW, PH, PW, _, _ = _pool_arguments("avg_pool2d", kernel_size, stride, padding, 1)
    return AvgPool2d(KH, KW, SH, SW, PH, PW, bool(ceil_mode), bool(count_include_pad))(input)


def _adaptive_bins(size, out, xp, dtype):
    """(out, size) averaging matrix A: A[i, start_i:end_i] = 1 / (end_i - start_i), with PyTorch's
    bins start_i = floor(i * size / out) and end_i = ceil((i + 1) * size / out)."""
    i = xp.arange(out).reshape(out, 1)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)  # ceil by negated floor division
    position = xp.arange(size).reshape(1, size)
    inside = (position >= start) & (position < end)
    return (inside / (end - start)).astype(dtype)


# Adaptive average pooling multiplies by the Kronecker product of its two averaging matrices where
# that has at most this many values (every global pooling of the zoo: 1 x 49 for a 7x7 plane).
KRONECKER_VALUES = 1 << 16


class AdaptiveAvgPool2d(Function):
    """Average over OH x OW bins that tile the input, whatever its size (bins may overlap by one).

    A bin is a rectangle, so its mean is separable: y[n, c] = A_H x[n, c] A_W^T with the (OH, H)
    and (OW, W) averaging matrices of `_adaptive_bins`.
    """

    explanation = Explanation(
        forward="""
bins: row bin i covers [floor(i H / OH), ceil((i + 1) H / OH)), column bins likewise (they may overlap)
A_H (OH, H): A_H[i, h] = 1 / (bin i's size) inside bin i, 0 outside; A_W (OW, W) the same
y[n, c] = A_H x[n, c] A_W^T: the mean over each bin's rectangle, as two averaging matrix products""",
        backward="""
1. y[oh, ow] = sum over h, w of A_H[oh, h] x[h, w] A_W[ow, w]: linear in x.
2. dy[oh, ow]/dx[h, w] = A_H[oh, h] A_W[ow, w].
3. gx[h, w] = sum over oh, ow of A_H[oh, h] gy[oh, ow] A_W[ow, w], that is gx = A_H^T gy A_W:
   the transposed averaging matrices carry each bin's gradient back to its pixels.""",
        saved="A_H (OH, H) and A_W (OW, W), new memory: step 3 reuses them.")
    examples = {"adaptive_avg_pool2d": Example(shape=(2, 3, 7, 5), options={"output_size": (3, 2)})}

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        check_floating("adaptive_avg_pool2d", input=x)
        if x.ndim != 4:
            raise ValueError(f"adaptive_avg_pool2d: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[2:]
        if H < 1 or W < 1:
            raise ValueError(f"adaptive_avg_pool2d: expected a non-empty input plane, got shape {tuple(x.shape)}")
        # None keeps that axis's size, as in PyTorch.
        OH, OW = (H if self.output_size[0] is None else self.output_size[0],
                  W if self.output_size[1] is None else self.output_size[1])
        xp = backend.get_array_module(x)
        self.A_H = _adaptive_bins(H, OH, xp, x.dtype)  # (OH, H)
        self.A_W = _adaptive_bins(W, OW, xp, x.dtype)  # (OW, W)
        if OH * OW * H * W <= KRONECKER_VALUES:
            # Every plane at once: with each plane flattened to a row, y = x A^T for A = A_H kron A_W
            # (OH*OW, H*W), since A_H X A_W^T flattened is (A_H kron A_W) times X flattened. One
            # matrix product over all N*C planes, where NumPy's matmul of the small per-plane
            # matrices ran element by element: a global pooling of 8 x 2048 x 7 x 7 (ResNet-50's)
            # took 4.3 ms forward + backward so.
            N, C = x.shape[:2]
            A = xp.kron(self.A_H, self.A_W)  # (not kept: the backward makes it again, as cheaply)
            return (xp.ascontiguousarray(x).reshape(N * C, H * W) @ A.T).reshape(N, C, OH, OW)
        return self.A_H @ x @ self.A_W.T  # (OH, H) @ (N, C, H, W) @ (W, OW) -> (N, C, OH, OW)

    def backward(self, gy):
        # y = A_H x A_W^T is linear in x, so dx = A_H^T gy A_W (with the planes as rows: dx = gy A).
        (OH, H), (OW, W) = self.A_H.shape, self.A_W.shape
        if OH * OW * H * W <= KRONECKER_VALUES:
            N, C = gy.shape[:2]
            xp = backend.get_array_module(gy)
            gx = xp.ascontiguousarray(gy).reshape(N * C, OH * OW) @ xp.kron(self.A_H, self.A_W)
            return gx.reshape(N, C, H, W)
        return self.A_H.T @ gy @ self.A_W  # (H, OH) @ (N, C, OH, OW) @ (OW, W) -> (N, C, H, W)


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling as torch.nn.functional.adaptive_avg_pool2d: (N, C, H, W) ->
    (N, C, OH, OW) for output_size = OH or (OH, OW); a None entry keeps that input size."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"adaptive_avg_pool2d: expected output_size as an int or a pair, got {output_size!r}")
        sizes = output_size
    else:
        sizes = (output_size, output_size)
    try:
        sizes = tuple(None if s is None else operator.index(s) for s in sizes)
    except TypeError:
        raise TypeError(f"adaptive_avg_pool2d: expected output_size as ints or None, got {output_size!r}") from None
    if any(s is not None and s < 1 for s in sizes):
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}")
    return AdaptiveAvgPool2d(sizes)(input)


class GlobalAvgPool2d(Function):
    """y[n, c, 0, 0] = mean of x[n, c] over all H x W positions."""

    explanation = Explanation(
        forward="y[n, c, 0, 0] = (1 / (H W)) sum over h, w of x[n, c, h, w]",
        backward="""
1. dy[n, c]/dx[n, c, h, w] = 1 / (H W) for every position of the plane.
2. So gx[n, c, h, w] = gy[n, c] / (H W): the plane's gradient spread evenly.""",
        saved="only x's shape: no array.")
    examples = {"global_avg_pool2d": Example(shape=(2, 3, 4, 4))}

    def forward(self, x):
        check_floating("global_avg_pool2d", input=x)
        if x.ndim != 4:
            raise ValueError(f"global_avg_pool2d: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"global_avg_pool2d: expected a non-empty input plane, got shape {tuple(x.shape)}")
        self.input_shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True).astype(x.dtype)

    def backward(self, gy):
        # y = (1 / HW) sum of x: every pixel gets gy / (H W).
        xp = backend.get_array_module(gy)
        H, W = self.input_shape[2:]
        return xp.broadcast_to(gy / (H * W), self.input_shape).astype(gy.dtype)


def global_avg_pool2d(input):
    """Mean over the whole H x W plane: (N, C, H, W) -> (N, C, 1, 1), as adaptive_avg_pool2d(input, 1)."""
    return GlobalAvgPool2d()(input)
