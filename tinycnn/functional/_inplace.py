"""When an op called with `inplace=True` really writes into its input's array.

torch always writes in place, and gives every tensor a version counter so that a backward that
needs a value overwritten since (ReLU's saved output, a conv's saved input) fails loudly. tinycnn
has no version counters, so it writes in place only when no graph is recorded for the call: under
`tinycnn.no_grad()`, or when no input requires a gradient (inference with frozen parameters). The
result is then a Tensor sharing the input's array, as torch's. While a graph is recorded (training),
the op computes out of place as if inplace were False: same values, a new array, the input left as
it was, and the graph exactly the out-of-place one.

What this rule cannot see, as torch's version counter would: an input that requires no gradient
but that a recorded op keeps for its backward (the image a trainable first conv keeps to compute
its weight's gradient). Overwriting such a tensor in place corrupts that gradient silently, where
torch raises at backward; so do not write in place into a tensor you passed to a recorded op.
"""
from tinycnn import backend, config
from tinycnn.autograd import Tensor

__all__ = ["check_writeable", "writes_in_place"]


def writes_in_place(inplace, *inputs):
    """True when an op asked for `inplace` may overwrite its first input: no graph is recorded,
    because backprop is off (no_grad) or no input is a Tensor that requires a gradient."""
    if not inplace:
        return False
    return not config.enable_backprop or not any(isinstance(x, Tensor) and x.requires_grad for x in inputs)


def check_writeable(op, array):
    """Raise a ValueError naming `op` if `array` cannot be written (a NumPy broadcast view, a
    read-only buffer): an in-place op would fail deep inside a kernel, or Numba would refuse it."""
    if not backend.is_gpu_array(array) and not array.flags.writeable:
        raise ValueError(f"{op}: inplace=True writes into the input, but its array of shape {tuple(array.shape)} "
                         "is read-only (a broadcast view or a read-only buffer?); pass inplace=False or a copy")
