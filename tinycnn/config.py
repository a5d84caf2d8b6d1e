"""Global switches of tinycnn, each a plain attribute with a tiny context manager.

    >>> with tinycnn.no_grad():          # no graph is recorded
    ...     y = model(x)
    >>> with tinycnn.config.using(check_nan=True):
    ...     loss = model(x)               # a NaN reaching any op raises ValueError

`shape_only` lets the costly ops (convolution, matrix products) return zeros of the right shape
without computing them, so a summary of a 224x224 VGG is instant.

`kernels` chooses the implementation behind the primitives in tinycnn.kernels: "auto" picks Numba
for NumPy arrays and CuPy for CuPy arrays; "numpy" forces the readable NumPy reference (on CPU).
The environment variable TINYCNN_KERNELS sets its starting value.
"""
import contextlib
import os

enable_backprop = True
check_nan = False
shape_only = False
kernels = os.environ.get("TINYCNN_KERNELS", "auto").strip().lower() or "auto"

_CHOICES = {"kernels": ("auto", "numpy", "numba")}


def _validate(name, value):
    if name not in ("enable_backprop", "check_nan", "shape_only", "kernels"):
        raise AttributeError(f"tinycnn.config has no setting {name!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"tinycnn.config.{name}: expected one of {_CHOICES[name]}, got {value!r}")


_validate("kernels", kernels)


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


def no_grad():
    """Context manager: operations inside record no graph, as torch.no_grad()."""
    return using(enable_backprop=False)


def enable_grad():
    """Context manager: re-enable graph recording inside a no_grad() block."""
    return using(enable_backprop=True)
