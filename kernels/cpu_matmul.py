"""Matrix products for the Numba backend: tinycnn.kernels.cpu.matmul, which splits a big product
into one single-threaded OpenBLAS product per kernel thread, and _small_product, a Numba loop for
the products with a tiny result (conv2d's weight gradients in LeNet's first layers) where OpenBLAS
gained nothing from the threads.
"""
import numpy as np
from numba import njit

from tinycnn.kernels.parallel import run_chunks, split

# A product of fewer multiply-adds than PRODUCT_SERIAL stays in one piece on the calling thread;
# a bigger one is cut into PRODUCT_CHUNKS pieces, one per core of this project's 2-core machine
# (conv2d's chunks, in tinycnn.kernels.cpu_conv, use the same two numbers).
# A pool thread takes 50-100 microseconds to wake, about what 8 M multiply-adds take on one core,
# so smaller products gain nothing from a second thread (nor since the helpers spin: see
# tinycnn.kernels.parallel.SERIAL_WORK). Training steps, interleaved with torch's
# on a quiet machine (min of 5 rounds of 10 steps), with 2 M / 8 M / 16 M as the limit: LeNet
# batch 16 4.49 / 4.04 / 4.02 ms, batch 64 9.51 / 9.25 / 9.14, ResNet-18 on 32x32, batch 32,
# 98.9 / 95.8 / 96.5.
PRODUCT_CHUNKS = 2
PRODUCT_SERIAL = 1 << 23  # multiply-adds below which a layer's products stay in one piece


def matmul(a, b):
    """a @ b for 2-D a (M, K) and b (K, N). OpenBLAS runs on one thread (see tinycnn._threading),
    so a big product is split into PRODUCT_CHUNKS products, one per thread: by rows of a where a
    has many, else by columns of b. Measured on LeNet's fully connected layer: (64, 800) x
    (800, 500) took 0.47 ms whole, 0.33 ms for half its 64 rows (each half still reads all of b),
    0.26 ms for half its columns; its weight gradient (500, 64) x (64, 800) ran 0.36 ms whole, 0.30
    split by rows and 0.40 split by columns (written into strided halves of the result)."""
    M, K = a.shape
    N = b.shape[1]
    if K == 1:
        # An outer product (a fully connected layer's weight gradient at batch 1): each entry is
        # one product, so the broadcast multiply gives the same values as OpenBLAS's gemm, which
        # took 0.42 ms for LeNet's (500, 1) x (1, 800) against 0.15 ms for the multiply.
        return a * b
    if M * K * N < PRODUCT_SERIAL or max(M, N) < 2:
        return a @ b
    out = np.empty((M, N), dtype=np.result_type(a.dtype, b.dtype))
    by_rows = M >= 128 or N < 2
    if by_rows:
        def run(start, stop):
            np.matmul(a[start:stop], b, out=out[start:stop])
    else:
        def run(start, stop):
            np.matmul(a, b[:, start:stop], out=out[:, start:stop])
    size = M if by_rows else N
    run_chunks(run, split(size, -(-size // PRODUCT_CHUNKS)))
    return out


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _small_product(a, b, out):
    # out[m, n] = sum over l of a[m, l] * b[n, l], for a small out and a long l. Blocks of 4x2
    # outputs share their loads; reassociation lets the sums run as vectors along l.
    M, L = a.shape
    N = b.shape[0]
    for m0 in range(0, M, 4):
        for n0 in range(0, N, 2):
            if m0 + 4 <= M and n0 + 2 <= N:
                s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = a.dtype.type(0)
                for l in range(L):
                    b0, b1 = b[n0, l], b[n0 + 1, l]
                    a0, a1, a2, a3 = a[m0, l], a[m0 + 1, l], a[m0 + 2, l], a[m0 + 3, l]
                    s00 += a0 * b0
                    s01 += a0 * b1
                    s10 += a1 * b0
                    s11 += a1 * b1
                    s20 += a2 * b0
                    s21 += a2 * b1
                    s30 += a3 * b0
                    s31 += a3 * b1
                out[m0, n0], out[m0, n0 + 1], out[m0 + 1, n0], out[m0 + 1, n0 + 1] = s00, s01, s10, s11
                out[m0 + 2, n0], out[m0 + 2, n0 + 1], out[m0 + 3, n0], out[m0 + 3, n0 + 1] = s20, s21, s30, s31
            else:  # the edge of out
                for m in range(m0, min(m0 + 4, M)):
                    for n in range(n0, min(n0 + 2, N)):
                        total = a.dtype.type(0)
                        for l in range(L):
                            total += a[m, l] * b[n, l]
                        out[m, n] = total
