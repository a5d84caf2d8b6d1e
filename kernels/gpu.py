"""The CuPy GPU kernels: the same functions, arguments and results as tinycnn.kernels.reference.

Every kernel is CUDA source kept as plain data at module level: an ElementwiseSource (the
arguments of cupy.ElementwiseKernel) or a ReductionSource (those of cupy.ReductionKernel). CuPy is
touched only when a kernel first runs: `_kernel(source)` builds the CuPy kernel object once per
process, CuPy compiles it the first time it meets a dtype and keeps the binary in memory and in its
on-disk cache (~/.cupy/kernel_cache), so each kernel is compiled once per machine. Keeping the
sources as data lets tests/cuda_harness.py compile the very same bodies as C++ on a machine without
a GPU and run this module on NumPy arrays (tests/test_cuda_kernels.py).

CuPy runs an elementwise body once per element of the output, index `i`. Inputs read at computed
positions are declared `raw` and indexed by hand; they are made C-contiguous first, so the flat
index is the C-order one. `T` is the floating type of the arrays (float or double).

Each thread owns what it writes, so no atomics are needed and the sums add in the reference's
order:

    im2col, pooling forward, LRN      one thread per output element
    col2im, avg_pool2d_backward       one thread per input pixel: it gathers, in tap order, every
                                      column entry that saw it (the gather of Chainer's col2im)
    max_pool2d_backward               one thread per (n, c) plane: with only argmax at hand, an
                                      output cannot know which others picked the same pixel, but
                                      they all lie in its plane (fewer threads, still no atomics)
    batch norm                        reductions per channel, then one thread per element
    ReLU, batch norm inference        one thread per element

Index maths and names as in the Numba kernels (kernels/cpu_*.py), except that `i` is CuPy's
element index here, so the kernel taps are (ki, kj): tap (ki, kj) of the window at output (oh, ow)
reads input pixel h = oh*SH - PH + ki*DH, w = ow*SW - PW + kj*DW.
"""
import math
from typing import NamedTuple

from tinycnn.backend import cupy
from tinycnn.kernels import reference
from tinycnn.kernels.reference import avg_pool_divisor, check_argmax_in_plane, conv_output_size


class ElementwiseSource(NamedTuple):
    """cupy.ElementwiseKernel(in_params, out_params, operation, name), as data."""
    in_params: str
    out_params: str
    operation: str
    name: str


class ReductionSource(NamedTuple):
    """cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
    name), as data: map_expr per element, combined pairwise by reduce_expr (a, b), the total `a`
    written out by post_map_expr."""
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    post_map_expr: str
    identity: str
    name: str


_compiled = {}  # source name -> the CuPy kernel object, made on first use


def _kernel(source):
    """The CuPy kernel for `source`, built on its first call in this process."""
    kernel = _compiled.get(source.name)
    if kernel is None:
        if isinstance(source, ReductionSource):
            kernel = cupy.ReductionKernel(*source)
        else:
            kernel = cupy.ElementwiseKernel(*source)
        _compiled[source.name] = kernel
    return kernel


IM2COL = ElementwiseSource(
    "raw T x, int64 N, int64 C, int64 H, int64 W, int64 KH, int64 KW, int64 OH, int64 OW, "
    "int64 SH, int64 SW, int64 PH, int64 PW, int64 DH, int64 DW",
    "T col",
    """
    // i runs over col's channel-major memory (C, KH, KW, N, OH, OW) in C order
    // (sample is n, a name CuPy reserves).
    const long long ow = i % OW;
    const long long oh = i / OW % OH;
    const long long sample = i / (OW * OH) % N;
    const long long kj = i / (OW * OH * N) % KW;
    const long long ki = i / (OW * OH * N * KW) % KH;
    const long long c = i / (OW * OH * N * KW * KH);
    const long long h = oh * SH - PH + ki * DH;
    const long long w = ow * SW - PW + kj * DW;
    col = (0 <= h && h < H && 0 <= w && w < W) ? x[((sample * C + c) * H + h) * W + w] : (T)0;
    """,
    "tinycnn_im2col")


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """(N, C, H, W) -> (N, C, KH, KW, OH, OW): every window of x laid out as a column.
    As in kernels/cpu_columns.py, the memory is channel-major, (C, KH, KW, N, OH, OW), and the array a
    transposed view of it, so conv2d multiplies the weight by all of the batch's columns at once."""
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH)
    OW = conv_output_size(W, KW, SW, PW, DW)
    col = cupy.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    _kernel(IM2COL)(x, N, C, H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW, col)
    return col.transpose(3, 0, 1, 2, 4, 5)  # (N, C, KH, KW, OH, OW), a view


COL2IM = ElementwiseSource(
    "raw T col, int64 N, int64 C, int64 H, int64 W, int64 KH, int64 KW, int64 OH, int64 OW, "
    "int64 SH, int64 SW, int64 PH, int64 PW, int64 DH, int64 DW",
    "T x",
    """
    // i runs over x (N, C, H, W): this thread sums every column entry that saw pixel (h, w);
    // col is channel-major, (C, KH, KW, N, OH, OW).
    const long long w = i % W;
    const long long h = i / W % H;
    const long long c = i / (W * H) % C;
    const long long sample = i / (W * H * C);
    T total = 0;
    for (long long ki = 0; ki < KH; ++ki) {
        // The output row whose tap ki lands on h: oh*SH = h + PH - ki*DH, if it divides.
        const long long oh_times_SH = h + PH - ki * DH;
        if (oh_times_SH < 0 || oh_times_SH % SH != 0 || oh_times_SH / SH >= OH) continue;
        const long long oh = oh_times_SH / SH;
        for (long long kj = 0; kj < KW; ++kj) {
            const long long ow_times_SW = w + PW - kj * DW;
            if (ow_times_SW < 0 || ow_times_SW % SW != 0 || ow_times_SW / SW >= OW) continue;
            const long long ow = ow_times_SW / SW;
            total += col[((((c * KH + ki) * KW + kj) * N + sample) * OH + oh) * OW + ow];
        }
    }
    x = total;
    """,
    "tinycnn_col2im")


def col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    """(N, C, KH, KW, OH, OW) -> (N, C, H, W): the adjoint of im2col, summing overlapping taps.
    Reads col's memory channel-major, as im2col and conv2d's backward make it (else copies it so)."""
    N, C, KH, KW, OH, OW = col.shape
    col_channel_major = cupy.ascontiguousarray(col.transpose(1, 2, 3, 0, 4, 5))  # (C, KH, KW, N, OH, OW)
    x = cupy.empty((N, C, H, W), dtype=col.dtype)
    _kernel(COL2IM)(col_channel_major, N, C, H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW, x)
    return x


def matmul(a, b):
    """a @ b by cuBLAS."""
    return a @ b


def conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups):
    """The reference's im2col and one matrix product per group (cuBLAS), with the CUDA im2col."""
    return reference.conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups, im2col=im2col)


def conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad=(True, True, True)):
    """The reference's products (cuBLAS), with the CUDA im2col and col2im."""
    return reference.conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, groups, needs_grad,
                                     im2col=im2col, col2im=col2im)


MAX_POOL2D_FORWARD = ElementwiseSource(
    "raw T x, int64 H, int64 W, int64 KH, int64 KW, int64 OH, int64 OW, "
    "int64 SH, int64 SW, int64 PH, int64 PW, int64 DH, int64 DW",
    "T y, int64 argmax",
    """
    // i runs over y (N, C, OH, OW).
    const long long ow = i % OW;
    const long long oh = i / OW % OH;
    const long long nc = i / (OW * OH);
    // Taps outside the input count as -inf; the first maximum wins, and a NaN, once met, wins
    // for good (np.argmax's rules, so ties and NaNs match the reference).
    T best = -INFINITY;
    long long best_index = 0;
    for (long long ki = 0; ki < KH; ++ki) {
        const long long h = oh * SH - PH + ki * DH;
        for (long long kj = 0; kj < KW; ++kj) {
            const long long w = ow * SW - PW + kj * DW;
            const T value = (0 <= h && h < H && 0 <= w && w < W) ? x[(nc * H + h) * W + w] : (T)-INFINITY;
            if ((ki == 0 && kj == 0) || value > best || (isnan(value) && !isnan(best))) {
                best = value;
                best_index = h * W + w;
            }
        }
    }
    y = best;
    argmax = best_index;
    """,
    "tinycnn_max_pool2d_forward")


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    """Returns (y, argmax): y (N, C, OH, OW) and, for each output, the flat index h*W + w of the
    input pixel that won (the first one on ties), as PyTorch's return_indices."""
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, DW, ceil_mode)
    y = cupy.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = cupy.empty((N, C, OH, OW), dtype=cupy.int64)
    _kernel(MAX_POOL2D_FORWARD)(x, H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW, y, argmax)
    return y, argmax


MAX_POOL2D_BACKWARD = ElementwiseSource(
    "raw T gy, raw int64 argmax, int64 OHOW, int64 HW",
    "raw T gx",
    """
    // i runs over the N*C planes: this thread owns plane i of gx, and only outputs of plane i
    // point into it, so it adds them in the reference's order with no other thread writing there.
    for (long long k = i * OHOW; k < (i + 1) * OHOW; ++k) {
        const long long index = argmax[k];
        if (0 <= index && index < HW) gx[i * HW + index] += gy[k];
    }
    """,
    "tinycnn_max_pool2d_backward")


def max_pool2d_backward(gy, argmax, H, W):
    """Route each output gradient to the input pixel that won its window (summing if one pixel
    won several overlapping windows)."""
    check_argmax_in_plane(argmax, H, W)  # the kernel does not check its writes
    N, C, OH, OW = gy.shape
    gy = cupy.ascontiguousarray(gy)
    argmax = cupy.ascontiguousarray(argmax, dtype=cupy.int64)
    gx = cupy.zeros((N, C, H, W), dtype=gy.dtype)
    _kernel(MAX_POOL2D_BACKWARD)(gy, argmax, OH * OW, H * W, gx, size=N * C)
    return gx


AVG_POOL2D_FORWARD = ElementwiseSource(
    "raw T x, raw float64 divisor, int64 H, int64 W, int64 KH, int64 KW, int64 OH, int64 OW, "
    "int64 SH, int64 SW, int64 PH, int64 PW",
    "T y",
    """
    // i runs over y (N, C, OH, OW); taps outside the input add nothing (zero padding).
    const long long ow = i % OW;
    const long long oh = i / OW % OH;
    const long long nc = i / (OW * OH);
    T total = 0;
    for (long long ki = 0; ki < KH; ++ki) {
        const long long h = oh * SH - PH + ki;
        if (h < 0 || h >= H) continue;
        for (long long kj = 0; kj < KW; ++kj) {
            const long long w = ow * SW - PW + kj;
            if (0 <= w && w < W) total += x[(nc * H + h) * W + w];
        }
    }
    // The division is done in float64 and rounded once, as in the reference.
    y = (T)((double)total / divisor[oh * OW + ow]);
    """,
    "tinycnn_avg_pool2d_forward")


def avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, 1, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, 1, ceil_mode)
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, cupy)
    y = cupy.empty((N, C, OH, OW), dtype=x.dtype)
    _kernel(AVG_POOL2D_FORWARD)(x, cupy.ascontiguousarray(divisor, dtype=cupy.float64), H, W, KH, KW, OH, OW,
                        SH, SW, PH, PW, y)
    return y


AVG_POOL2D_BACKWARD = ElementwiseSource(
    "raw T share, int64 H, int64 W, int64 KH, int64 KW, int64 OH, int64 OW, int64 SH, int64 SW, int64 PH, int64 PW",
    "T gx",
    """
    // i runs over gx (N, C, H, W): this thread sums the share of every window that covers it.
    const long long w = i % W;
    const long long h = i / W % H;
    const long long nc = i / (W * H);
    T total = 0;
    for (long long ki = 0; ki < KH; ++ki) {
        const long long oh_times_SH = h + PH - ki;
        if (oh_times_SH < 0 || oh_times_SH % SH != 0 || oh_times_SH / SH >= OH) continue;
        const long long oh = oh_times_SH / SH;
        for (long long kj = 0; kj < KW; ++kj) {
            const long long ow_times_SW = w + PW - kj;
            if (ow_times_SW < 0 || ow_times_SW % SW != 0 || ow_times_SW / SW >= OW) continue;
            total += share[(nc * OH + oh) * OW + ow_times_SW / SW];
        }
    }
    gx = total;
    """,
    "tinycnn_avg_pool2d_backward")


def avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """Each input pixel gets gy / divisor from every window that covers it."""
    N, C, OH, OW = gy.shape
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, cupy)
    share = cupy.ascontiguousarray((gy / divisor).astype(gy.dtype))  # (N, C, OH, OW)
    gx = cupy.empty((N, C, H, W), dtype=gy.dtype)
    _kernel(AVG_POOL2D_BACKWARD)(share, H, W, KH, KW, OH, OW, SH, SW, PH, PW, gx)
    return gx


def _as_ncl(x):
    """(N, C, ...) -> contiguous (N, C, L): batch norm and LRN see every trailing axis as one."""
    x = cupy.ascontiguousarray(x)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))  # not -1: N may be 0


# Sum over (N, L) of (x - mean)^2 per channel, accumulated in float64 as kernels/cpu_norm.py does.
CENTERED_SQUARES = ReductionSource(
    "T x, float64 mean", "float64 total",
    "((double)x - mean) * ((double)x - mean)", "a + b", "total = a", "0",
    "tinycnn_centered_squares")

# y = (x - mean) * gain + shift, mean, gain and shift broadcast per channel, in double: centred
# first, as the reference and the Numba kernel. Folding the mean into the shift, x * gain +
# (beta - gain * mean), cancels two large float32 terms where a channel's mean is large beside its
# spread (4e-5 off the float64 result for x = 1.6928 and 1.6935).
NORMALIZE = ElementwiseSource(
    "T x, float64 mean, T gain, T shift", "T y",
    "y = (T)(((double)x - mean) * (double)gain + (double)shift)",
    "tinycnn_batch_norm_normalize")


def batch_norm_forward_training(x, gamma, beta, eps):
    """Normalise x (N, C, ...) per channel with its own batch statistics, then scale and shift.

    Returns (y, mean, var, inv_std), the last three (C,); var is the biased variance.
    gamma or beta may be None (no scale, no shift).
    """
    x3 = _as_ncl(x)  # (N, C, L)
    N, C, L = x3.shape
    mean64 = x3.sum(axis=(0, 2), dtype=cupy.float64) / (N * L)  # (C,)
    var64 = _kernel(CENTERED_SQUARES)(x3, mean64.reshape(1, C, 1), axis=(0, 2)) / (N * L)
    mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)
    inv_std = (1 / cupy.sqrt(var.astype(cupy.float64) + eps)).astype(x.dtype)
    gain = (inv_std if gamma is None else gamma * inv_std).astype(x.dtype, copy=False)
    shift = cupy.zeros(C, dtype=x.dtype) if beta is None else beta.astype(x.dtype, copy=False)
    y = _kernel(NORMALIZE)(x3, mean64.reshape(1, C, 1), gain.reshape(1, C, 1), shift.reshape(1, C, 1))
    return y.reshape(x.shape), mean, var, inv_std


# Per channel: sum of gy * x_hat with x_hat = (x - mean) * inv_std, in float64.
SUM_GY_X_HAT = ReductionSource(
    "T gy, T x, T mean, T inv_std", "float64 total",
    "(double)gy * (double)((x - mean) * inv_std)", "a + b", "total = a", "0",
    "tinycnn_sum_gy_x_hat")

# gx = gain * (gy - sum(gy)/n - x_hat * sum(gy x_hat)/n), all but gy, x broadcast per channel.
BATCH_NORM_GX = ElementwiseSource(
    "T gy, T x, T mean, T inv_std, T gain, float64 mean_gy, float64 mean_gy_x_hat", "T gx",
    """
    const T x_hat = (x - mean) * inv_std;
    gx = gain * (gy - mean_gy - x_hat * mean_gy_x_hat);
    """,
    "tinycnn_batch_norm_gx")


def batch_norm_backward(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_training: (gx, ggamma, gbeta), the last two (C,).
    gamma None counts as 1."""
    x3, gy3 = _as_ncl(x), _as_ncl(gy).astype(x.dtype, copy=False)  # (N, C, L)
    N, C, L = x3.shape
    mean3, inv_std3 = mean.astype(x.dtype).reshape(1, C, 1), inv_std.astype(x.dtype).reshape(1, C, 1)
    gbeta64 = gy3.sum(axis=(0, 2), dtype=cupy.float64)  # (C,)
    ggamma64 = _kernel(SUM_GY_X_HAT)(gy3, x3, mean3, inv_std3, axis=(0, 2))
    gain = inv_std if gamma is None else gamma * inv_std
    gx = _kernel(BATCH_NORM_GX)(gy3, x3, mean3, inv_std3, gain.astype(x.dtype).reshape(1, C, 1),
                        (gbeta64 / (N * L)).reshape(1, C, 1), (ggamma64 / (N * L)).reshape(1, C, 1))
    return gx.reshape(x.shape), ggamma64.astype(x.dtype), gbeta64.astype(x.dtype)


LRN_FORWARD = ElementwiseSource(
    "raw T x, int64 C, int64 L, int64 before, int64 after, T alpha, T beta, T k",
    "T y, T scale",
    """
    // i runs over (N, C, L); the window of channel c is [c - before, c + after], cut at 0 and C.
    const long long l = i % L;
    const long long c = i / L % C;
    const long long sample = i / (L * C);  // n, which CuPy reserves
    T total = 0;
    for (long long neighbour = max(0LL, c - before); neighbour < min(C, c + after + 1); ++neighbour) {
        const T value = x[(sample * C + neighbour) * L + l];
        total += value * value;
    }
    const T s = k + alpha * total;
    scale = s;
    y = x[i] * pow(s, -beta);
    """,
    "tinycnn_lrn_forward")


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalisation across channels of x (N, C, ...). Returns (y, scale), with
    scale_c = k + alpha * (sum of x_c'^2 over c' in [c - size//2, c + (size - 1)//2])."""
    x3 = _as_ncl(x)  # (N, C, L)
    N, C, L = x3.shape
    y, scale = cupy.empty_like(x3), cupy.empty_like(x3)
    dtype = x.dtype.type
    _kernel(LRN_FORWARD)(x3, C, L, size // 2, (size - 1) // 2, dtype(alpha), dtype(beta), dtype(k), y, scale)
    return y.reshape(x.shape), scale.reshape(x.shape)


LRN_BACKWARD = ElementwiseSource(
    "T x, raw T y, raw T scale, raw T gy, int64 C, int64 L, int64 before, int64 after, T beta, T two_alpha_beta",
    "T gx",
    """
    // before/after: the mirrored window, c' in [c - before, c + after] sees x_c in its own window.
    const long long l = i % L;
    const long long c = i / L % C;
    const long long sample = i / (L * C);  // n, which CuPy reserves
    T back = 0;
    for (long long neighbour = max(0LL, c - before); neighbour < min(C, c + after + 1); ++neighbour) {
        const long long j = (sample * C + neighbour) * L + l;
        back += gy[j] * y[j] / scale[j];
    }
    gx = gy[i] * pow(scale[i], -beta) - two_alpha_beta * x * back;
    """,
    "tinycnn_lrn_backward")


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """Gradient of lrn_forward: gx_j = gy_j scale_j^-beta - 2 alpha beta x_j * sum over the
    channels c whose window holds j of gy_c y_c / scale_c."""
    x3, y3, scale3, gy3 = (_as_ncl(a).astype(x.dtype, copy=False) for a in (x, y, scale, gy))
    N, C, L = x3.shape
    dtype = x.dtype.type
    gx = _kernel(LRN_BACKWARD)(x3, y3, scale3, gy3, C, L, (size - 1) // 2, size // 2, dtype(beta),
                       dtype(2 * alpha * beta))
    return gx.reshape(x.shape)


# Evaluation mode: the statistics are given, so one pass, one thread per element, in the
# reference's order of operations.
BATCH_NORM_INFERENCE = ElementwiseSource(
    "T x, T gamma, T beta, T mean, T inv_std", "T y",
    "y = (x - mean) * inv_std * gamma + beta",
    "tinycnn_batch_norm_inference")


def batch_norm_forward_inference(x, gamma, beta, mean, inv_std):
    """Normalise x (N, C, ...) per channel with given statistics (evaluation mode's running ones),
    then scale and shift: y = (x - mean) * inv_std * gamma + beta. gamma or beta may be None."""
    x3 = _as_ncl(x)  # (N, C, L)
    C = x3.shape[1]
    gamma = cupy.ones(C, x.dtype) if gamma is None else gamma.astype(x.dtype, copy=False)
    beta = cupy.zeros(C, x.dtype) if beta is None else beta.astype(x.dtype, copy=False)
    # (C,) -> (1, C, 1): broadcast over N and L
    per_channel = [a.astype(x.dtype, copy=False).reshape(1, C, 1) for a in (gamma, beta, mean, inv_std)]
    return _kernel(BATCH_NORM_INFERENCE)(x3, *per_channel).reshape(x.shape)


def conv2d_batch_norm_relu_inference(x, W, b, SH, SW, PH, PW, DH, DW, groups, gamma, beta, mean, inv_std, residual,
                                     relu):
    """The reference's three steps in turn, each with this backend's kernel (no fused kernel here)."""
    y = conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, groups)
    y = batch_norm_forward_inference(y, gamma, beta, mean, inv_std)
    if residual is not None:
        y = add_in_place(y, residual)
    return relu_forward(y, out=y) if relu else y


def concat_batch_norm_relu_inference(xs, gamma, beta, mean, inv_std, relu):
    """The reference's steps in turn, each with this backend's kernel (no fused kernel here)."""
    y = batch_norm_forward_inference(cupy.concatenate(xs, axis=1), gamma, beta, mean, inv_std)
    return relu_forward(y, out=y) if relu else y


def batch_norm_relu_forward_training(x, gamma, beta, eps, residual, relu):
    """The reference's steps in turn, each with this backend's kernel (no fused kernel here)."""
    y, mean, var, inv_std = batch_norm_forward_training(x, gamma, beta, eps)
    if residual is not None:
        y = add_in_place(y, residual)
    if relu:
        y = relu_forward(y, out=y)
    return y, mean, var, inv_std


def batch_norm_relu_backward(gy, y, x, gamma, mean, inv_std, relu, needs_residual_grad):
    """The reference's steps in turn, each with this backend's kernel (no fused kernel here)."""
    g = relu_backward(gy, y) if relu else gy
    gx, ggamma, gbeta = batch_norm_backward(g, x, gamma, mean, inv_std)
    return gx, ggamma, gbeta, (g if needs_residual_grad else None)


# Evaluation mode's backward: the statistics are constants, so gx = gain * gy, one thread per element.
BATCH_NORM_GX_INFERENCE = ElementwiseSource(
    "T gy, T gain", "T gx",
    "gx = gain * gy",
    "tinycnn_batch_norm_gx_inference")


def batch_norm_backward_inference(gy, x, gamma, mean, inv_std):
    """Gradients of batch_norm_forward_inference: (gx, ggamma, gbeta), the last two (C,).
    gamma None counts as 1."""
    x3, gy3 = _as_ncl(x), _as_ncl(gy).astype(x.dtype, copy=False)  # (N, C, L)
    C = x3.shape[1]
    mean3, inv_std3 = mean.astype(x.dtype).reshape(1, C, 1), inv_std.astype(x.dtype).reshape(1, C, 1)
    gbeta64 = gy3.sum(axis=(0, 2), dtype=cupy.float64)  # (C,)
    ggamma64 = _kernel(SUM_GY_X_HAT)(gy3, x3, mean3, inv_std3, axis=(0, 2))
    gain = inv_std if gamma is None else gamma * inv_std
    gx = _kernel(BATCH_NORM_GX_INFERENCE)(gy3, gain.astype(x.dtype).reshape(1, C, 1))
    return gx.reshape(x.shape), ggamma64.astype(x.dtype), gbeta64.astype(x.dtype)


# `x < 0` rather than `x > 0`: NaN passes through, as in the reference's maximum(x, 0).
RELU_FORWARD = ElementwiseSource(
    "T x", "T y",
    "y = x < (T)0 ? (T)0 : x",
    "tinycnn_relu_forward")


def relu_forward(x, out=None):
    """y = max(x, 0), element by element (NaN stays NaN, as in np.maximum); written into `out`
    (x's shape and dtype, may be x itself) and out returned when it is given."""
    # A 0-d array goes in as an array of one element (reshape(1) is a view), not as a scalar.
    if out is not None:
        # Each thread reads x[i] and writes out[i] only, so out may be x; CuPy follows out's strides.
        _kernel(RELU_FORWARD)(*((x.reshape(1), out.reshape(1)) if x.ndim == 0 else (x, out)))
        return out
    return _kernel(RELU_FORWARD)(x.reshape(-1)).reshape(x.shape)


ADD_IN_PLACE = ElementwiseSource(
    "T x", "T y",
    "y = y + x",
    "tinycnn_add_in_place")


def concatenate(xs, axis):
    """cupy.concatenate: one copy kernel per input."""
    return cupy.concatenate(xs, axis=axis)


def add_in_place(y, x):
    """y += x, with x broadcast to y's shape; returns y."""
    if x is not y and cupy.may_share_memory(x, y):
        x = x.copy()  # each thread reads x[i] and writes y[i]: another thread's y must not be an x
    if y.ndim == 0:  # as an array of one element (see relu_forward)
        x, y_written = x.reshape(1), y.reshape(1)
    else:
        y_written = y
    _kernel(ADD_IN_PLACE)(x, y_written)
    return y


RELU_BACKWARD = ElementwiseSource(
    "T gy, T y", "T gx",
    "gx = y > (T)0 ? gy : (T)0",
    "tinycnn_relu_backward")


def relu_backward(gy, y):
    """gx = gy where y > 0, else 0."""
    gx = _kernel(RELU_BACKWARD)(gy.reshape(-1), y.astype(gy.dtype, copy=False).reshape(-1))
    return gx.reshape(gy.shape)


# One thread per element: the reference's operations in its order (nvcc may fuse a multiply and an
# add, so a GPU's values can differ from the reference's in the last bit).
SGD_UPDATE = ElementwiseSource(
    "T grad, T lr, T weight_decay, int64 decays, int64 maximize",
    "T param",
    """
    T g = maximize ? -grad : grad;
    if (decays) g = g + weight_decay * param;
    param = param - lr * g;
    """,
    "tinycnn_sgd_update")

# keep = 1 - dampening; dampened: dampening != 0.
SGD_MOMENTUM_UPDATE = ElementwiseSource(
    "T grad, T lr, T momentum, T keep, T weight_decay, int64 decays, int64 dampened, int64 nesterov, "
    "int64 maximize, int64 first_step",
    "T param, T buffer",
    """
    T g = maximize ? -grad : grad;
    if (decays) g = g + weight_decay * param;
    const T velocity = first_step ? g : dampened ? momentum * buffer + keep * g : momentum * buffer + g;
    buffer = velocity;
    g = nesterov ? g + momentum * velocity : velocity;
    param = param - lr * g;
    """,
    "tinycnn_sgd_momentum_update")


def sgd_update(param, grad, buffer, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    """One step of SGD on one parameter, in place; returns (param, buffer)."""
    dtype = param.dtype.type
    updated = param, buffer
    grad = grad.astype(param.dtype, copy=False)
    if param.ndim == 0:  # as arrays of one element (see relu_forward)
        param, grad = param.reshape(1), grad.reshape(1)
        buffer = None if buffer is None else buffer.reshape(1)
    if momentum == 0:
        _kernel(SGD_UPDATE)(grad, dtype(lr), dtype(weight_decay), int(weight_decay != 0), int(bool(maximize)), param)
    else:
        _kernel(SGD_MOMENTUM_UPDATE)(grad, dtype(lr), dtype(momentum), dtype(1 - dampening), dtype(weight_decay),
                                     int(weight_decay != 0), int(dampening != 0), int(bool(nesterov)),
                                     int(bool(maximize)), int(bool(first_step)), param, buffer)
    return updated
