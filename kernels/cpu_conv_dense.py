"""conv2d's forward as one matrix product with the layer's whole linear map, for the Numba
backend: layers whose input and output planes are so small that nearly every output pixel reads
every input pixel (tinycnn.kernels.cpu_conv says which layers take this path, and why).

A convolution is linear in its input. Flatten a sample's input to a vector of H*W*C values (pixel
p = h*W + w, then channel c: the NHWC order) and its output to OC*OH*OW (channel o, then pixel
q = oh*OW + ow). Then y = M x + b, where the row (o, q) of M holds at column (p, c)

    M[o, q, p, c] = W[o, c, i, j]   for the tap (i, j) that links output pixel q to input pixel p,
                                    oh*SH - PH + i*DH = h and ow*SW - PW + j*DW = w,
                    0               where no tap does.

(A tap links a pair of pixels at most once, so M is well defined.) For a 3x3 layer with padding 1
on a 2x2 plane, every output pixel reads every input pixel, through 4 of its 9 taps: M has no zero
block, and the product of a sample makes 4*4*C*OC multiply-adds, where im2col's makes 9*4*C*OC, 56%
of them with padding. On bigger planes M fills up with zero blocks (on a 4x4 plane 61% of M is
zero), and im2col and the tap products waste less.

M has as many values as the product of one sample has multiply-adds, and the weight changes every
step, so M is built again every call. It is built and used a chunk of output channels at a time:
each chunk's rows of M are written by the thread that multiplies them, while they are in its
cache, and the product of a chunk's rows with the whole batch's inputs makes M's cost small
beside a batch of 32 (the rule in cpu_conv asks for a batch).

Only the forward takes this path. The backward's dx = M^T gy is as cheap, but dW must be folded
back out of M's gradient, gy x^T, which costs as much again: ResNet-18's 3x3 256->256 at 2x2
(batch 32) ran 2.9 ms so against 2.6 by the tap products.
"""
import functools

import numpy as np
from numba import njit

from tinycnn.kernels.cpu_columns import _to_padded_nhwc
from tinycnn.kernels.cpu_norm import _batch_norm_relu_rows
from tinycnn.kernels.parallel import parallel_range, run_chunks

# Rows of M a chunk builds and multiplies: about this many values (512 KiB of float32, half this
# machine's per-core L2). ResNet-18's 3x3 256->256 at 2x2, batch 32: 0.91 ms in chunks of 2^17
# values, 1.00 in chunks of 2^18.
MAP_CHUNK = 1 << 17


class PlaneMap:
    """Which tap links each output pixel to each input pixel of a layer: taps[q, p] = i*KW + j, or
    -1 where none does; live is the share of pairs (q, p) that some tap links, the share of M's
    values that are weights rather than zeros."""

    def __init__(self, H, W, KH, KW, SH, SW, PH, PW, DH, DW):
        self.OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
        self.OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
        self.taps = np.full((self.OH * self.OW, H * W), -1, dtype=np.int64)
        for oh in range(self.OH):
            for ow in range(self.OW):
                for i in range(KH):
                    h = oh * SH - PH + i * DH
                    for j in range(KW):
                        w = ow * SW - PW + j * DW
                        if 0 <= h < H and 0 <= w < W:
                            self.taps[oh * self.OW + ow, h * W + w] = i * KW + j
        self.live = float((self.taps >= 0).mean()) if self.taps.size else 0.0


@functools.lru_cache(maxsize=256)
def plane_map(H, W, KH, KW, SH, SW, PH, PW, DH, DW):
    """The PlaneMap of a layer's planes and window, made once per shape."""
    return PlaneMap(H, W, KH, KW, SH, SW, PH, PW, DH, DW)


@njit(cache=True, nogil=True)
def _build_map(W, taps, M, first):
    # M[o - first, q, p, :] = W[o, :, taps[q, p]] (zeros where taps[q, p] < 0), for the output
    # channels o of the chunk [first, first + M.shape[0]); W (OC, C, KH*KW), M (count, OH*OW, H*W, C).
    C = W.shape[1]
    for o in range(first, first + M.shape[0]):
        for q in range(M.shape[1]):
            for p in range(M.shape[2]):
                tap = taps[q, p]
                if tap >= 0:
                    for c in range(C):  # W[o] (at most 18 KiB) stays in cache over the (q, p) loops
                        M[o - first, q, p, c] = W[o, c, tap]
                else:
                    M[o - first, q, p, :] = 0


@njit(cache=True, nogil=True)
def _rows_to_samples(rows, b, y, first):
    # y[n, first + o, q] = rows[o, q, n] (+ b[first + o]): a chunk's product (count, OH*OW, N) back
    # to y (N, OC, OH*OW).
    count, Q, N = rows.shape
    for n in range(N):
        for o in range(count):
            shift = b[first + o] if b.shape[0] else 0
            for q in range(Q):
                y[n, first + o, q] = rows[o, q, n] + shift


def map_chunks(OC, values_per_channel):
    """(first, stop) ranges of output channels whose rows of M are about MAP_CHUNK values each, in
    an even number of equal chunks (two threads finish together); they depend on the shape only."""
    count = max(2, -(-OC * values_per_channel // MAP_CHUNK))
    count = min(OC, count + count % 2)
    return [(OC * k // count, OC * (k + 1) // count) for k in range(count)]


def dense_conv2d_forward(x, W, b, SH, SW, PH, PW, DH, DW, normalisation=None):
    """y = conv2d(x, W) + b (ungrouped) as y = M x + b over the whole batch, a chunk of output
    channels at a time; then, unless normalisation is None, cpu_norm._batch_norm_relu_rows(...,
    *normalisation) over y, sample by sample."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    N, C, H, Wd = x.shape
    OC, _, KH, KW = W.shape
    layer = plane_map(H, Wd, KH, KW, SH, SW, PH, PW, DH, DW)
    OH, OW = layer.OH, layer.OW
    b = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    y_rows = y.reshape(N, OC, OH * OW)
    x_pixels = np.empty((N, H, Wd, C), dtype=x.dtype)  # each sample's x as one NHWC vector
    _to_padded_nhwc(x, 0, x_pixels, 0, 0)
    x_pixels = x_pixels.reshape(N, H * Wd * C)
    weight = W.reshape(OC, C, KH * KW)

    def run(first, stop):
        M = np.empty((stop - first, OH * OW, H * Wd, C), dtype=x.dtype)
        _build_map(weight, layer.taps, M, first)
        rows = np.matmul(M.reshape(-1, H * Wd * C), x_pixels.T)  # (count*OH*OW, N)
        _rows_to_samples(rows.reshape(stop - first, OH * OW, N), b, y_rows, first)

    if N > 0:
        run_chunks(run, map_chunks(OC, OH * OW * H * Wd * C))
    if normalisation is not None:
        parallel_range(lambda start, stop: _batch_norm_relu_rows(y, start, stop, 0, OH, *normalisation),
                       N, OC * OH * OW)
    return y
