"""The weight gradient of a 3x3 stride-1 convolution by Winograd's F(2x2, 3x3), for the Numba
backend: the adjoint of tinycnn.kernels.cpu_winograd's forward (read that file first; its header
has the transforms B^T, G and A^T).

The forward is Y = A^T [ U * V ] A per tile, summed over the input channels, with U = G g G^T and
V = B^T d B. It is linear in U, so for a loss L, with gy the 2x2 block of dL/dY of one tile,

    dL/dM = A gy A^T                             (4x4: the adjoint of M -> A^T M A)
    dL/dU[xi, nu] (OC, C) = sum over tiles of dL/dM[xi, nu] (OC, tiles) @ V[xi, nu]^T (tiles, C)
    dL/dg (3x3) = G^T dL/dU G                    (the adjoint of g -> G g G^T)

which is 16 matrix products with 16 multiply-adds per tile and (o, c) pair, where im2col's weight
gradient takes 36: 2.25 times fewer. The transformed input V is the forward's, made by
cpu_winograd._input_transform; the padding and the tiles that stick out of the output are zeros in
gy's transform, so they add nothing.

The driver below also runs F(4x4, 3x3) (tinycnn.kernels.cpu_winograd4x4_backward and cpu_winograd4x4: its
transforms, 36 positions and 4x4 output blocks), which cpu_conv takes for large outputs: its chunks, shares and
products are the same, in Tiling's functions.

The input gradient is not computed here: at stride 1 it is itself a convolution of gy (see
tinycnn.kernels.cpu_conv), which goes through Winograd's forward.
"""
from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from tinycnn.kernels import cpu_blas, cpu_winograd4x4, cpu_winograd4x4_backward as f4x4
from tinycnn.kernels.cpu_blas import _product
from tinycnn.kernels.cpu_winograd import _input_transform, split_tile_rows, tile_counts
from tinycnn.kernels.parallel import get_num_threads, parallel_range, run_chunks

# Each chunk of tile rows adds its own share of dL/dU, (16, OC, C), and the shares are summed in
# chunk order, so the result does not depend on the threads. Chunks of about GRADIENT_CHUNK_TILES
# tiles: the products' inner axis is the tiles, and OpenBLAS needs it long to run at speed, but
# every chunk costs a share of 16*OC*C values, at most SHARE_VALUES over all chunks together.
# 2 threads, quiet machine, chunks of 256 / 512 / 1024 / 2048 tiles: 3x3 64->64 at 56x56, batch 8,
# 8.95 / 8.22 / 7.59 / 7.72 ms; 128->32 at 56x56 10.6 / 9.9 / 9.6 / 9.95; 128->128 at 28x28
# 6.14 / 5.68 / 5.98 / 5.74; ResNet-18's 16->16 at 32x32, batch 32, 1.48 / 1.27 / 1.22 / 1.22.
GRADIENT_CHUNK_TILES = 1024
SHARE_VALUES = 1 << 23  # 32 MiB of float32 shares


def weight_gradient_chunks(N, C, OC, OH, OW, outputs_per_tile=2):
    """(start, stop) ranges of the N * TH tile rows of a layer, for the weight gradient by
    F(2x2, 3x3) or, with outputs_per_tile 4, F(4x4, 3x3); they depend on its shape only."""
    tiling = TILINGS[outputs_per_tile]
    TH, TW = tiling.tile_counts(OH, OW)
    rows = N * TH
    if rows == 0:
        return []
    count = -(-rows // max(1, GRADIENT_CHUNK_TILES // (TW + 1)))
    count = min(count, max(1, SHARE_VALUES // (tiling.positions * OC * C)))
    return split_tile_rows(rows, count, tiling.positions * OC * C * rows * TW)


@njit(cache=True, nogil=True)
def _output_gradient_transform(gy, dM, TH, TW, first_row, stop_row):
    # dM[4*xi + nu, o, q] = (A gy_tile A^T)[xi, nu] for the 2x2 block gy_tile of gy[n, o] at output
    # (2*th, 2*tw), for the tiles q of _input_transform (q = (row - first_row) * (TW + 1) + tw,
    # row = n * TH + th); the spare tile of each row, and outputs past OH, OW, are zero.
    # With A = [[1, 0], [1, 1], [1, -1], [0, -1]] and the block [[a, b], [c, d]]:
    # A gy = rows a b / a+c b+d / a-c b-d / -c -d, then each row r = (r0, r1) times A^T is
    # (r0, r0 + r1, r0 - r1, -r1).
    # Laid out as _input_transform: A gy along h for every tile of the chunk first, the tiles'
    # first and second columns apart, then each of dM's 16 rows in one long loop. Writing a tile's
    # 16 values at a time ran 10x slower (3x3 64->64 at 56x56, batch 8: 20 ms): the 16 rows of dM,
    # OC * tiles values apart, evicted each other from the cache.
    OC = gy.shape[1]
    OH, OW = gy.shape[2], gy.shape[3]
    pitch = TW + 1
    tiles = (stop_row - first_row) * pitch
    strip = np.zeros((2, 2 * pitch), dtype=gy.dtype)  # a tile row's 2 output rows; columns from OW on stay 0
    first = np.empty((4, tiles), dtype=gy.dtype)  # (A gy)[xi, 0] of every tile
    second = np.empty((4, tiles), dtype=gy.dtype)  # (A gy)[xi, 1]
    for o in range(OC):
        for row in range(first_row, stop_row):
            n, th = row // TH, row % TH
            oh = 2 * th
            for w in range(OW):
                strip[0, np.uint64(w)] = gy[n, o, oh, np.uint64(w)]
            if oh + 1 < OH:
                for w in range(OW):
                    strip[1, np.uint64(w)] = gy[n, o, oh + 1, np.uint64(w)]
            else:
                for w in range(OW):
                    strip[1, np.uint64(w)] = 0
            q0 = (row - first_row) * pitch
            for tw in range(pitch):
                u, e, f = np.uint64(q0 + tw), np.uint64(2 * tw), np.uint64(2 * tw + 1)
                first[0, u], second[0, u] = strip[0, e], strip[0, f]
                first[1, u], second[1, u] = strip[0, e] + strip[1, e], strip[0, f] + strip[1, f]
                first[2, u], second[2, u] = strip[0, e] - strip[1, e], strip[0, f] - strip[1, f]
                first[3, u], second[3, u] = -strip[1, e], -strip[1, f]
        for xi in range(4):  # then times A^T along w
            for q in range(tiles):
                dM[4 * xi + 0, o, np.uint64(q)] = first[xi, np.uint64(q)]
            for q in range(tiles):
                dM[4 * xi + 1, o, np.uint64(q)] = first[xi, np.uint64(q)] + second[xi, np.uint64(q)]
            for q in range(tiles):
                dM[4 * xi + 2, o, np.uint64(q)] = first[xi, np.uint64(q)] - second[xi, np.uint64(q)]
            for q in range(tiles):
                dM[4 * xi + 3, o, np.uint64(q)] = -second[xi, np.uint64(q)]


@njit(cache=True, nogil=True)
def _weight_gradient_transform(shares, gW, start, stop):
    # gW[o, c] = G^T dU[:, o, c] G for o in [start, stop), where dU = the sum of the chunks' shares
    # (added in chunk order, so the bits do not depend on the threads) and its 16 values form the
    # 4x4 matrix u[xi, nu] = dU[4*xi + nu]. G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0],
    # [0, 1/2, 1/2, 1]]: first t = G^T u (3x4), then each row of t times G. One output channel's
    # 16 rows of dU are summed into `u` first, along c, so every loop reads and writes rows.
    count, _, OC, C = shares.shape
    half = shares.dtype.type(0.5)
    u = np.empty((16, C), dtype=shares.dtype)
    t = np.empty((3, 4), dtype=shares.dtype)
    for o in range(start, stop):
        for p in range(16):
            for c in range(C):
                u[p, c] = shares[0, p, o, c]
            for k in range(1, count):
                for c in range(C):
                    u[p, c] += shares[k, p, o, c]
        for c in range(C):
            for nu in range(4):
                u0, u1, u2, u3 = u[nu, c], u[4 + nu, c], u[8 + nu, c], u[12 + nu, c]
                t[0, nu] = u0 + (u1 + u2) * half
                t[1, nu] = (u1 - u2) * half
                t[2, nu] = (u1 + u2) * half + u3
            for i in range(3):
                gW[o, c, i, 0] = t[i, 0] + (t[i, 1] + t[i, 2]) * half
                gW[o, c, i, 1] = (t[i, 1] - t[i, 2]) * half
                gW[o, c, i, 2] = (t[i, 1] + t[i, 2]) * half + t[i, 3]


@njit(cache=True, nogil=True)
def _weight_gradient_chunk(gemm, x, gy, V, dM, share, by_input_channels, PH, PW, TH, TW, first_row, stop_row):
    # One chunk of winograd_conv2d_weight_gradient, tile rows [first_row, stop_row), in one nogil
    # call: its two transforms and its 16 products by the gemm at address `gemm` (NumPy's OpenBLAS,
    # see cpu_blas: the products np.matmul makes there), share[p] = V[p] dM[p]^T (16, C, OC) where
    # by_input_channels, else dM[p] V[p]^T (16, OC, C). V (16, C, tiles), dM (16, OC, tiles).
    _input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
    _output_gradient_transform(gy, dM, TH, TW, first_row, stop_row)
    first, second = (V, dM) if by_input_channels else (dM, V)  # share[p] = first[p] second[p]^T
    for p in range(16):
        _product(gemm, first[p], False, second[p], True, share[p])


class Tiling(NamedTuple):
    """One Winograd algorithm for the weight gradient: its positions (the domain's size), its tile
    counts, its transforms and its nogil chunk."""
    positions: int
    tile_counts: Callable
    input_transform: Callable
    output_gradient_transform: Callable
    weight_gradient_chunk: Callable
    weight_gradient_transform: Callable


TILINGS = {
    2: Tiling(16, tile_counts, _input_transform, _output_gradient_transform, _weight_gradient_chunk,
              _weight_gradient_transform),
    4: Tiling(cpu_winograd4x4.POSITIONS, cpu_winograd4x4.tile_counts, cpu_winograd4x4._input_transform,
              f4x4._output_gradient_transform, f4x4._weight_gradient_chunk, f4x4._weight_gradient_transform),
}


def winograd_conv2d_weight_gradient(gy, x, PH, PW, outputs_per_tile=2):
    """dL/dW (OC, C, 3, 3) of y = conv2d(x, W) at stride 1, dilation 1, one group, for the output
    gradient gy (N, OC, OH, OW), by F(2x2, 3x3), or F(4x4, 3x3) with outputs_per_tile 4
    (tinycnn.kernels.cpu_winograd4x4_backward): as the reference's gW up to round-off."""
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    tiling = TILINGS[outputs_per_tile]
    P = tiling.positions
    N, C = x.shape[:2]
    OC, OH, OW = gy.shape[1:]
    TH, TW = tiling.tile_counts(OH, OW)
    chunks = weight_gradient_chunks(N, C, OC, OH, OW, outputs_per_tile)
    # Each share is (P, OC, C), made as dM V^T; or, where there are more input than output
    # channels, as its transpose V dM^T, (P, C, OC), and read through a transposed view: OpenBLAS
    # runs a product with a short result side (DenseNet's 32 output channels) 1.4x faster as the
    # columns than as the rows of the result (32x128 over 1024 tiles: 30 against 43 GMAC/s on one
    # core; 64x64 the same either way).
    by_input_channels = C > OC
    count = max(1, len(chunks))  # an empty batch: no chunk, and gW zero
    if by_input_channels:
        products = np.zeros((count, P, C, OC), dtype=x.dtype)
        shares = products.transpose(0, 1, 3, 2)
    else:
        products = shares = np.zeros((count, P, OC, C), dtype=x.dtype)
    chunk_index = {start: k for k, (start, _) in enumerate(chunks)}
    gemm = cpu_blas.gemm_address(x.dtype)  # 0 where NumPy's BLAS cannot be called by address
    # One workspace (a chunk's V and dM) per thread, handed from chunk to chunk (see the forward).
    most_tiles = max((stop - start) * (TW + 1) for start, stop in chunks) if chunks else 0
    free_workspaces = [(np.empty(P * C * most_tiles, dtype=x.dtype), np.empty(P * OC * most_tiles, dtype=x.dtype))
                       for _ in range(min(get_num_threads(), len(chunks)))]

    def run(first_row, stop_row):
        tiles = (stop_row - first_row) * (TW + 1)
        V_memory, dM_memory = free_workspaces.pop()  # list.pop and append are atomic under the GIL
        V = V_memory[:P * C * tiles].reshape(P, C, tiles)
        dM = dM_memory[:P * OC * tiles].reshape(P, OC, tiles)
        if gemm:  # the steps below in one nogil call (see cpu_blas)
            tiling.weight_gradient_chunk(gemm, x, gy, V, dM, products[chunk_index[first_row]], by_input_channels,
                                         PH, PW, TH, TW, first_row, stop_row)
        else:
            tiling.input_transform(x, V, PH, PW, TH, TW, first_row, stop_row)
            tiling.output_gradient_transform(gy, dM, TH, TW, first_row, stop_row)
            # one OpenBLAS product (OC, tiles) x (tiles, C) per position of the Winograd domain, or
            # its transpose (C, tiles) x (tiles, OC): first second^T, as in _weight_gradient_chunk
            first, second = (V, dM) if by_input_channels else (dM, V)
            np.matmul(first, second.transpose(0, 2, 1), out=products[chunk_index[first_row]])
        free_workspaces.append((V_memory, dM_memory))

    run_chunks(run, chunks)
    gW = np.empty((OC, C, 3, 3), dtype=x.dtype)
    # the shares' sum and G^T dU G, by output channels on every thread
    parallel_range(lambda start, stop: tiling.weight_gradient_transform(shares, gW, start, stop), OC,
                   P * C * len(shares))
    return gW
