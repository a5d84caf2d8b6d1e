"""Matrix products from inside Numba code, for the Numba backend: NumPy's own OpenBLAS, called by
address, so that a chunk of a kernel can run its loops and its products in one nogil call.

Why. A chunk that alternates Numba loops and `np.matmul` goes back to Python between them, and
each time it needs the GIL again. With two threads, the other one often holds it (for its own
chunk's Python), and a thread that waits for the GIL sleeps: about 50 microseconds to wake on this
project's virtual machine. The tap products' backward (kernels/cpu_conv_taps.py) makes a dozen
such calls a chunk; as one nogil call it ran 8-11% faster (3x3 128->128 at 4x4, batch 32: 2.25 ->
2.00 ms on two threads, 3.49 -> 3.22 on one, where the Python between the calls costs too).
Winograd's forward (kernels/cpu_winograd.py), three calls a chunk, ran 4-12% faster so, its
weight gradient 1-3%; conv2d's im2col chunks (kernels/cpu_conv_chunks.py), ResNet-50's inference
5%, DenseNet-121's training step 3%.

How. NumPy's wheels link OpenBLAS built with 64-bit integers and its symbols renamed (scipy-openblas:
`scipy_cblas_sgemm64_`). threadpoolctl, which tinycnn already uses to limit that library to one
thread, says where the loaded copy lies; ctypes finds the function's address there; and
`_cblas_gemm` is a Numba intrinsic that calls whatever function lies at an address it is given as
an argument, so the compiled kernels hold no address and stay in Numba's on-disk cache. It is the
same library and the same sgemm that `np.matmul` calls, on the same single thread: the same bits,
but where np.matmul makes a one-row product by gemv, in another order.

The kernels call `_product`, which takes arrays (or views) rather than addresses, derives the
dimensions and leading dimensions from their shapes and strides, and checks them before BLAS reads
or writes through the addresses.

Where NumPy's BLAS is something else (a NumPy built against MKL, Accelerate or a system OpenBLAS),
`gemm_address` returns 0 and the kernels keep their Python chunks with `np.matmul`.
"""
import ctypes
import functools
import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# CBLAS's enums (cblas.h)
ROW_MAJOR = 101
NO_TRANSPOSE, TRANSPOSE = 111, 112

ENABLED = True  # False: every caller takes its np.matmul path (the tests compare the two)

# The symbols of NumPy's scipy-openblas build (64-bit integers), by dtype
_SYMBOLS = {np.dtype(np.float32): "scipy_cblas_sgemm64_", np.dtype(np.float64): "scipy_cblas_dgemm64_"}


@functools.lru_cache(maxsize=None)
def _numpy_blas():
    """NumPy's loaded BLAS library (ctypes.CDLL), or None where it is not the scipy-openblas build."""
    from threadpoolctl import threadpool_info
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # make sure NumPy's BLAS is loaded
    numpy_libs = os.path.dirname(os.path.dirname(np.__file__)) + os.sep + "numpy.libs" + os.sep
    for library in threadpool_info():
        if library.get("internal_api") == "openblas" and library["filepath"].startswith(numpy_libs):
            loaded = ctypes.CDLL(library["filepath"])  # the copy already loaded: the same library
            if all(hasattr(loaded, symbol) for symbol in _SYMBOLS.values()):
                return loaded
    return None


def gemm_address(dtype):
    """The address of NumPy's OpenBLAS cblas_?gemm for float32 or float64, or 0 where there is none
    to call (another BLAS, another dtype, or ENABLED off)."""
    return _gemm_address(np.dtype(dtype), ENABLED)


@functools.lru_cache(maxsize=None)
def _gemm_address(dtype, enabled):
    # Kept: every conv2d call asks, and ctypes' cast took 5-10 us of it (0.4% of a ResNet-18 step).
    library = _numpy_blas() if enabled else None
    if library is None or dtype not in _SYMBOLS:
        return 0
    return ctypes.cast(getattr(library, _SYMBOLS[dtype]), ctypes.c_void_p).value


@intrinsic
def _cblas_gemm(typing_context, address, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm at `address` (64-bit integers), row-major: C = alpha op(A) op(B) + beta C, C (M, N)
    with leading dimension ldc, op(A) (M, K), op(B) (K, N), op a transpose where trans_* is
    TRANSPOSE. a, b and c are the addresses of the first elements (arr.ctypes.data plus the offset
    in bytes); alpha's type (float32 or float64) says which gemm that is."""
    integer = types.intp
    signature = types.void(integer, integer, integer, integer, integer, integer, alpha, types.uintp, integer,
                           types.uintp, integer, alpha, types.uintp, integer)

    def codegen(context, builder, signature, arguments):
        address, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc = arguments
        float_type = context.get_value_type(signature.args[6])
        enum, int64, pointer = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [enum, enum, enum, int64, int64, int64, float_type, pointer,
                                                        int64, pointer, int64, float_type, pointer, int64])
        function = builder.inttoptr(address, function_type.as_pointer())
        builder.call(function, [
            ir.Constant(enum, ROW_MAJOR), builder.trunc(trans_a, enum), builder.trunc(trans_b, enum), M, N, K,
            alpha, builder.inttoptr(a, pointer), lda, builder.inttoptr(b, pointer), ldb,
            beta, builder.inttoptr(c, pointer), ldc])
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True, nogil=True)
def _product(gemm, a, a_transposed, b, b_transposed, c):
    # c = op(a) op(b) by the sgemm or dgemm at address `gemm` (gemm_address), op a transpose where
    # *_transposed: _cblas_gemm on arrays rather than raw addresses, for every kernel that calls
    # BLAS from Numba code. a, b and c are 2-D arrays, or views of one, whose rows may lie apart
    # but whose elements are contiguous along a row; their dimensions and leading dimensions come
    # from their shapes and strides, checked first, as BLAS reads and writes through their
    # addresses, in the dtype of `gemm`'s alpha: c's (float32 or float64, told apart by their sizes).
    if a.itemsize != c.itemsize or b.itemsize != c.itemsize:
        raise TypeError("a product by cpu_blas has operands of different dtypes")
    M, N = c.shape
    K = a.shape[0] if a_transposed else a.shape[1]
    if ((a.shape[1], a.shape[0]) if a_transposed else a.shape) != (M, K) or \
            ((b.shape[1], b.shape[0]) if b_transposed else b.shape) != (K, N):
        raise ValueError("a product by cpu_blas has operands of mismatched shapes")
    if not (_rows_contiguous(a) and _rows_contiguous(b) and _rows_contiguous(c)):
        raise ValueError("a product by cpu_blas has an operand not contiguous along its rows")
    if M == 0 or N == 0:
        return
    one, zero = c.dtype.type(1), c.dtype.type(0)
    _cblas_gemm(gemm, TRANSPOSE if a_transposed else NO_TRANSPOSE, TRANSPOSE if b_transposed else NO_TRANSPOSE,
                M, N, K, one, a.ctypes.data, _leading(a), b.ctypes.data, _leading(b), zero, c.ctypes.data, _leading(c))


@njit(cache=True, nogil=True)
def _rows_contiguous(matrix):
    return matrix.shape[1] <= 1 or matrix.strides[1] == matrix.itemsize


@njit(cache=True, nogil=True)
def _leading(matrix):
    # BLAS's leading dimension of a row-major matrix: the distance between rows, in elements (at
    # least the row's length, which is what a single row's may be taken as)
    return max(matrix.strides[0] // matrix.itemsize, matrix.shape[1], 1)
