"""The dtype check every floating-point op makes at its entry, so a wrong dtype fails with the op's
name and what to do, not deep inside a kernel (Numba has no float16 kernels; an integer batch
would be normalised into silent zeros)."""
import numpy

__all__ = ["check_floating"]

# The dtypes tinycnn's kernels compute in (NumPy reference, Numba, CuPy).
FLOATING_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def check_floating(op, **arrays):
    """Raise a TypeError naming `op` unless every array given by keyword (None skipped: an absent
    bias) is float32 or float64, all of one dtype.

        check_floating("conv2d", input=x, weight=W, bias=b)
    """
    first_name, first_dtype = None, None
    for name, array in arrays.items():
        if array is None:
            continue
        dtype = numpy.dtype(array.dtype)
        if dtype == numpy.float16:
            raise TypeError(f"{op}: {name} has dtype float16, which tinycnn does not compute in (its kernels "
                            "are float32 and float64); convert it with .float() or .to(numpy.float32)")
        if dtype not in FLOATING_DTYPES:
            raise TypeError(f"{op}: expected a floating-point {name} (float32 or float64), got dtype {dtype}; "
                            "convert it with .float()")
        if first_dtype is None:
            first_name, first_dtype = name, dtype
        elif dtype != first_dtype:
            raise TypeError(f"{op}: {first_name} and {name} must have the same dtype, got {first_dtype} and "
                            f"{dtype}; call model.double() (or .to(numpy.float64)) to run a model in float64, "
                            "or convert the input with .float() for a float32 model")
