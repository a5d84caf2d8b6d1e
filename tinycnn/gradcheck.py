"""Finite-difference gradient checking, the proof that a backward matches its forward.

`gradcheck` compares, for every input that requires a gradient, the analytic gradient from
`backward` with the central difference (f(x + eps) - f(x - eps)) / 2 eps, in float64. Outputs are
reduced to one scalar with fixed random weights, L = sum_k w_k * y_k, so one backward gives the
whole analytic gradient and a wrong entry anywhere in the Jacobian changes it.
"""
import numpy

from tinycnn import backend
from tinycnn.autograd import Tensor


class GradcheckError(AssertionError):
    """The analytic and numeric gradients differ; the message names where and by how much."""


def weighted_loss(outputs, weights):
    """L = sum_k sum(weights_k * outputs_k) as a Tensor in the graph, over the outputs that require
    grad (None if none does): backward from L gives every input gradcheck's analytic gradient."""
    loss = None
    for y, w in zip(outputs, weights):
        if y is not None and y.requires_grad:
            xp = backend.get_array_module(y.data)
            term = (y * Tensor(xp.asarray(w, dtype=y.dtype))).sum()
            loss = term if loss is None else loss + term
    return loss


def numeric_gradient(fn, inputs, i, weights, eps=1e-6):
    """dL/d(inputs[i]) by central differences, for L = sum_k weights_k * fn(*inputs)_k.

    Each element of the input is moved by +eps and -eps in turn: (L(x + eps) - L(x - eps)) / 2 eps.
    x.data is perturbed in place through a full index: x.data.reshape(-1) would be a copy for a
    non-contiguous array (a transposed or sliced leaf), and perturbing a copy leaves L unchanged.
    """
    x = inputs[i]
    numeric = numpy.zeros(x.shape)
    for index in numpy.ndindex(*x.shape):
        original = x.data[index].item()
        x.data[index] = original + eps
        plus = _weighted_sum(_outputs(fn, inputs), weights)
        x.data[index] = original - eps
        minus = _weighted_sum(_outputs(fn, inputs), weights)
        x.data[index] = original
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric


def _outputs(fn, inputs):
    out = fn(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _weighted_sum(outputs, weights):
    total = 0.0
    for y, w in zip(outputs, weights):
        if y is not None and y.dtype.kind == "f":
            total += float((backend.to_cpu(y.data).astype(numpy.float64) * w).sum())
    return total


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Check `fn`'s gradients with respect to every input Tensor that has requires_grad=True.

    `fn(*inputs)` returns a Tensor or a tuple of Tensors. Inputs checked must be float64 (float32
    round-off is larger than the differences measured). Passes when, element by element,
    |numeric - analytic| <= atol + rtol * |numeric|. On failure raises GradcheckError naming the
    input, the worst element and both values (or returns False with raise_exception=False).
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != numpy.float64:
            raise TypeError(f"gradcheck: input {i} must be float64 for a reliable check, got {inputs[i].dtype}")

    outputs = _outputs(fn, inputs)
    rng = numpy.random.default_rng(seed)
    weights = [rng.standard_normal(y.shape) if y is not None else None for y in outputs]

    for i in checked:
        inputs[i].grad = None
    loss = weighted_loss(outputs, weights)
    if loss is None:
        raise ValueError("gradcheck: no output depends on an input that requires grad")
    loss.backward()

    for i in checked:
        x = inputs[i]
        analytic = backend.to_cpu(x.grad) if x.grad is not None else numpy.zeros(x.shape)
        numeric = numeric_gradient(fn, inputs, i, weights, eps)
        error = numpy.abs(numeric - analytic) - (atol + rtol * numpy.abs(numeric))
        if (error > 0).any() or not numpy.isfinite(analytic).all():
            worst = numpy.unravel_index(numpy.nanargmax(numpy.where(numpy.isfinite(error), error, numpy.inf)), x.shape)
            message = (f"gradcheck: gradient of input {i} (shape {x.shape}) differs at element {tuple(int(k) for k in worst)}: "
                       f"numeric {numeric[worst]:.8g}, analytic {analytic[worst]:.8g} "
                       f"(atol {atol}, rtol {rtol}; {int((error > 0).sum())} of {x.size} elements out of tolerance)")
            if raise_exception:
                raise GradcheckError(message)
            return False
    return True
