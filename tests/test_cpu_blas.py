"""kernels/cpu_blas.py: NumPy's own OpenBLAS gemm, found by address and called from Numba code,
gives np.matmul's bits (it is the same function), in every transpose and on sub-blocks of bigger
arrays; where it cannot be called, the address is 0."""
import numpy as np
import pytest
from numba import njit

from tinycnn.kernels import cpu_blas
from tinycnn.kernels.cpu_blas import NO_TRANSPOSE, TRANSPOSE, _cblas_gemm
from support import numpy_blas_name


@njit(cache=False)
def _gemm(address, trans_a, trans_b, M, N, K, a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc):
    # C[c_offset:] = op(A[a_offset:]) op(B[b_offset:]) through the intrinsic, offsets in elements
    size = c.itemsize
    _cblas_gemm(address, trans_a, trans_b, M, N, K, c.dtype.type(1), a.ctypes.data + a_offset * size, lda,
                b.ctypes.data + b_offset * size, ldb, c.dtype.type(0), c.ctypes.data + c_offset * size, ldc)


def test_numpys_wheel_blas_is_found():
    # NumPy's wheels ship scipy-openblas, the library cpu_blas calls: on them an address must be
    # found, or every kernel would quietly keep its slower Python chunks.
    if numpy_blas_name() != "scipy-openblas":
        pytest.skip(f"NumPy built against {numpy_blas_name()}, not the wheels' scipy-openblas")
    assert cpu_blas.gemm_address(np.float32) and cpu_blas.gemm_address(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_a_gemm_by_address_gives_the_bits_of_np_matmul(dtype, trans_a, trans_b):
    address = cpu_blas.gemm_address(dtype)
    if not address:
        pytest.skip("NumPy's BLAS is not the scipy-openblas build")
    rng = np.random.default_rng(0)
    M, N, K = 37, 29, 53
    # A and B as blocks inside bigger arrays (leading dimension > width, first element offset), C too
    a_big = rng.uniform(-1, 1, (K + 3, M + 5) if trans_a else (M + 3, K + 5)).astype(dtype)
    b_big = rng.uniform(-1, 1, (N + 2, K + 4) if trans_b else (K + 2, N + 4)).astype(dtype)
    a_block = a_big[1:1 + K, 2:2 + M] if trans_a else a_big[1:1 + M, 2:2 + K]
    b_block = b_big[1:1 + N, 3:3 + K] if trans_b else b_big[1:1 + K, 3:3 + N]
    c_big = np.full((M + 1, N + 2), 7, dtype=dtype)
    _gemm(address, TRANSPOSE if trans_a else NO_TRANSPOSE, TRANSPOSE if trans_b else NO_TRANSPOSE, M, N, K,
          a_big, a_big.shape[1] + 2, a_big.shape[1], b_big, b_big.shape[1] + 3, b_big.shape[1],
          c_big, c_big.shape[1] + 1, c_big.shape[1])
    expected = np.matmul(a_block.T if trans_a else a_block, b_block.T if trans_b else b_block)
    assert np.array_equal(c_big[1:, 1:1 + N], expected)
    assert (c_big[0] == 7).all() and (c_big[1:, 0] == 7).all() and (c_big[1:, 1 + N:] == 7).all()  # nothing else


def test_no_address_where_there_is_nothing_to_call(monkeypatch):
    assert cpu_blas.gemm_address(np.float16) == 0
    assert cpu_blas.gemm_address(np.int64) == 0
    monkeypatch.setattr(cpu_blas, "ENABLED", False)
    assert cpu_blas.gemm_address(np.float32) == 0
