"""conv2d as one matrix product per kernel tap, over only the outputs where that tap reads the
input, for the Numba backend: layers of small outputs, whose im2col columns are mostly padding
(tinycnn.kernels.cpu_conv says which layers take this path, and why).

A 3x3 layer with padding 1 reads, at each corner pixel of its output, only 4 of its 9 taps inside
the input; im2col's columns hold zeros for the other 5, and its product multiplies them: 56% of
the multiply-adds of a 2x2 output are with padding, 31% of a 4x4 one's, 16% of an 8x8 one's. Here
each tap (i, j) of the kernel is a product of its own,

    y[n, oh, ow, :] += x[n, oh*SH - PH + i*DH, ow*SW - PW + j*DW, :] @ W[:, :, i, j]^T    (pixels by channels)

over the rectangle of outputs (oh, ow) whose input pixel lies inside x, and nothing else is
multiplied. Its inner axis is C rather than C*KH*KW, which OpenBLAS still runs at full speed from
a few dozen channels on. The backward goes through the same rectangles, tap by tap: y_rect =
x_rect W_tap^T, so

    dW[:, :, i, j] = gy_rect^T x_rect        dx_rect += gy_rect W_tap

(summed over the taps: a pixel of x is read by several taps, each adding its share).

Taps whose rectangles have the same shape (the four corners of a 3x3 kernel, say) are one group,
and a group's products are one batched np.matmul. A chunk of samples (fixed by the layer's shape,
as in cpu_conv) thus makes a handful of calls: one Numba loop gathering every tap's input pixels,
a product per group, and one Numba loop adding the products into y. Few calls matter here: each
time a chunk's thread comes back from a call it needs the GIL again, and with the other thread
holding it, that wait cost about 15 microseconds on this project's machine (nine 85-microsecond
products a chunk ran 19% slower on two threads than one chunk alone; one long product, 5%).
The backward goes further where it can: each chunk is one nogil Numba call (_backward_chunk),
its products by NumPy's own OpenBLAS called by address (tinycnn.kernels.cpu_blas), tap by tap;
elsewhere (NumPy built on another BLAS) its chunks are Python with np.matmul, one product a group.

The taps are summed in a fixed order (group by group), so the bits do not depend on the threads;
that order is not im2col's, so the sums differ from the reference by round-off.
"""
import functools

import numpy as np
from numba import njit

from tinycnn.kernels import cpu_blas
from tinycnn.kernels.cpu_blas import _product
from tinycnn.kernels.cpu_columns import _to_padded_nhwc
from tinycnn.kernels.cpu_conv_weights import gather_taps
from tinycnn.kernels.cpu_norm import _batch_norm_relu_rows
from tinycnn.kernels.parallel import parallel_range, run_chunks


def tap_outputs(L, O, k, S, P, D):
    """(first, stop, input) along one axis: the outputs first <= o < stop where tap k reads inside
    an input of length L (o*S - P + k*D in [0, L)), and the input position that `first` reads."""
    first = max(0, -((k * D - P) // S))  # the smallest o with o*S >= P - k*D
    stop = max(first, min(O, (L - 1 + P - k * D) // S + 1))
    return first, stop, first * S - P + k * D


def live_fraction(L, O, K, S, P, D):
    """The share of im2col's multiply-adds along one axis (K taps by O outputs) that read the input."""
    live = 0
    for k in range(K):
        first, stop, _ = tap_outputs(L, O, k, S, P, D)
        live += stop - first
    return live / (K * O)


class TapGroups:
    """A layer's live taps, grouped by the shape (h, w) of their rectangles of outputs.

    table[t] = (i, j, r0, c0, a0, b0, h, w) for the t-th live tap in group order: its outputs are
    rows [r0, r0 + h) and columns [c0, c0 + w), and output (r0, c0) reads input pixel (a0, b0).
    groups = [(first, stop, h, w)]: the taps table[first:stop] have rectangles of h x w outputs.
    Taps that read only padding are left out (their weight gradient is zero)."""

    def __init__(self, x_shape, W_shape, SH, SW, PH, PW, DH, DW):
        _, self.C, self.H, self.W = x_shape
        self.OC, _, self.KH, self.KW = W_shape
        self.OH = (self.H + 2 * PH - DH * (self.KH - 1) - 1) // SH + 1
        self.OW = (self.W + 2 * PW - DW * (self.KW - 1) - 1) // SW + 1
        rows = [tap_outputs(self.H, self.OH, i, SH, PH, DH) for i in range(self.KH)]
        columns = [tap_outputs(self.W, self.OW, j, SW, PW, DW) for j in range(self.KW)]
        shapes = {}  # (h, w) -> taps, in the order the shapes first appear
        for i in range(self.KH):
            for j in range(self.KW):
                (r0, r1, a0), (c0, c1, b0) = rows[i], columns[j]
                if r1 > r0 and c1 > c0:
                    shapes.setdefault((r1 - r0, c1 - c0), []).append((i, j, r0, c0, a0, b0, r1 - r0, c1 - c0))
        self.table = np.array([tap for group in shapes.values() for tap in group], dtype=np.int64).reshape(-1, 8)
        self.groups, first = [], 0
        for (h, w), group in shapes.items():
            self.groups.append((first, first + len(group), h, w))
            first += len(group)
        self.taps = self.table[:, 0] * self.KW + self.table[:, 1]  # flat tap indices, group order

    def pixels(self, count):
        """Pixels of all the live taps' rectangles, over `count` samples."""
        return count * int((self.table[:, 6] * self.table[:, 7]).sum())

    def grouped(self, flat, count, channels):
        """Views of a flat buffer, one (taps, count*h*w, channels) array per group, in group order."""
        views, offset = [], 0
        for first, stop, h, w in self.groups:
            size = (stop - first) * count * h * w * channels
            views.append(flat[offset:offset + size].reshape(stop - first, count * h * w, channels))
            offset += size
        return views

    def weights(self, W):
        """W's live taps in group order, (taps, OC, C): y_rect = x_rect @ W_tap^T."""
        return gather_taps(W, self.taps, "tap")


@functools.lru_cache(maxsize=1024)
def tap_groups(x_shape, W_shape, SH, SW, PH, PW, DH, DW):
    """The TapGroups of a layer, made once per shape (13 us each time for a 3x3 layer)."""
    return TapGroups(x_shape, W_shape, SH, SW, PH, PW, DH, DW)


@njit(cache=True, nogil=True)
def _gather_taps(xh, table, origin, SH, SW, buffer):
    # For each live tap t in table order, its rectangle of pixels of xh (count, H, W, C), sample
    # by sample and row by row, as (count*h*w, C) rows, one tap after the other in the flat buffer:
    # xh[n, table[t, origin] + r*SH, table[t, origin + 1] + s*SW] for r < h, s < w. (origin 4: the
    # input pixels a tap reads; origin 2: its outputs, for gy.)
    count, H, W, C = xh.shape
    source = xh.reshape(-1)
    d = 0
    for t in range(table.shape[0]):
        a0, b0, h, w = table[t, origin], table[t, origin + 1], table[t, 6], table[t, 7]
        for n in range(count):
            for r in range(h):
                pixel = (n * H + a0 + r * SH) * W + b0
                if SW == 1:  # the row's w pixels lie side by side
                    buffer[d:d + w * C] = source[pixel * C:(pixel + w) * C]
                    d += w * C
                else:
                    for s in range(w):
                        buffer[d:d + C] = source[(pixel + s * SW) * C:(pixel + s * SW + 1) * C]
                        d += C


@njit(cache=True, nogil=True)
def _scatter_taps(products, table, origin, SH, SW, bias, y, start, count):
    # The adjoint of _gather_taps, into y (N, C, H, W) for samples [start, start + count): y there
    # is set to bias (or 0) plus every tap's rows of products added at its pixels, the taps in
    # table order (summed as (count, H, W, C) first, the products' layout).
    C, H, W = y.shape[1:]
    total = np.zeros(count * H * W * C, dtype=y.dtype)
    d = 0
    for t in range(table.shape[0]):
        a0, b0, h, w = table[t, origin], table[t, origin + 1], table[t, 6], table[t, 7]
        for n in range(count):
            for r in range(h):
                pixel = (n * H + a0 + r * SH) * W + b0
                if SW == 1:
                    total[pixel * C:(pixel + w) * C] += products[d:d + w * C]
                    d += w * C
                else:
                    for s in range(w):
                        total[(pixel + s * SW) * C:(pixel + s * SW + 1) * C] += products[d:d + C]
                        d += C
    total4 = total.reshape(count, H, W, C)
    for n in range(count):
        for c in range(C):
            shift = bias[c] if bias.shape[0] else 0
            for i in range(H):
                for j in range(W):
                    y[start + n, c, i, j] = total4[n, i, j, c] + shift


@njit(cache=True, nogil=True)
def _weight_gradient_from_shares(shares, taps, gW, start, stop):
    # gW[o, c] (taps flattened) = shares[0, t, o, c] + shares[1, t, o, c] + ... for live tap t (at
    # flat tap taps[t]), in chunk order, and 0 at the dead taps, for o in [start, stop).
    count, T, _, C = shares.shape
    for o in range(start, stop):
        gW[o] = 0
        for t in range(T):
            tap = taps[t]
            for c in range(C):
                gW[o, c, tap] = shares[0, t, o, c]
            for k in range(1, count):
                for c in range(C):
                    gW[o, c, tap] += shares[k, t, o, c]


@njit(cache=True, nogil=True)
def _backward_chunk(gemm, x, gy, weights, table, areas, SH, SW, start, stop, share, gx, weight_gradient,
                    input_gradient):
    # One chunk of taps_conv2d_backward, samples [start, stop), in one nogil call: the same steps
    # and products as its Python chunk, with the products made by the gemm at address `gemm`
    # (NumPy's OpenBLAS, see cpu_blas) rather than np.matmul, tap by tap as np.matmul makes a
    # group's. areas[t]: tap t's h*w outputs, so count*areas[t] rows. share (T, OC, C) gets the
    # chunk's share of dW where weight_gradient; gx the samples' dx where input_gradient.
    count = stop - start
    _, C, H, W = x.shape
    _, OC, OH, OW = gy.shape
    rows = count * areas.sum()
    gyh = np.empty((count, OH, OW, OC), dtype=gy.dtype)
    _to_padded_nhwc(gy, start, gyh, 0, 0)
    gy_rows = np.empty(rows * OC, dtype=gy.dtype)
    _gather_taps(gyh, table, 2, 1, 1, gy_rows)
    if weight_gradient:  # dW[:, :, i, j] = gy_rect^T x_rect
        xh = np.empty((count, H, W, C), dtype=x.dtype)
        _to_padded_nhwc(x, start, xh, 0, 0)
        x_rows = np.empty(rows * C, dtype=x.dtype)
        _gather_taps(xh, table, 4, SH, SW, x_rows)
        _tap_products(gemm, areas, count, OC, C, gy_rows, x_rows, share.reshape(-1), True)
    if input_gradient:  # dx_rect += gy_rect W_tap
        products = np.empty(rows * C, dtype=gy.dtype)
        _tap_products(gemm, areas, count, OC, C, gy_rows, products, weights.reshape(-1), False)
        _scatter_taps(products, table, 4, SH, SW, np.zeros(0, gx.dtype), gx, start, count)


@njit(cache=True, nogil=True)
def _tap_products(gemm, areas, count, OC, C, gy_rows, rows, weights, weight_gradient):
    # _backward_chunk's products, tap by tap, by the gemm at address `gemm`. gy_rows and rows hold
    # each tap's count*areas[t] rows (of OC and C values), one tap after the other; weights is a
    # flat (T, OC, C). weight_gradient: weights[t] = gy_rect^T rows_rect (rows: x's); otherwise
    # rows_rect = gy_rect weights[t] (rows: dx's products).
    g, r = 0, 0
    for t in range(areas.shape[0]):
        P, w = count * areas[t], t * OC * C
        if g + P * OC > gy_rows.size or r + P * C > rows.size or w + OC * C > weights.size:
            raise IndexError("taps_conv2d_backward: a tap's rows run past its buffer")  # BLAS would not check
        gy_rect, rect = gy_rows[g:g + P * OC].reshape(P, OC), rows[r:r + P * C].reshape(P, C)
        weight = weights[w:w + OC * C].reshape(OC, C)
        if weight_gradient:
            _product(gemm, gy_rect, True, rect, False, weight)
        else:
            _product(gemm, gy_rect, False, weight, False, rect)
        g += P * OC
        r += P * C


def taps_conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, chunks, normalisation=None):
    """y = conv2d(x, W) + b (ungrouped), tap by tap over each chunk of samples (start, stop) in
    `chunks`; then, unless normalisation is None, cpu_norm._batch_norm_relu_rows(..., *normalisation)
    on each chunk of y as soon as it is written."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    layer = tap_groups(x.shape, W.shape, SH, SW, PH, PW, DH, DW)
    weights = layer.weights(W)
    b = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((x.shape[0], layer.OC, layer.OH, layer.OW), dtype=x.dtype)

    def run(start, stop):
        count = stop - start
        xh = np.empty((count, layer.H, layer.W, layer.C), dtype=x.dtype)
        _to_padded_nhwc(x, start, xh, 0, 0)
        inputs = np.empty(layer.pixels(count) * layer.C, dtype=x.dtype)
        _gather_taps(xh, layer.table, 4, SH, SW, inputs)
        products = np.empty(layer.pixels(count) * layer.OC, dtype=x.dtype)
        for (first, last, _, _), x_rects, y_rects in zip(layer.groups, layer.grouped(inputs, count, layer.C),
                                                         layer.grouped(products, count, layer.OC)):
            np.matmul(x_rects, weights[first:last].swapaxes(1, 2), out=y_rects)  # y_rect = x_rect W_tap^T
        _scatter_taps(products, layer.table, 2, 1, 1, b, y, start, count)
        if normalisation is not None:
            _batch_norm_relu_rows(y, start, stop, 0, layer.OH, *normalisation)

    run_chunks(run, chunks)
    return y


def taps_conv2d_backward(gy, x, W, SH, SW, PH, PW, DH, DW, chunks, needs_grad):
    """(dx, dW, db) of taps_conv2d_forward (None where needs_grad says so), chunk by chunk: each
    chunk's share of dW is kept apart and the shares are added in chunk order."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    layer = tap_groups(x.shape, W.shape, SH, SW, PH, PW, DH, DW)
    weights = layer.weights(W) if needs_grad[0] else None
    gx = np.empty_like(x) if needs_grad[0] else None
    shares = (np.empty((max(1, len(chunks)), len(layer.table), layer.OC, layer.C), dtype=x.dtype)
              if needs_grad[1] else None)
    if needs_grad[1] and not chunks:  # an empty batch: a zero weight gradient
        shares[...] = 0
    chunk_index = {start: k for k, (start, _) in enumerate(chunks)}
    gemm = cpu_blas.gemm_address(x.dtype)  # 0 where NumPy's BLAS cannot be called by address
    areas = np.ascontiguousarray(layer.table[:, 6] * layer.table[:, 7])
    unused3, unused4 = np.zeros((0, 0, 0), dtype=x.dtype), np.zeros((0, 0, 0, 0), dtype=x.dtype)  # for arrays not made

    def run_nogil(start, stop):  # the chunk below as one nogil call (see cpu_blas)
        _backward_chunk(gemm, x, gy, weights if needs_grad[0] else unused3, layer.table, areas, SH, SW, start, stop,
                        shares[chunk_index[start]] if needs_grad[1] else unused3, gx if needs_grad[0] else unused4,
                        needs_grad[1], needs_grad[0])

    def run(start, stop):
        count, k = stop - start, chunk_index[start]
        gyh = np.empty((count, layer.OH, layer.OW, layer.OC), dtype=x.dtype)
        _to_padded_nhwc(gy, start, gyh, 0, 0)
        gy_rows = np.empty(layer.pixels(count) * layer.OC, dtype=x.dtype)
        _gather_taps(gyh, layer.table, 2, 1, 1, gy_rows)
        gy_rects = layer.grouped(gy_rows, count, layer.OC)
        if needs_grad[1]:  # dW[:, :, i, j] = gy_rect^T x_rect
            xh = np.empty((count, layer.H, layer.W, layer.C), dtype=x.dtype)
            _to_padded_nhwc(x, start, xh, 0, 0)
            x_rows = np.empty(layer.pixels(count) * layer.C, dtype=x.dtype)
            _gather_taps(xh, layer.table, 4, SH, SW, x_rows)
            for (first, last, _, _), g_rects, x_rects in zip(layer.groups, gy_rects,
                                                             layer.grouped(x_rows, count, layer.C)):
                np.matmul(g_rects.swapaxes(1, 2), x_rects, out=shares[k, first:last])
        if needs_grad[0]:  # dx_rect += gy_rect W_tap
            products = np.empty(layer.pixels(count) * layer.C, dtype=x.dtype)
            for (first, last, _, _), g_rects, gx_rects in zip(layer.groups, gy_rects,
                                                              layer.grouped(products, count, layer.C)):
                np.matmul(g_rects, weights[first:last], out=gx_rects)
            _scatter_taps(products, layer.table, 4, SH, SW, np.zeros(0, x.dtype), gx, start, count)

    run_chunks(run_nogil if gemm else run, chunks)
    gW = None
    if needs_grad[1]:
        gW = np.empty((layer.OC, layer.C, layer.KH * layer.KW), dtype=x.dtype)
        parallel_range(lambda start, stop: _weight_gradient_from_shares(shares, layer.taps, gW, start, stop),
                       layer.OC, len(shares) * len(layer.table) * layer.C)
        gW = gW.reshape(W.shape)
    gb = gy.sum(axis=(0, 2, 3)) if needs_grad[2] else None
    return gx, gW, gb
