"""conv2d by Winograd's minimal filtering F(2x2, 3x3) for the Numba backend: 3x3 kernels, stride 1,
dilation 1, one group (tinycnn.kernels.cpu_conv says which layers take this path, and why).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 4: a 2x2
block of outputs Y of a 3x3 filter g over the 4x4 input tile d under it is

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, over the 4x4 "Winograd domain")

        B^T = [ 1  0 -1  0 ]      G = [ 1    0    0   ]      A^T = [ 1  1  1  0 ]
              [ 0  1  1  0 ]          [ 1/2  1/2  1/2 ]            [ 0  1 -1 -1 ]
              [ 0 -1  1  0 ]          [ 1/2 -1/2  1/2 ]
              [ 0  1  0 -1 ]          [ 0    0    1   ]

16 multiplications per 2x2 block instead of 36. Over many channels the elementwise products turn
into matrix products (the paper's equation 12): with U = G g G^T for every (o, c) pair and
V = B^T d B for every (c, tile), each of the 16 positions (xi, nu) of the Winograd domain is one

    M[xi, nu] (OC, tiles) = U[xi, nu] (OC, C) @ V[xi, nu] (C, tiles)

and Y = A^T M A gives each tile's 2x2 outputs. Tiles start every 2 pixels, so neighbouring 4x4
tiles overlap by 2; pixels outside the input (the padding, and the far edge of a last tile that
sticks out) read as zero, and a last tile row or column that sticks out of the output writes only
what lies inside it. The coefficients are 0, +-1 and +-1/2, so the transforms add little round-off
(tinycnn.kernels.cpu_conv states the float32 error measured).

Each tile row carries one spare tile past its end, computed and thrown away, so that a chunk's
tiles lie evenly spaced and its transforms run as long vector loops (see _input_transform).

The work goes in chunks of tile rows (all the tiles of output rows 2*th, 2*th + 1 of one sample,
counted across the batch), fixed by the layer's shape alone, on tinycnn.kernels.parallel's threads:
each chunk transforms its input tiles, makes its 16 products (OpenBLAS on one thread) and
transforms them back into y on one thread while its tiles are still in that core's cache.

The same driver runs F(4x4, 3x3) (tinycnn.kernels.cpu_winograd4x4: 6x6 tiles, 36 positions),
which cpu_conv takes for outputs of 16x16 and more; each tile's transforms and chunk function are
named in TILINGS.
"""
from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from tinycnn.kernels import cpu_blas, cpu_winograd4x4
from tinycnn.kernels.cpu_blas import _product
from tinycnn.kernels.cpu_norm import _batch_norm_relu_rows
from tinycnn.kernels.parallel import get_num_threads, parallel_range, run_chunks, split

# A chunk's transformed input and products, 16 * (C + OC) values per tile, are about TILE_CHUNK
# values (1 MiB of float32, half this machine's per-core L2), and at least MIN_CHUNK_TILES tiles,
# below which the products are too thin for OpenBLAS to run at speed. Each chunk reads the whole
# transformed weight U (16 * OC * C values), so where U is big, a chunk's V and M together take 4
# times as many values as U. Measured on one thread (CPU time, shared machine), GFLOP/s of the
# products: 3x3 64->64 at 56x56, batch 8, 138-159 with 145 tiles a chunk, 110 with 290;
# 128->128 at 28x28 93 with 75 tiles, 111 with 150, 116-118 with 285; 128->32 at 56x56 128-135
# with 116-145 tiles, 98 with 290; 512->512 at 28x28, batch 4, 95 with 75 tiles, 131-138 with
# 210-420.
TILE_CHUNK = 1 << 18
MIN_CHUNK_TILES = 128
# A layer whose products are big gets at least two chunks, one per core, as conv2d's other paths.
PRODUCT_SERIAL = 1 << 21


def tile_counts(OH, OW):
    """Tile rows and columns covering an OH x OW output, 2x2 outputs a tile (the last may stick out)."""
    return -(-OH // 2), -(-OW // 2)


def winograd_chunks(N, C, OC, OH, OW, outputs_per_tile=2):
    """(start, stop) ranges of the N * TH tile rows of a layer, for F(2x2, 3x3) or, with
    outputs_per_tile 4, F(4x4, 3x3); they depend on its shape only."""
    tiling = TILINGS[outputs_per_tile]
    P = tiling.positions
    TH, TW = tiling.tile_counts(OH, OW)
    rows = N * TH
    if rows == 0:
        return []
    tiles = max(MIN_CHUNK_TILES, TILE_CHUNK // (P * (C + OC)), 4 * OC * C // (C + OC))
    count = -(-rows // max(1, -(-tiles // TW)))  # chunks of about `tiles` tiles, whole tile rows
    return split_tile_rows(rows, count, P * OC * C * rows * TW)


def split_tile_rows(rows, count, multiply_adds):
    """`rows` tile rows as about `count` equal chunks: at least two where the products are big
    (multiply_adds), one per core, as conv2d's other paths, and an even number where split at all,
    so that two threads finish together."""
    if multiply_adds >= PRODUCT_SERIAL:
        count = max(count, 2)
    if count > 1:
        count += count % 2
    return split(rows, -(-rows // min(count, rows)))


@njit(cache=True, nogil=True)
def _weight_transform(W, U, start, stop):
    # U[4*xi + nu, o, c] = (G g G^T)[xi, nu] for g = W[o, c] (3x3), for o in [start, stop): first
    # t = G g (4x3) for every c, then its rows times G^T. Each loop writes one row of U or t, as
    # vectors; writing the 16 values of one (o, c) at a time ran 6x slower (12.7 instead of 2.1 ms
    # for a 512x512 weight), the 16 rows of U, 1 MiB apart, evicting each other from the cache.
    C = W.shape[1]
    t = np.empty((3, C), dtype=W.dtype)
    for o in range(start, stop):
        for xi in range(4):
            for j in range(3):  # row xi of G times column j of g
                for c in range(C):
                    g0, g1, g2 = W[o, c, 0, j], W[o, c, 1, j], W[o, c, 2, j]
                    if xi == 0:
                        t[j, c] = g0
                    elif xi == 1:
                        t[j, c] = (g0 + g1 + g2) * 0.5
                    elif xi == 2:
                        t[j, c] = (g0 - g1 + g2) * 0.5
                    else:
                        t[j, c] = g2
            for c in range(C):
                U[4 * xi + 0, o, np.uint64(c)] = t[0, c]
            for c in range(C):
                U[4 * xi + 1, o, np.uint64(c)] = (t[0, c] + t[1, c] + t[2, c]) * 0.5
            for c in range(C):
                U[4 * xi + 2, o, np.uint64(c)] = (t[0, c] - t[1, c] + t[2, c]) * 0.5
            for c in range(C):
                U[4 * xi + 3, o, np.uint64(c)] = t[2, c]


@njit(cache=True, nogil=True)
def _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row):
    # V[4*xi + nu, c, q] = (B^T d B)[xi, nu] for the 4x4 tile d of channel c whose top left corner
    # is input pixel (2*th - PH, 2*tw - PW), at q = (row - first_row) * (TW + 1) + tw, for the
    # tile rows row = n * TH + th in [first_row, stop_row).
    # Each tile row has one spare tile, tw = TW, whose values mean nothing and which
    # _output_transform skips: with it, tile q of the chunk starts at column 2*q of the chunk's
    # tile rows laid end to end, each 2*(TW + 1) columns wide, and the last step below is one long
    # loop per row of V. Loops over one tile row, TW long, ran mostly outside the compiler's
    # vector code (28 tiles are less than one turn of its unrolled loop): without the spare tile
    # this function took 1.9 instead of 1.25 ms for 3x3 64->64 at 56x56, batch 8.
    # Unsigned indices, as in cpu_columns: Numba then skips the negative-index check, which would
    # keep the loops from vectorising.
    N, C, H, W = x.shape
    width = 2 * (TW + 1)  # the columns of one tile row, its spare tile included
    tiles = (stop_row - first_row) * (TW + 1)
    # B^T d, the 4 combinations of each tile row's 4 input rows, its tile rows end to end (and 2
    # more columns for the last spare tile): tile q's 4x4 values are rows[:, 2*q:2*q + 4]
    rows = np.zeros((4, (stop_row - first_row) * width + 2), dtype=x.dtype)
    edge = np.empty((4, W), dtype=x.dtype)  # the input rows of a tile row at the top or bottom
    # The columns inside the input, w - PW in [0, W); the others are padding, left zero in rows.
    w_lo = min(width, PW)
    w_hi = max(w_lo, min(width, W + PW))
    for c in range(C):
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            h0 = 2 * th - PH
            if 0 <= h0 and h0 + 3 < H:  # d's rows are input rows top .. top + 3 of d
                d, top = x[n, c], h0
            else:  # some are padding: a copy with zero rows there
                for i in range(4):
                    h = h0 + i
                    for w in range(W):
                        edge[i, np.uint64(w)] = x[n, c, h, np.uint64(w)] if 0 <= h < H else 0
                d, top = edge, 0
            r0 = (row - first_row) * width  # (columns outside [w_lo, w_hi) stay zero)
            # B^T's rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3
            for w in range(w_lo, w_hi):
                rows[0, np.uint64(r0 + w)] = d[top, np.uint64(w - PW)] - d[top + 2, np.uint64(w - PW)]
            for w in range(w_lo, w_hi):
                rows[1, np.uint64(r0 + w)] = d[top + 1, np.uint64(w - PW)] + d[top + 2, np.uint64(w - PW)]
            for w in range(w_lo, w_hi):
                rows[2, np.uint64(r0 + w)] = d[top + 2, np.uint64(w - PW)] - d[top + 1, np.uint64(w - PW)]
            for w in range(w_lo, w_hi):
                rows[3, np.uint64(r0 + w)] = d[top + 1, np.uint64(w - PW)] - d[top + 3, np.uint64(w - PW)]
        # then B's columns, the same combinations of each tile's 4 columns (even and odd columns
        # read together: the compiler turns that into vector shuffles, not gathers)
        for xi in range(4):
            for q in range(tiles):
                w = np.uint64(2 * q)
                d0, d1 = rows[xi, w], rows[xi, w + np.uint64(1)]
                d2, d3 = rows[xi, w + np.uint64(2)], rows[xi, w + np.uint64(3)]
                V[4 * xi + 0, c, np.uint64(q)] = d0 - d2
                V[4 * xi + 1, c, np.uint64(q)] = d1 + d2
                V[4 * xi + 2, c, np.uint64(q)] = d2 - d1
                V[4 * xi + 3, c, np.uint64(q)] = d1 - d3


@njit(cache=True, nogil=True)
def _output_transform(M, b, y, TH, TW, first_row, stop_row):
    # y[n, o, 2*th + a, 2*tw + e] = (A^T m A)[a, e] + b[o], m[xi, nu] = M[4*xi + nu, o, q], for
    # the tiles q of _input_transform; spare tiles and outputs past OH, OW (a last tile sticking
    # out) dropped. One long loop over the chunk's tiles writes each tile's 2x2 outputs into two
    # rows laid end to end as _input_transform's, then the output rows are copied into y (0.7 ms
    # for 3x3 64->64 at 56x56, batch 8, against 1.0 ms with loops over one tile row).
    OC, tiles = M.shape[1], M.shape[2]
    OH, OW = y.shape[2], y.shape[3]
    width = 2 * (TW + 1)
    out = np.empty((2, 2 * tiles), dtype=M.dtype)  # output rows 2*th and 2*th + 1 of each tile row
    for o in range(OC):
        shift = b[o] if b.shape[0] else 0
        for q in range(tiles):
            u = np.uint64(q)
            # A^T along xi: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of m)
            s00 = M[0, o, u] + M[4, o, u] + M[8, o, u]
            s01 = M[1, o, u] + M[5, o, u] + M[9, o, u]
            s02 = M[2, o, u] + M[6, o, u] + M[10, o, u]
            s03 = M[3, o, u] + M[7, o, u] + M[11, o, u]
            s10 = M[4, o, u] - M[8, o, u] - M[12, o, u]
            s11 = M[5, o, u] - M[9, o, u] - M[13, o, u]
            s12 = M[6, o, u] - M[10, o, u] - M[14, o, u]
            s13 = M[7, o, u] - M[11, o, u] - M[15, o, u]
            # then A along nu: s0 + s1 + s2 and s1 - s2 - s3 of each row
            w = np.uint64(2 * q)
            out[0, w] = s00 + s01 + s02 + shift
            out[0, w + np.uint64(1)] = s01 - s02 - s03 + shift
            out[1, w] = s10 + s11 + s12 + shift
            out[1, w + np.uint64(1)] = s11 - s12 - s13 + shift
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            r0 = (row - first_row) * width
            for a in range(min(2, OH - 2 * th)):  # a last tile row sticking out: its first row only
                for w in range(OW):  # OW odd: a last tile's second column is dropped here
                    y[n, o, 2 * th + a, np.uint64(w)] = out[a, np.uint64(r0 + w)]


def _normalise_tile_rows(y, TH, outputs, first_row, stop_row, normalisation):
    """_batch_norm_relu_rows on the output rows of tile rows [first_row, stop_row), `outputs` rows a
    tile row: one call per sample they touch, whose tile rows are consecutive output rows."""
    OH = y.shape[2]
    n = first_row // TH
    while n * TH < stop_row:
        first, stop = max(first_row, n * TH) - n * TH, min(stop_row, (n + 1) * TH) - n * TH
        _batch_norm_relu_rows(y, n, n + 1, outputs * first, min(outputs * stop, OH), *normalisation)
        n += 1


@njit(cache=True, nogil=True)
def _forward_chunk(gemm, x, U, V, M, b, y, PH, PW, TH, TW, first_row, stop_row):
    # One chunk of winograd_conv2d_forward, tile rows [first_row, stop_row), in one nogil call:
    # its input transform, its 16 products M[p] = U[p] V[p] by the gemm at address `gemm` (NumPy's
    # OpenBLAS, see cpu_blas: the products np.matmul(U, V, out=M) makes), its output transform.
    # U (16, OC, C), V (16, C, tiles), M (16, OC, tiles).
    _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
    for p in range(16):
        _product(gemm, U[p], False, V[p], False, M[p])
    _output_transform(M, b, y, TH, TW, first_row, stop_row)


class Tiling(NamedTuple):
    """One Winograd algorithm for the forward: its outputs a tile side, its positions (the domain's
    size), its tile counts, its transforms and its nogil chunk."""
    outputs: int
    positions: int
    tile_counts: Callable
    weight_transform: Callable
    input_transform: Callable
    output_transform: Callable
    forward_chunk: Callable


TILINGS = {
    2: Tiling(2, 16, tile_counts, _weight_transform, _input_transform, _output_transform, _forward_chunk),
    4: Tiling(4, cpu_winograd4x4.POSITIONS, cpu_winograd4x4.tile_counts, cpu_winograd4x4._weight_transform,
              cpu_winograd4x4._input_transform, cpu_winograd4x4._output_transform, cpu_winograd4x4._forward_chunk),
}


def weight_transform(W, outputs_per_tile=2):
    """U (P, OC, C) = G g G^T of every 3x3 kernel g of W (OC, C, 3, 3), position xi * sqrt(P) + nu
    first: P = 16 for F(2x2, 3x3), 36 for F(4x4, 3x3)."""
    tiling = TILINGS[outputs_per_tile]
    OC, C = W.shape[:2]
    U = np.empty((tiling.positions, OC, C), dtype=W.dtype)
    parallel_range(lambda start, stop: tiling.weight_transform(W, U, start, stop), OC, tiling.positions * C)
    return U


def winograd_conv2d_forward(x, W, b, PH, PW, normalisation=None, outputs_per_tile=2):
    """y = conv2d(x, W, b) at stride 1, dilation 1, one group, for a 3x3 W (OC, C, 3, 3), by
    F(2x2, 3x3), or F(4x4, 3x3) with outputs_per_tile 4 (tinycnn.kernels.cpu_winograd4x4): as
    tinycnn.kernels.reference.conv2d_forward up to round-off. With normalisation, each chunk's
    output rows are then normalised in place by _batch_norm_relu_rows(..., *normalisation),
    inference's BatchNorm and ReLU (see cpu_conv.conv2d_batch_norm_relu_inference)."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W, dtype=x.dtype)
    N, C, H, Wd = x.shape
    OC = W.shape[0]
    OH, OW = H + 2 * PH - 2, Wd + 2 * PW - 2
    if W.shape[1:] != (C, 3, 3) or OH < 1 or OW < 1:
        raise ValueError(f"winograd_conv2d_forward: expected a (OC, {C}, 3, 3) weight and an input of at least 3x3 "
                         f"once padded, got weight {W.shape}, input {x.shape}, padding ({PH}, {PW})")
    tiling = TILINGS[outputs_per_tile]
    P = tiling.positions
    TH, TW = tiling.tile_counts(OH, OW)
    b = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    U = weight_transform(W, outputs_per_tile)
    chunks = winograd_chunks(N, C, OC, OH, OW, outputs_per_tile)
    # One workspace (a chunk's V and M) per thread, made once per call and handed from chunk to
    # chunk: fresh arrays for every chunk came as fresh pages from the operating system, whose
    # first touch cost more than the transforms (3x3 64->64 at 56x56, batch 8, one thread: 28
    # instead of 15 ms).
    most_tiles = max((stop - start) * (TW + 1) for start, stop in chunks) if chunks else 0

    def new_workspace():
        return np.empty(P * C * most_tiles, dtype=x.dtype), np.empty(P * OC * most_tiles, dtype=x.dtype)
    free_workspaces = [new_workspace() for _ in range(min(get_num_threads(), len(chunks)))]
    gemm = cpu_blas.gemm_address(x.dtype)  # 0 where NumPy's BLAS cannot be called by address

    def run(first_row, stop_row):
        tiles = (stop_row - first_row) * (TW + 1)  # a spare tile a row (see _input_transform)
        # (list.pop and append are atomic under the GIL; every value a chunk reads, it wrote)
        try:
            V_memory, M_memory = free_workspaces.pop()
        except IndexError:  # more threads than workspaces: set_num_threads during this call
            V_memory, M_memory = new_workspace()
        V = V_memory[:P * C * tiles].reshape(P, C, tiles)
        M = M_memory[:P * OC * tiles].reshape(P, OC, tiles)
        if gemm:  # the three steps below in one nogil call (see cpu_blas)
            tiling.forward_chunk(gemm, x, U, V, M, b, y, PH, PW, TH, TW, first_row, stop_row)
        else:
            tiling.input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
            np.matmul(U, V, out=M)  # one OpenBLAS product (OC, C) x (C, tiles) per position of the domain
            tiling.output_transform(M, b, y, TH, TW, first_row, stop_row)
        if normalisation is not None:
            _normalise_tile_rows(y, TH, tiling.outputs, first_row, stop_row, normalisation)
        free_workspaces.append((V_memory, M_memory))

    run_chunks(run, chunks)
    return y
