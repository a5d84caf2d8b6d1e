"""conv2d by Winograd's minimal filtering F(4x4, 3x3) for the Numba backend: the larger tile of
Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 5, with the
interpolation points 0, +-1, +-2. The driver, its chunks and their products are
tinycnn.kernels.cpu_winograd's, which does the same with F(2x2, 3x3): read that file first.

A 4x4 block of outputs Y of a 3x3 filter g over the 6x6 input tile d under it is

    Y = A^T [ (G g G^T) * (B^T d B) ] A

      B^T = [ 4  0 -5  0  1  0 ]     G = [  1/4     0     0  ]     A^T = [ 1  1  1  1  1  0 ]
            [ 0 -4 -4  1  1  0 ]         [ -1/6  -1/6  -1/6  ]           [ 0  1 -1  2 -2  0 ]
            [ 0  4 -4 -1  1  0 ]         [ -1/6   1/6  -1/6  ]           [ 0  1  1  4  4  0 ]
            [ 0 -2 -1  2  1  0 ]         [ 1/24  1/12   1/6  ]           [ 0  1 -1  8 -8  1 ]
            [ 0  2 -1 -2  1  0 ]         [ 1/24 -1/12   1/6  ]
            [ 0  4  0 -5  0  1 ]         [  0      0     1   ]

36 multiplications per 4x4 block, 2.25 an output, against F(2x2, 3x3)'s 4 and a direct
convolution's 9; as there, over many channels each of the 36 positions (xi, nu) of the 6x6 domain
is one matrix product M[xi, nu] (OC, tiles) = U[xi, nu] (OC, C) @ V[xi, nu] (C, tiles), with
U = G g G^T and V = B^T d B. Tiles start every 4 pixels and overlap by 2.

The price is round-off: the coefficients 4, 5, 8 and 1/6 (not exact in binary) grow the float32
error, 4-8 times F(2x2, 3x3)'s (tinycnn.kernels.cpu_conv states what was measured, and takes this
path only for large outputs). float64 stays at round-off.

Each tile row carries one spare tile, as in tinycnn.kernels.cpu_winograd: a chunk's tiles then
start every 4 columns of its tile rows laid end to end, and every transform is a long vector loop.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.cpu_blas import _product

POSITIONS = 36  # the 6x6 Winograd domain, position 6*xi + nu


def tile_counts(OH, OW):
    """Tile rows and columns covering an OH x OW output, 4x4 outputs a tile (the last may stick out)."""
    return -(-OH // 4), -(-OW // 4)


@njit(cache=True, nogil=True)
def _weight_transform(W, U, start, stop):
    # U[6*xi + nu, o, c] = (G g G^T)[xi, nu] for g = W[o, c] (3x3), for o in [start, stop): first
    # t = G g (6x3) one row at a time for every c, then that row times G^T, each loop writing one
    # row of U (see cpu_winograd._weight_transform). G on a vector g0, g1, g2: g0/4,
    # -(g0 + g1 + g2)/6, -(g0 - g1 + g2)/6, (g0/4 + g2)/6 + g1/12, (g0/4 + g2)/6 - g1/12, g2.
    C = W.shape[1]
    quarter, sixth, twelfth = W.dtype.type(0.25), W.dtype.type(1 / 6), W.dtype.type(1 / 12)
    t = np.empty((3, C), dtype=W.dtype)
    for o in range(start, stop):
        for xi in range(6):
            for j in range(3):  # row xi of G times column j of g
                for c in range(C):
                    g0, g1, g2 = W[o, c, 0, j], W[o, c, 1, j], W[o, c, 2, j]
                    if xi == 0:
                        t[j, c] = g0 * quarter
                    elif xi == 1:
                        t[j, c] = -(g0 + g1 + g2) * sixth
                    elif xi == 2:
                        t[j, c] = -(g0 - g1 + g2) * sixth
                    elif xi == 3:
                        t[j, c] = (g0 * quarter + g2) * sixth + g1 * twelfth
                    elif xi == 4:
                        t[j, c] = (g0 * quarter + g2) * sixth - g1 * twelfth
                    else:
                        t[j, c] = g2
            for c in range(C):
                U[6 * xi + 0, o, np.uint64(c)] = t[0, c] * quarter
            for c in range(C):
                U[6 * xi + 1, o, np.uint64(c)] = -(t[0, c] + t[1, c] + t[2, c]) * sixth
            for c in range(C):
                U[6 * xi + 2, o, np.uint64(c)] = -(t[0, c] - t[1, c] + t[2, c]) * sixth
            for c in range(C):
                U[6 * xi + 3, o, np.uint64(c)] = (t[0, c] * quarter + t[2, c]) * sixth + t[1, c] * twelfth
            for c in range(C):
                U[6 * xi + 4, o, np.uint64(c)] = (t[0, c] * quarter + t[2, c]) * sixth - t[1, c] * twelfth
            for c in range(C):
                U[6 * xi + 5, o, np.uint64(c)] = t[2, c]


@njit(cache=True, nogil=True)
def _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row):
    # V[6*xi + nu, c, q] = (B^T d B)[xi, nu] for the 6x6 tile d of channel c whose top left corner
    # is input pixel (4*th - PH, 4*tw - PW), at q = (row - first_row) * (TW + 1) + tw, for the
    # tile rows row = n * TH + th in [first_row, stop_row); tw = TW is the spare tile.
    # B^T's rows, on a vector d0..d5, with a = d4 - 4 d2, b = d3 - 4 d1, e = d4 - d2, f = 2 (d3 - d1):
    # 4 d0 - 5 d2 + d4, a + b, a - b, e + f, e - f, 4 d1 - 5 d3 + d5.
    N, C, H, W = x.shape
    width = 4 * (TW + 1)  # the columns of one tile row, its spare tile included
    tiles = (stop_row - first_row) * (TW + 1)
    four, five = x.dtype.type(4), x.dtype.type(5)
    # B^T d along h for each tile row, the tile rows end to end (2 more columns for the last spare
    # tile): tile q's 6x6 values are rows[:, 4*q:4*q + 6]
    rows = np.zeros((6, (stop_row - first_row) * width + 2), dtype=x.dtype)
    edge = np.empty((6, W), dtype=x.dtype)  # the input rows of a tile row at the top or bottom
    # The columns inside the input, w - PW in [0, W); the others are padding, left zero in rows.
    w_lo = min(width, PW)
    w_hi = max(w_lo, min(width, W + PW))
    for c in range(C):
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            h0 = 4 * th - PH
            if 0 <= h0 and h0 + 5 < H:
                d, top = x[n, c], h0
            else:  # some rows are padding: a copy with zero rows there
                for i in range(6):
                    h = h0 + i
                    for w in range(W):
                        edge[i, np.uint64(w)] = x[n, c, h, np.uint64(w)] if 0 <= h < H else 0
                d, top = edge, 0
            r0 = (row - first_row) * width
            for w in range(w_lo, w_hi):
                u, v = np.uint64(r0 + w), np.uint64(w - PW)
                d0, d1, d2 = d[top, v], d[top + 1, v], d[top + 2, v]
                d3, d4, d5 = d[top + 3, v], d[top + 4, v], d[top + 5, v]
                a, b = d4 - four * d2, d3 - four * d1
                e, f = d4 - d2, (d3 - d1) + (d3 - d1)
                rows[0, u] = four * d0 - five * d2 + d4
                rows[1, u] = a + b
                rows[2, u] = a - b
                rows[3, u] = e + f
                rows[4, u] = e - f
                rows[5, u] = four * d1 - five * d3 + d5
        for xi in range(6):  # then B along w, the same combinations of each tile's 6 columns
            for q in range(tiles):
                w = np.uint64(4 * q)
                d0, d1, d2 = rows[xi, w], rows[xi, w + np.uint64(1)], rows[xi, w + np.uint64(2)]
                d3, d4, d5 = rows[xi, w + np.uint64(3)], rows[xi, w + np.uint64(4)], rows[xi, w + np.uint64(5)]
                a, b = d4 - four * d2, d3 - four * d1
                e, f = d4 - d2, (d3 - d1) + (d3 - d1)
                V[6 * xi + 0, c, np.uint64(q)] = four * d0 - five * d2 + d4
                V[6 * xi + 1, c, np.uint64(q)] = a + b
                V[6 * xi + 2, c, np.uint64(q)] = a - b
                V[6 * xi + 3, c, np.uint64(q)] = e + f
                V[6 * xi + 4, c, np.uint64(q)] = e - f
                V[6 * xi + 5, c, np.uint64(q)] = four * d1 - five * d3 + d5



@njit(cache=True, nogil=True)
def _output_transform(M, b, y, TH, TW, first_row, stop_row):
    # y[n, o, 4*th + a, 4*tw + e] = (A^T m A)[a, e] + b[o], m[xi, nu] = M[6*xi + nu, o, q], for
    # the tiles q of _input_transform; spare tiles and outputs past OH, OW dropped. A^T on a
    # vector m0..m5, with p = m1 + m2, m = m1 - m2, s = m3 + m4, d = m3 - m4:
    # m0 + p + s, m + 2 d, p + 4 s, m + 8 d + m5.
    # Two long loops over the chunk's tiles, as _input_transform's: A^T along xi into r (4 rows of
    # the 6 columns nu), then along nu, each tile's 4x4 outputs into four rows laid end to end,
    # which are then copied into y. One loop reading a tile's 36 values and writing its 16 outputs
    # ran 2x slower (3x3 32->128 at 56x56, batch 8, one thread: 7.0 ms).
    OC, tiles = M.shape[1], M.shape[2]
    OH, OW = y.shape[2], y.shape[3]
    width = 4 * (TW + 1)
    two, four, eight = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    r = np.empty((4, 6, tiles), dtype=M.dtype)  # (A^T m)[a, nu] of every tile
    out = np.empty((4, 4 * tiles), dtype=M.dtype)  # output rows 4*th .. 4*th + 3 of each tile row
    for o in range(OC):
        shift = b[o] if b.shape[0] else M.dtype.type(0)
        for nu in range(6):
            for q in range(tiles):
                u = np.uint64(q)
                m0, m1, m2 = M[nu, o, u], M[6 + nu, o, u], M[12 + nu, o, u]
                m3, m4, m5 = M[18 + nu, o, u], M[24 + nu, o, u], M[30 + nu, o, u]
                p, m, s, d = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                r[0, nu, u] = m0 + p + s
                r[1, nu, u] = m + two * d
                r[2, nu, u] = p + four * s
                r[3, nu, u] = m + eight * d + m5
        for a in range(4):
            for q in range(tiles):
                u, w = np.uint64(q), np.uint64(4 * q)
                m0, m1, m2 = r[a, 0, u], r[a, 1, u], r[a, 2, u]
                m3, m4, m5 = r[a, 3, u], r[a, 4, u], r[a, 5, u]
                p, m, s, d = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                out[a, w] = m0 + p + s + shift
                out[a, w + np.uint64(1)] = m + two * d + shift
                out[a, w + np.uint64(2)] = p + four * s + shift
                out[a, w + np.uint64(3)] = m + eight * d + m5 + shift
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            r0 = (row - first_row) * width
            for a in range(min(4, OH - 4 * th)):  # a last tile row sticking out: its rows inside only
                for w in range(OW):
                    y[n, o, 4 * th + a, np.uint64(w)] = out[a, np.uint64(r0 + w)]


@njit(cache=True, nogil=True)
def _forward_chunk(gemm, x, U, V, M, b, y, PH, PW, TH, TW, first_row, stop_row):
    # One chunk of cpu_winograd.winograd_conv2d_forward by F(4x4, 3x3), tile rows
    # [first_row, stop_row), in one nogil call: its input transform, its 36 products
    # M[p] = U[p] V[p] by the gemm at address `gemm` (see cpu_blas), its output transform.
    # U (36, OC, C), V (36, C, tiles), M (36, OC, tiles).
    _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
    for p in range(36):
        _product(gemm, U[p], False, V[p], False, M[p])
    _output_transform(M, b, y, TH, TW, first_row, stop_row)
