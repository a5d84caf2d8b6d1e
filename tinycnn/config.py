"""Global switches of tinycnn, each a plain attribute with a tiny context manager.

    >>> with tinycnn.no_grad():          # no graph is recorded
    ...     y = model(x)
    >>> with tinycnn.config.using(check_nan=True):
    ...     loss = model(x)               # a NaN reaching any op raises ValueError

`shape_only` lets the costly ops (convolution, matrix products) return zeros of the right shape
without computing them, so a summary of a 224x224 VGG is instant.

`kernels` chooses the implementation behind the primitives in tinycnn.kernels: "auto" picks Numba
for NumPy arrays and CuPy for CuPy arrays; "numba" insists on Numba (a CuPy array is an error);
"numpy" forces the readable NumPy reference (on CPU). The environment variable TINYCNN_KERNELS sets
its starting value; an unknown value there or in set_kernels/using is a ValueError naming the
choices.

`tune_allocator()` is an explicit, process-wide opt-in (the CLI's train command makes it): glibc's
malloc then keeps freed large blocks for reuse (see tinycnn._threading).
"""
import contextlib
import os

enable_backprop = True
check_nan = False
shape_only = False

_CHOICES = {"kernels": ("auto", "numpy", "numba")}
_SWITCHES = ("enable_backprop", "check_nan", "shape_only")  # True or False


def _validate(name, value):
    if name not in _SWITCHES and name not in _CHOICES:
        raise AttributeError(f"tinycnn.config has no setting {name!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"tinycnn.config.{name}: expected one of {_CHOICES[name]}, got {value!r}")
    if name in _SWITCHES and not isinstance(value, bool):
        raise TypeError(f"tinycnn.config.{name}: expected True or False, got {value!r}")


def _kernels_from_environment():
    value = os.environ.get("TINYCNN_KERNELS", "")
    choice = value.strip().lower() or "auto"
    if choice not in _CHOICES["kernels"]:
        raise ValueError(f"tinycnn.config: TINYCNN_KERNELS must be one of {_CHOICES['kernels']}, got {value!r}")
    return choice


kernels = _kernels_from_environment()


@contextlib.contextmanager
def using(**settings):
    """Set config attributes for the duration of a `with` block, then restore them."""
    module = globals()
    for name, value in settings.items():
        _validate(name, value)
    old = {name: module[name] for name in settings}
    module.update(settings)
    try:
        yield
    finally:
        module.update(old)


def set_kernels(name):
    """Choose the kernel implementation for the rest of the process ("auto", "numpy", "numba")."""
    global kernels
    _validate("kernels", name)
    kernels = name


def tune_allocator():
    """Make glibc's malloc keep freed blocks of any size for reuse, for the rest of the process:
    a training step no longer gets fresh, zero-filled pages from the system for its big buffers
    each time, at the price of keeping the peak memory until exit. Returns who set the thresholds:
    'tinycnn', or why not ('user': MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set; 'unset':
    TINYCNN_NO_THREAD_SETTINGS=1; 'not glibc'). Details and measurements in tinycnn._threading."""
    from tinycnn import _threading
    return _threading.tune_allocator()


def no_grad():
    """Context manager: operations inside record no graph, as torch.no_grad()."""
    return using(enable_backprop=False)


def enable_grad():
    """Context manager: re-enable graph recording inside a no_grad() block."""
    return using(enable_backprop=True)
