"""The weight gradient of a 3x3 stride-1 convolution by Winograd's F(4x4, 3x3), for the Numba backend:
the adjoint of tinycnn.kernels.cpu_winograd4x4's forward (read that file first; its header has the
transforms B^T, G and A^T). The driver, its chunks and their products are
tinycnn.kernels.cpu_winograd_backward's, which does the same with F(2x2, 3x3).

As for F(2x2, 3x3), the weight gradient is dL/dg = G^T [ sum over tiles of (A gy A^T) * (B^T d B) ] G,
with gy the 4x4 block of dL/dY of a tile: 36 products, each with one multiply-add per tile and
(o, c) pair. A tile covers 16 outputs rather than 4, so that is 36/16 = 2.25 multiply-adds per
output and (o, c), against F(2x2, 3x3)'s 4 and im2col's 9. DenseNet-121's 3x3 128->32 at 56x56,
batch 8: 426 M multiply-adds by F(2x2, 3x3), 248 M here.

The price is round-off: the coefficients 4, 5, 8 and 1/6 (not exact in binary) grow the float32
error. A DenseNet-121 weight gradient (128->32, batch 8, unit-normal x and gy) was 1.1-1.5e-5 of
its largest entry away from the exact one at 28x28 and 56x56, against 1.7-3.4e-6 for PyTorch's
float32; float64 stays at 1e-14. cpu_conv takes this path only for large outputs (see
WINOGRAD_4X4_SIZE there).
"""
import numpy as np
from numba import njit

from tinycnn.kernels.cpu_blas import _product
from tinycnn.kernels.cpu_winograd4x4 import _input_transform


@njit(cache=True, nogil=True)
def _output_gradient_transform(gy, dM, TH, TW, first_row, stop_row):
    # dM[6*xi + nu, o, q] = (A gy_tile A^T)[xi, nu] for the 4x4 block gy_tile of gy[n, o] at output
    # (4*th, 4*tw), for the tiles q of _input_transform; outputs past OH, OW and the spare tiles
    # are zero. A is A^T's transpose; on a vector g0..g3, with p = g0 + g2, m = g1 + g3,
    # s = g0 + 4 g2, t = 2 g1 + 8 g3, it gives g0, p + m, p - m, s + t, s - t, g3.
    # As _input_transform: A along h for all the chunk's tile rows end to end, then along w.
    OC = gy.shape[1]
    OH, OW = gy.shape[2], gy.shape[3]
    width = 4 * (TW + 1)
    tiles = (stop_row - first_row) * (TW + 1)
    two, four, eight = gy.dtype.type(2), gy.dtype.type(4), gy.dtype.type(8)
    block = np.zeros((4, OW), dtype=gy.dtype)  # a tile row's 4 output rows, zero past OH
    rows = np.zeros((6, (stop_row - first_row) * width), dtype=gy.dtype)  # columns from OW on stay 0
    for o in range(OC):
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            for i in range(4):
                h = 4 * th + i
                if h < OH:
                    for w in range(OW):
                        block[i, np.uint64(w)] = gy[n, o, h, np.uint64(w)]
                else:
                    for w in range(OW):
                        block[i, np.uint64(w)] = 0
            r0 = (row - first_row) * width
            for w in range(OW):
                u, v = np.uint64(r0 + w), np.uint64(w)
                g0, g1, g2, g3 = block[0, v], block[1, v], block[2, v], block[3, v]
                p, m = g0 + g2, g1 + g3
                s, t = g0 + four * g2, two * g1 + eight * g3
                rows[0, u] = g0
                rows[1, u] = p + m
                rows[2, u] = p - m
                rows[3, u] = s + t
                rows[4, u] = s - t
                rows[5, u] = g3
        for xi in range(6):
            for q in range(tiles):
                w = np.uint64(4 * q)
                g0, g1 = rows[xi, w], rows[xi, w + np.uint64(1)]
                g2, g3 = rows[xi, w + np.uint64(2)], rows[xi, w + np.uint64(3)]
                p, m = g0 + g2, g1 + g3
                s, t = g0 + four * g2, two * g1 + eight * g3
                dM[6 * xi + 0, o, np.uint64(q)] = g0
                dM[6 * xi + 1, o, np.uint64(q)] = p + m
                dM[6 * xi + 2, o, np.uint64(q)] = p - m
                dM[6 * xi + 3, o, np.uint64(q)] = s + t
                dM[6 * xi + 4, o, np.uint64(q)] = s - t
                dM[6 * xi + 5, o, np.uint64(q)] = g3


@njit(cache=True, nogil=True)
def _weight_gradient_transform(shares, gW, start, stop):
    # gW[o, c] = G^T dU[:, o, c] G for o in [start, stop), dU the sum of the chunks' shares in chunk
    # order, its 36 values the 6x6 matrix u[xi, nu] = dU[6*xi + nu]. G^T on a vector u0..u5:
    # u0/4 - (u1 + u2)/6 + (u3 + u4)/24, (u2 - u1)/6 + (u3 - u4)/12, (u3 + u4 - u1 - u2)/6 + u5.
    # First t = G^T u (3x6), then each row of t times G.
    count, _, OC, C = shares.shape
    quarter, sixth = shares.dtype.type(0.25), shares.dtype.type(1 / 6)
    twelfth, twenty_fourth = shares.dtype.type(1 / 12), shares.dtype.type(1 / 24)
    u = np.empty((36, C), dtype=shares.dtype)
    t = np.empty((3, 6), dtype=shares.dtype)
    for o in range(start, stop):
        for p in range(36):
            for c in range(C):
                u[p, c] = shares[0, p, o, c]
            for k in range(1, count):
                for c in range(C):
                    u[p, c] += shares[k, p, o, c]
        for c in range(C):
            for nu in range(6):
                u0, u1, u2 = u[nu, c], u[6 + nu, c], u[12 + nu, c]
                u3, u4, u5 = u[18 + nu, c], u[24 + nu, c], u[30 + nu, c]
                t[0, nu] = u0 * quarter - (u1 + u2) * sixth + (u3 + u4) * twenty_fourth
                t[1, nu] = (u2 - u1) * sixth + (u3 - u4) * twelfth
                t[2, nu] = (u3 + u4 - u1 - u2) * sixth + u5
            for i in range(3):
                t0, t1, t2, t3, t4, t5 = t[i, 0], t[i, 1], t[i, 2], t[i, 3], t[i, 4], t[i, 5]
                gW[o, c, i, 0] = t0 * quarter - (t1 + t2) * sixth + (t3 + t4) * twenty_fourth
                gW[o, c, i, 1] = (t2 - t1) * sixth + (t3 - t4) * twelfth
                gW[o, c, i, 2] = (t3 + t4 - t1 - t2) * sixth + t5


@njit(cache=True, nogil=True)
def _weight_gradient_chunk(gemm, x, gy, V, dM, share, by_input_channels, PH, PW, TH, TW, first_row, stop_row):
    # One chunk, tile rows [first_row, stop_row), in one nogil call: its two transforms and its 36
    # products by the gemm at address `gemm` (see tinycnn.kernels.cpu_blas), share[p] = V[p] dM[p]^T
    # (36, C, OC) where by_input_channels, else dM[p] V[p]^T (36, OC, C).
    _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
    _output_gradient_transform(gy, dM, TH, TW, first_row, stop_row)
    first, second = (V, dM) if by_input_channels else (dM, V)
    for p in range(36):
        _product(gemm, first[p], False, second[p], True, share[p])
