"""The two column layouts of the Numba kernels (see tinycnn.kernels.cpu for the whole picture).

Channel-major, as tinycnn.kernels.reference lays out im2col's values but with the samples moved
inward: memory (C, KH, KW, N, OH, OW), so that conv2d sees one (C*KH*KW, N*OH*OW) matrix.
    im2col     one (n, c) image plane per parallel item
    col2im     one input row (n, c, h) per item: it gathers, in tap order, every column entry that
               saw one of its pixels, so no two threads write to one element and the sums are the
               reference's to the last bit
Pixel-major, (count*OH*OW, KH*KW*C), made from a padded NHWC copy of a few samples, for conv2d's
layers with short output rows (tinycnn.kernels.cpu_conv says when):
    _to_padded_nhwc, _im2row      and their adjoints _row2im, _from_padded_nhwc

Index maths as in the reference: tap (i, j) of the window at output (oh, ow) reads input pixel
h = oh*SH - PH + i*DH, w = ow*SW - PW + j*DW.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.parallel import parallel_range
from tinycnn.kernels.reference import conv_output_size


@njit(cache=True, inline="always")
def _valid_range(k, L, O, S, P, D):
    """The outputs o in [lo, hi) whose tap k lands inside the input: 0 <= o*S - P + k*D < L."""
    # ceil((P - k*D) / S) with Python's floor division, capped at O: a tap that only ever sees the
    # left padding (k*D < P - (O-1)*S) has no valid output, and im2col zero-fills [0, lo).
    lo = min(O, max(0, -((k * D - P) // S)))
    hi = min(O, (L - 1 + P - k * D) // S + 1)
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _im2col(x, col, SH, SW, PH, PW, DH, DW, start, stop, first_row=0):
    # Stride 1, the common case, gets its own copy of the loops with SW a constant, so that the
    # compiler turns each row's copy into vector loads and stores (3x faster on 56-pixel rows).
    if SW == 1:
        _im2col_planes(x, col, SH, 1, PH, PW, DH, DW, start, stop, first_row)
    else:
        _im2col_planes(x, col, SH, SW, PH, PW, DH, DW, start, stop, first_row)


@njit(inline="always")
def _im2col_planes(x, col, SH, SW, PH, PW, DH, DW, start, stop, first_row):
    # Fills the planes cn = c * N + n in [start, stop) of col, the channel-major array
    # (C, KH, KW, N, OH, OW), with the windows of output rows first_row .. first_row + OH (conv2d
    # makes the columns of a big sample a block of output rows at a time). Plain element indexing
    # throughout: a slice such as col[c, i, j, n, oh] would be a new array object per row, whose
    # reference counting costs more than copying the row.
    N, C, H, W = x.shape
    KH, KW, _, OH, OW = col.shape[1:]
    for cn in range(start, stop):
        c, n = cn // N, cn % N
        for i in range(KH):
            for j in range(KW):
                ow_lo, ow_hi = _valid_range(j, W, OW, SW, PW, DW)
                for oh in range(OH):
                    h = (first_row + oh) * SH - PH + i * DH
                    if h < 0 or h >= H:
                        ow_lo_h, ow_hi_h = 0, 0  # the whole row falls in the padding
                    else:
                        ow_lo_h, ow_hi_h = ow_lo, ow_hi
                    # Unsigned indices: Numba then skips the negative-index check, which kept
                    # these loops from vectorising (2-3x slower).
                    for ow in range(ow_lo_h):
                        col[c, i, j, n, oh, np.uint64(ow)] = 0
                    for ow in range(ow_lo_h, ow_hi_h):
                        col[c, i, j, n, oh, np.uint64(ow)] = x[n, c, h, np.uint64(ow * SW - PW + j * DW)]
                    for ow in range(max(ow_lo_h, ow_hi_h), OW):
                        col[c, i, j, n, oh, np.uint64(ow)] = 0


def im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """(N, C, H, W) -> (N, C, KH, KW, OH, OW): every window of x laid out as a column.

    The values are the reference's; the memory is channel-major, (C, KH, KW, N, OH, OW), and the
    array returned a transposed view of it. conv2d then sees col as one (C*KH*KW, N*OH*OW) matrix
    without a copy, and multiplies it by the weight in one product for the whole batch, which on
    2 cores measured up to several times faster than N products of (C*KH*KW, OH*OW), most of all
    where OH*OW is small (the last stages of a ResNet); see benchmarks/RESULTS.md.
    """
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH = conv_output_size(H, KH, SH, PH, DH)
    OW = conv_output_size(W, KW, SW, PW, DW)
    col = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    parallel_range(lambda start, stop: _im2col(x, col, SH, SW, PH, PW, DH, DW, start, stop),
                   C * N, KH * KW * OH * OW)
    return col.transpose(3, 0, 1, 2, 4, 5)  # (N, C, KH, KW, OH, OW), a view


@njit(cache=True)
def _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW):
    """For col2im's gather: source_row[h, i], the output row oh whose tap i lands on input row h
    (oh*SH = h + PH - i*DH), or -1 if none; and ow_range[j] = (lo, hi), the outputs ow whose tap j
    lands inside the input. Made once per call, so the loops below do no integer division."""
    source_row = np.full((H, KH), -1, dtype=np.int64)
    for h in range(H):
        for i in range(KH):
            oh_times_SH = h + PH - i * DH
            if oh_times_SH >= 0 and oh_times_SH % SH == 0 and oh_times_SH // SH < OH:
                source_row[h, i] = oh_times_SH // SH
    ow_range = np.empty((KW, 2), dtype=np.int64)
    for j in range(KW):
        ow_range[j, 0], ow_range[j, 1] = _valid_range(j, W, OW, SW, PW, DW)
    return source_row, ow_range


@njit(cache=True, nogil=True)
def _col2im(col, x, SH, SW, PH, PW, DH, DW, start, stop):
    # As _im2col: a copy of the loops for stride 1, where they vectorise.
    if SW == 1:
        _col2im_rows(col, x, SH, 1, PH, PW, DH, DW, start, stop)
    else:
        _col2im_rows(col, x, SH, SW, PH, PW, DH, DW, start, stop)


@njit(inline="always")
def _col2im_rows(col, x, SH, SW, PH, PW, DH, DW, start, stop):
    # Fills the input rows nch = (n * C + c) * H + h in [start, stop) of x; col is channel-major,
    # (C, KH, KW, N, OH, OW).
    N, C, H, W = x.shape
    KH, KW, _, OH, OW = col.shape[1:]
    source_row, ow_range = _tap_tables(H, W, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW)
    for nch in range(start, stop):
        n, c, h = nch // (C * H), (nch // H) % C, nch % H
        for w in range(W):
            x[n, c, h, w] = 0
        for i in range(KH):
            oh = source_row[h, i]
            if oh < 0:
                continue
            for j in range(KW):
                for ow in range(ow_range[j, 0], ow_range[j, 1]):
                    x[n, c, h, np.uint64(ow * SW - PW + j * DW)] += col[c, i, j, n, oh, np.uint64(ow)]


def col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    """(N, C, KH, KW, OH, OW) -> (N, C, H, W): the adjoint of im2col, summing overlapping taps.
    Fastest when col's memory is channel-major, as im2col returns it and conv2d's backward
    produces it; any other layout is copied to it first."""
    N, C = col.shape[:2]
    col_channel_major = np.ascontiguousarray(col.transpose(1, 2, 3, 0, 4, 5))  # (C, KH, KW, N, OH, OW)
    x = np.empty((N, C, H, W), dtype=col.dtype)
    KH, KW = col.shape[2:4]
    parallel_range(lambda start, stop: _col2im(col_channel_major, x, SH, SW, PH, PW, DH, DW, start, stop),
                   N * C * H, KH * KW * W)
    return x


@njit(cache=True, nogil=True)
def _to_padded_nhwc(x, start, padded, PH, PW):
    # padded[n, h, w, c] = x[start + n, c, h - PH, w - PW], 0 in the border.
    count, HP, WP, C = padded.shape
    H, W = x.shape[2:]
    for n in range(count):
        for h in range(HP):
            for w in range(WP):
                inside = PH <= h < PH + H and PW <= w < PW + W
                for c in range(C):
                    padded[n, h, w, c] = x[start + n, c, h - PH, w - PW] if inside else 0


@njit(cache=True, nogil=True)
def _from_padded_nhwc(padded, PH, PW, x, start):
    # x[start + n, c, h, w] = padded[n, h + PH, w + PW, c]: the inverse of _to_padded_nhwc.
    count, HP, WP, C = padded.shape
    H, W = x.shape[2:]
    for n in range(count):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    x[start + n, c, h, w] = padded[n, h + PH, w + PW, c]


@njit(cache=True, nogil=True)
def _im2row(padded, col, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column):
    # col[(n, oh, ow), (i, j, c)] = padded[n, oh*SH + first_row + i*DH, ow*SW + first_column + j*DW, c]:
    # pixel-major columns (count*OH*OW, KH*KW*C); the window starts first_row, first_column into the
    # padded plane. Without dilation along W, one window row is KW*C values in a row.
    count, HP, WP, C = padded.shape
    source = padded.reshape(-1)
    target = col.reshape(-1)
    d = 0
    for n in range(count):
        for oh in range(OH):
            for ow in range(OW):
                for i in range(KH):
                    s = ((n * HP + oh * SH + first_row + i * DH) * WP + ow * SW + first_column) * C
                    for j in range(KW):
                        for c in range(C):
                            target[np.uint64(d + c)] = source[np.uint64(s + j * DW * C + c)]
                        d += C


@njit(cache=True, nogil=True)
def _row2im(col, padded, OH, OW, KH, KW, SH, SW, DH, DW, first_row, first_column):
    # The adjoint of _im2row: padded (zeroed here) gets every column entry added at its pixel.
    # One thread owns the chunk, so this scatter has no races; its sums run in (oh, ow, i, j)
    # order, not col2im's tap order, so they may differ from the reference by round-off.
    count, HP, WP, C = padded.shape
    target = padded.reshape(-1)
    source = col.reshape(-1)
    target[:] = 0
    d = 0
    for n in range(count):
        for oh in range(OH):
            for ow in range(OW):
                for i in range(KH):
                    s = ((n * HP + oh * SH + first_row + i * DH) * WP + ow * SW + first_column) * C
                    for j in range(KW):
                        for c in range(C):
                            target[np.uint64(s + j * DW * C + c)] += source[np.uint64(d + c)]
                        d += C
