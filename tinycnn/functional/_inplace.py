"""When an op called with `inplace=True` really writes into its input's array.

torch always writes in place, and gives every tensor a version counter so that a backward that
needs a value overwritten since (ReLU's saved output, a conv's saved input) fails loudly at backward.
tinycnn instead checks before writing: relu and add write in place unless

- a Function of a recorded graph saved, for its backward, an array in the same memory (the input
  itself, a view of it, or the array it is a view of: autograd.kept_for_backward). Then they
  compute out of place, as if inplace were False: same values, a new array, the input left as it
  was. ReLU's output saved by ReLU, or the image a trainable first conv keeps for its weight's
  gradient, are never overwritten, with or without no_grad;
- the input is a leaf that requires a gradient (a parameter, or data with requires_grad=True),
  while a graph is recorded: its gradient belongs to that very array (torch raises there).

So in training a ResNet block's `relu(bn(conv(x)))` and `out += identity` write into BatchNorm's
output, which no backward keeps (BatchNorm's keeps its input), and allocate nothing, as in torch;
and the graph is the out-of-place one, each op with its own GraphValue. The result is a Tensor
sharing the input's array, so the input Tensor shows the new values, as torch's does.

leaky_relu writes in place only when no graph is recorded at all (no_grad, or no input requires a
gradient): its in-place forward keeps nothing for a backward.
"""
from tinycnn import backend, config
from tinycnn.autograd import Tensor, kept_for_backward

__all__ = ["check_writeable", "writes_in_place"]


def writes_in_place(inplace, *inputs, while_recording=True):
    """True when an op asked for `inplace` may overwrite its first input (see the module
    docstring); while_recording=False allows it only when no graph is recorded for the call."""
    if not inplace:
        return False
    recording = config.enable_backprop and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
    if recording and not while_recording:
        return False
    target = inputs[0]
    array = target.data if isinstance(target, Tensor) else target
    if kept_for_backward(array):
        return False
    return not (recording and isinstance(target, Tensor) and target.requires_grad and target.is_leaf)


def check_writeable(op, array):
    """Raise a ValueError naming `op` if `array` cannot be written (a NumPy broadcast view, a
    read-only buffer): an in-place op would fail deep inside a kernel, or Numba would refuse it."""
    if not backend.is_gpu_array(array) and not array.flags.writeable:
        raise ValueError(f"{op}: inplace=True writes into the input, but its array of shape {tuple(array.shape)} "
                         "is read-only (a broadcast view or a read-only buffer?); pass inplace=False or a copy")
