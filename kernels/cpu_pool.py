"""Max and average pooling for the Numba backend (see tinycnn.kernels.cpu for the whole picture).

    forward                  one (n, c) image plane per parallel item
    max_pool2d_backward      one (n, c) plane per item (its outputs only point into it)
    avg_pool2d_backward      one input row (n, c, h) per item: col2im's gather, each tap holding
                             its window's share of the gradient

The windows 2x2 and 3x3, the common ones, get their own compiled copies with the loops unrolled.
Taps are summed in the reference's order, so the results are the reference's to the last bit.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.cpu_columns import _tap_tables
from tinycnn.kernels.parallel import parallel_range
from tinycnn.kernels.reference import avg_pool_divisor, check_argmax_in_plane, conv_output_size


@njit(inline="always")
def _max_pool_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop):
    # x (N*C, H, W), y and argmax (N*C, OH, OW); the image planes in [start, stop). Inlined into
    # the kernels below, so that where the window size is a constant the compiler unrolls the
    # window loops (2.6x faster for 2x2 windows than with KH and KW known only at run time).
    H, W = x.shape[1:]
    OH, OW = y.shape[1:]
    # The windows wholly inside the plane: rows [oh_lo, oh_hi), columns [ow_lo, ow_hi).
    oh_lo, oh_hi = _inside_range(H, OH, KH, SH, PH, DH)
    ow_lo, ow_hi = _inside_range(W, OW, KW, SW, PW, DW)
    for nc in range(start, stop):
        for oh in range(OH):
            h0 = oh * SH - PH  # the window's first row and column
            inside_row = oh_lo <= oh < oh_hi
            for ow in range(OW):
                w0 = ow * SW - PW
                if inside_row and ow_lo <= ow < ow_hi:
                    # The first maximum wins; a NaN, once met, wins for good (np.argmax's rules):
                    # `not value <= best` is value > best or value NaN, and `best == best` fails
                    # once best is a NaN. No early exit, so the loops unroll.
                    # (unsigned indices: no wrap-around for negative ones, as in _avg_pool_inside_row)
                    best = x[nc, h0, np.uint64(w0)]
                    best_index = h0 * W + w0
                    for i in range(KH):
                        h = h0 + i * DH
                        row = x[nc, h]
                        for j in range(KW):
                            w = w0 + j * DW
                            value = row[np.uint64(w)]
                            if not value <= best and best == best:
                                best = value
                                best_index = h * W + w
                else:
                    best, best_index = _window_max_at_border(x, nc, h0, w0, KH, KW, DH, DW)
                y[nc, oh, ow] = best
                argmax[nc, oh, ow] = best_index


@njit(cache=True, inline="always")
def _inside_range(L, O, K, S, P, D):
    """The outputs o whose whole window, o*S - P + [0, (K-1)*D], lies in [0, L)."""
    lo = min(O, -(-P // S))
    hi = max(lo, min(O, (L - 1 + P - (K - 1) * D) // S + 1))
    return lo, hi


@njit(cache=True, nogil=True)
def _max_pool2d_forward(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, nogil=True)
def _max_pool2d_forward_2x2(x, y, argmax, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, 2, 2, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, nogil=True)
def _max_pool2d_forward_3x3(x, y, argmax, SH, SW, PH, PW, DH, DW, start, stop):
    _max_pool_planes(x, y, argmax, 3, 3, SH, SW, PH, PW, DH, DW, start, stop)


@njit(cache=True, inline="always")
def _window_max_at_border(x, nc, h0, w0, KH, KW, DH, DW):
    """The maximum of a window that reaches into the padding, and its flat index: taps outside
    the plane count as -inf (so a window of padding only gives -inf at its first tap, as the
    reference)."""
    H, W = x.shape[1:]
    best = -np.inf
    best_index = 0
    for i in range(KH):
        h = h0 + i * DH
        for j in range(KW):
            w = w0 + j * DW
            value = x[nc, h, w] if 0 <= h < H and 0 <= w < W else -np.inf
            if (i == 0 and j == 0) or value > best or (value != value and best == best):
                best = value
                best_index = h * W + w
    return best, best_index


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode):
    """Returns (y, argmax): y (N, C, OH, OW) and, for each output, the flat index h*W + w of the
    input pixel that won (the first one on ties), as PyTorch's return_indices."""
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, DW, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    planes, y_planes, argmax_planes = x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW)
    if (KH, KW) == (2, 2):  # LeNet's, VGG's: the most common windows, with the loops unrolled
        def run(start, stop):
            _max_pool2d_forward_2x2(planes, y_planes, argmax_planes, SH, SW, PH, PW, DH, DW, start, stop)
    elif (KH, KW) == (3, 3):  # AlexNet's, ResNet's, Inception's
        def run(start, stop):
            _max_pool2d_forward_3x3(planes, y_planes, argmax_planes, SH, SW, PH, PW, DH, DW, start, stop)
    else:
        def run(start, stop):
            _max_pool2d_forward(planes, y_planes, argmax_planes, KH, KW, SH, SW, PH, PW, DH, DW, start, stop)
    parallel_range(run, N * C, OH * OW * KH * KW)
    return y, argmax


@njit(cache=True, nogil=True)
def _max_pool2d_backward(gy, argmax, gx, start, stop):
    # gy, argmax (N*C, OH*OW); gx (N*C, H*W); the planes nc in [start, stop).
    HW = gx.shape[1]
    for nc in range(start, stop):
        gx[nc, :] = 0
        for k in range(gy.shape[1]):
            index = argmax[nc, k]
            if 0 <= index < HW:
                gx[nc, index] += gy[nc, k]


def max_pool2d_backward(gy, argmax, H, W):
    """Route each output gradient to the input pixel that won its window (summing if one pixel
    won several overlapping windows)."""
    check_argmax_in_plane(argmax, H, W)  # the loop below does not check its writes
    N, C, OH, OW = gy.shape
    gy = np.ascontiguousarray(gy).reshape(N * C, OH * OW)  # not -1: N may be 0
    argmax = np.ascontiguousarray(argmax, dtype=np.int64).reshape(N * C, OH * OW)
    gx = np.empty((N * C, H * W), dtype=gy.dtype)
    parallel_range(lambda start, stop: _max_pool2d_backward(gy, argmax, gx, start, stop), N * C, H * W + gy.shape[1])
    return gx.reshape(N, C, H, W)


@njit(inline="always")
def _avg_pool_planes(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop):
    # The image planes nc = n * C + c in [start, stop). Inlined into the kernels below, which fix
    # the common window sizes as constants so that the window loops unroll (as for max pooling).
    N, C, H, W = x.shape
    OH, OW = y.shape[2:]
    # The windows wholly inside the plane (rows [oh_lo, oh_hi), columns [ow_lo, ow_hi)) are summed
    # without bounds checks, so that the loop over ow vectorises (Inception's 3x3 stride-1 pools:
    # 2.6 -> 1.5 ms for 4 x 192 x 35 x 35, one call, 2 threads); the others skip the taps outside
    # the plane. Both add the taps in the same order, row by row.
    oh_lo, oh_hi = _inside_range(H, OH, KH, SH, PH, 1)
    ow_lo, ow_hi = _inside_range(W, OW, KW, SW, PW, 1)
    for nc in range(start, stop):
        n, c = nc // C, nc % C
        for oh in range(OH):
            inside_row = oh_lo <= oh < oh_hi
            if inside_row:
                _avg_pool_inside_row(x, y, divisor, n, c, oh, ow_lo, ow_hi, KH, KW, SH, SW, PH, PW)
            for ow in range(OW):
                if inside_row and ow_lo <= ow < ow_hi:
                    continue  # summed just above
                total = x.dtype.type(0)
                for i in range(KH):
                    h = oh * SH - PH + i
                    if 0 <= h < H:
                        for j in range(KW):
                            w = ow * SW - PW + j
                            if 0 <= w < W:
                                total += x[n, c, h, w]
                # The division is done in float64 and rounded once, as in the reference.
                y[n, c, oh, ow] = np.float64(total) / divisor[oh, ow]


@njit(inline="always")
def _avg_pool_inside_row(x, y, divisor, n, c, oh, ow_lo, ow_hi, KH, KW, SH, SW, PH, PW):
    # The outputs [ow_lo, ow_hi) of row oh, whose windows lie inside the plane: the same sums in
    # the same order as the checked loop, without its checks.
    # Unsigned indices: Numba then adds no wrap-around for negative ones, which kept LLVM from
    # vectorising the loop.
    plane, out, shares = x[n, c], y[n, c, oh], divisor[oh]
    h0 = oh * SH - PH
    for ow in range(ow_lo, ow_hi):
        w0 = ow * SW - PW
        total = x.dtype.type(0)
        for i in range(KH):
            row = plane[h0 + i]
            for j in range(KW):
                total += row[np.uint64(w0 + j)]
        out[np.uint64(ow)] = np.float64(total) / shares[np.uint64(ow)]


@njit(cache=True, nogil=True)
def _avg_pool2d_forward(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop):
    if (KH, KW) == (2, 2):  # LeNet-5's and DenseNet's transitions
        _avg_pool_planes(x, y, divisor, 2, 2, SH, SW, PH, PW, start, stop)
    elif (KH, KW) == (3, 3):  # Inception's pooling branches
        _avg_pool_planes(x, y, divisor, 3, 3, SH, SW, PH, PW, start, stop)
    else:
        _avg_pool_planes(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop)


def avg_pool2d_forward(x, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, 1, ceil_mode)
    OW = conv_output_size(W, KW, SW, PW, 1, ceil_mode)
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, np)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    divisor = divisor.astype(np.float64)
    parallel_range(lambda start, stop: _avg_pool2d_forward(x, y, divisor, KH, KW, SH, SW, PH, PW, start, stop),
                   N * C, OH * OW * KH * KW)
    return y


@njit(cache=True, nogil=True)
def _avg_pool2d_backward(share, gx, KH, KW, SH, SW, PH, PW, start, stop):
    # col2im's gather, with every tap of window (oh, ow) holding share[oh, ow]; the input rows
    # nch = (n * C + c) * H + h in [start, stop).
    N, C, H, W = gx.shape
    OH, OW = share.shape[2:]
    source_row, ow_range = _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, 1, 1)
    for nch in range(start, stop):
        n, c, h = nch // (C * H), (nch // H) % C, nch % H
        for w in range(W):
            gx[n, c, h, w] = 0
        for i in range(KH):
            oh = source_row[h, i]
            if oh < 0:
                continue
            for j in range(KW):
                for ow in range(ow_range[j, 0], ow_range[j, 1]):
                    gx[n, c, h, np.uint64(ow * SW - PW + j)] += share[n, c, oh, np.uint64(ow)]


def avg_pool2d_backward(gy, H, W, KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad):
    """Each input pixel gets gy / divisor from every window that covers it."""
    N, C, OH, OW = gy.shape
    divisor = avg_pool_divisor(H, W, KH, KW, SH, SW, PH, PW, OH, OW, count_include_pad, np)
    share = np.ascontiguousarray((gy / divisor).astype(gy.dtype))  # (N, C, OH, OW)
    gx = np.empty((N, C, H, W), dtype=gy.dtype)
    parallel_range(lambda start, stop: _avg_pool2d_backward(share, gx, KH, KW, SH, SW, PH, PW, start, stop),
                   N * C * H, KH * KW * W)
    return gx
