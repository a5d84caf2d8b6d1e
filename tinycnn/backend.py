"""The one place that decides between NumPy (CPU) and CuPy (GPU) arrays.

Ops never import CuPy: they ask `get_array_module(*arrays)` for `xp` and write `xp.zeros(...)`.
When CuPy is missing, `cupy_ndarray` is a stand-in class that no array is an instance of, so
`isinstance(a, cupy_ndarray)` needs no import guard anywhere.
"""
import numpy

try:
    import cupy

    cupy_ndarray = cupy.ndarray
except ImportError:  # CPU-only install
    cupy = None

    class cupy_ndarray:  # noqa: N801 - mirrors the real class name
        """Stand-in for cupy.ndarray when CuPy is not installed: nothing is an instance of it."""


class DeviceMismatchError(ValueError):
    """Raised when one operation receives arrays from both the CPU and the GPU."""


def gpu_available():
    """True when CuPy is installed and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDA driver missing or broken
        return False


def is_gpu_array(array):
    return isinstance(array, cupy_ndarray)


def device_of(array):
    """'gpu' for a CuPy array, 'cpu' for anything else."""
    return "gpu" if is_gpu_array(array) else "cpu"


def get_array_module(*arrays, where="operation"):
    """Return `cupy` if the arrays live on the GPU, `numpy` if on the CPU.

    None and Python scalars are ignored. Mixing devices raises DeviceMismatchError naming `where`.
    """
    if cupy is None:  # without CuPy every array is a CPU array: nothing to look at (ops call this
        return numpy  # 25 times in a LeNet training step, which at batch 1 lasts 1.5 ms)
    devices = {device_of(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if len(devices) > 1:
        shapes = ", ".join(f"{device_of(a)} {tuple(a.shape)}" for a in arrays if hasattr(a, "shape"))
        raise DeviceMismatchError(
            f"{where}: expected all inputs on one device, got a mix of CPU and GPU arrays ({shapes}); "
            "move them with .to('cpu') or .to('gpu')")
    return cupy if devices == {"gpu"} else numpy


def to_gpu(array):
    """Copy a NumPy array to the GPU (a CuPy array is returned as it is)."""
    if cupy is None:
        raise RuntimeError("to('gpu') needs CuPy: pip install 'tinycnn[gpu]' on a machine with CUDA")
    return cupy.asarray(array)


def to_cpu(array):
    """Copy a CuPy array to host memory (a NumPy array is returned as it is)."""
    if is_gpu_array(array):
        return cupy.asnumpy(array)
    return numpy.asarray(array)


def device_and_dtype(args, device=None, dtype=None):
    """(device, dtype) from the arguments of a torch-style `.to(...)` (Tensor.to and Module.to):
    a string naming a device ('cpu', 'gpu', 'cuda...') is the device, anything else the dtype;
    either may also come by keyword. None where not given."""
    for arg in args:
        if isinstance(arg, str) and (arg in ("cpu", "gpu") or arg.startswith("cuda")):
            device = arg
        else:
            dtype = arg
    return device, dtype


def to_device(array, device):
    if device == "gpu" or (isinstance(device, str) and device.startswith("cuda")):
        return to_gpu(array)
    if device == "cpu":
        return to_cpu(array)
    raise ValueError(f"to(): expected device 'cpu' or 'gpu', got {device!r}")
