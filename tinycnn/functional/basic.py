"""Fully connected layer, concatenation, the sum of several tensors and flattening."""
import numpy

from tinycnn import backend, kernels
from tinycnn.arithmetic import sum_to
from tinycnn.autograd import Function, as_tensor
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating
from tinycnn.functional._inplace import check_writeable, writes_in_place

__all__ = ["add", "cat", "concat", "flatten", "linear"]


class Linear(Function):
    """y = x W^T + b, with x (..., in), W (out, in), b (out,) -> y (..., out)."""

    explanation = Explanation(
        forward="y[n, o] = sum_i x[n, i] W[o, i] + b[o]   (y = x W^T + b; leading axes of x act as n)",
        backward="""
1. dy[n, o]/dx[n, i] = W[o, i], so gx[n, i] = sum_o gy[n, o] W[o, i]: gx = gy W.
2. dy[n, o]/dW[o, i] = x[n, i], and W is used by every row n, so the rows' gradients add up:
   gW[o, i] = sum_n gy[n, o] x[n, i]: gW = gy^T x.
3. dy[n, o]/db[o] = 1 for every row n: gb[o] = sum_n gy[n, o].""",
        saved="x and W, the inputs themselves (no copy): gW needs x (step 2), gx needs W (step 1).\n"
              "b is not kept: its gradient needs only gy.",
        kernels=("matmul",))
    examples = {"linear": Example(shape=(2, 5), inputs=lambda shape, rng: [(3, shape[-1]), (3,)])}

    def forward(self, x, W, b):
        self._check(x, W, b)
        self.save_for_backward(x, W)
        # As one product whatever the leading axes of x, computed as y^T = W x^T (out, batch) and
        # turned back: OpenBLAS ran that orientation 1.3-1.9x faster than x W^T for small batches
        # (LeNet's fc1, 800 -> 500, one thread: batch 4 95 against 180 us, 16 142 against 245, 64
        # 354 against 445).
        xp = backend.get_array_module(x)
        y = xp.ascontiguousarray(kernels.matmul(W, x.reshape(-1, W.shape[1]).T).T)
        if b is not None:
            y += b  # y is this op's own new array
        return y.reshape(x.shape[:-1] + W.shape[:1])

    def forward_shape_only(self, x, W, b):
        self._check(x, W, b)
        xp = backend.get_array_module(x)
        return xp.zeros(x.shape[:-1] + W.shape[:1], dtype=numpy.result_type(x.dtype, W.dtype))

    def backward(self, gy):
        # y_no = sum_i x_ni W_oi + b_o: dx = gy W, dW = gy^T x (summed over every leading axis
        # of x), db = gy summed over those axes.
        x, W = self.saved_arrays
        out_features, in_features = W.shape
        gy_rows = gy.reshape(-1, out_features)  # the leading axes are the batch, folded into one
        gx = kernels.matmul(gy_rows, W).reshape(x.shape) if self.needs_input_grad[0] else None
        gW = gb = None
        if self.needs_input_grad[1]:
            gW = kernels.matmul(gy_rows.T, x.reshape(-1, in_features))  # (out, in)
        if self.needs_input_grad[2]:
            gb = gy_rows.sum(axis=0)  # (out,)
        return gx, gW, gb

    @staticmethod
    def _check(x, W, b):
        check_floating("linear", input=x, weight=W, bias=b)
        if W.ndim != 2:
            raise ValueError(f"linear: expected a 2-D weight (out_features, in_features), got shape {tuple(W.shape)}")
        if x.ndim < 1 or x.shape[-1] != W.shape[1]:
            raise ValueError(f"linear: input of shape {tuple(x.shape)} has {x.shape[-1] if x.ndim else 0} features, "
                             f"but weight of shape {tuple(W.shape)} expects {W.shape[1]}")
        if b is not None and tuple(b.shape) != W.shape[:1]:
            raise ValueError(f"linear: expected a bias of shape {W.shape[:1]}, got {tuple(b.shape)}")


def linear(input, weight, bias=None):
    """Apply y = x W^T + b as torch.nn.functional.linear: input (..., in), weight (out, in)."""
    return Linear()(input, weight, bias)


class Concat(Function):
    """Join tensors along one axis; all other axes must agree."""

    explanation = Explanation(
        forward="y = [x_0, x_1, ...] joined along the axis: x_k fills the slice of y after the earlier inputs",
        backward="""
1. Each element of y is a copy of exactly one element of one input: dy/dx is 1 there, 0 elsewhere.
2. So input k's gradient is gy's slice where x_k was copied: gx_k = gy[..., start_k:start_k + size_k, ...]
   along the axis, start_k being the sum of the earlier inputs' sizes.""",
        saved="only each input's size along the axis (Python ints): no array.",
        kernels=("concatenate",))
    examples = {
        "concat": Example(shape=(2, 3, 4), inputs=lambda shape, rng: [(shape[0], 2) + shape[2:]],
                          options={"axis": 1}, as_list=True),
        "cat": Example(shape=(2, 3, 4), inputs=lambda shape, rng: [(shape[0], 2) + shape[2:]],
                       options={"dim": 1}, as_list=True),
    }

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        first = xs[0]
        if not -first.ndim <= self.axis < first.ndim:
            raise ValueError(f"concat: axis {self.axis} is out of range for {first.ndim}-D inputs")
        self.axis %= first.ndim
        for x in xs[1:]:
            others = [s for i, s in enumerate(x.shape) if i != self.axis]
            if x.ndim != first.ndim or others != [s for i, s in enumerate(first.shape) if i != self.axis]:
                raise ValueError(f"concat: expected shapes that agree except along axis {self.axis}, got "
                                 f"{', '.join(str(tuple(a.shape)) for a in xs)}")
        self.sizes = [x.shape[self.axis] for x in xs]
        return kernels.concatenate(xs, self.axis)

    def backward(self, gy):
        # Each input was copied into its own slice of y, so its gradient is that slice of gy.
        grads, start = [], 0
        for size, needed in zip(self.sizes, self.needs_input_grad):
            index = (slice(None),) * self.axis + (slice(start, start + size),)
            grads.append(gy[index] if needed else None)
            start += size
        return tuple(grads)


def concat(tensors, axis=1):
    """Concatenate a sequence of tensors along `axis` (default 1, the channel axis of NCHW)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: expected at least one tensor, got an empty sequence")
    return Concat(axis)(*tensors)


def cat(tensors, dim=0):
    """torch.cat: concatenate along `dim` (default 0, as PyTorch)."""
    return concat(tensors, axis=dim)


class AddN(Function):
    """The sum of any number of tensors in one op (residual and multi-branch joins); inputs
    broadcast against each other as in `a + b`."""

    explanation = Explanation(
        forward="y = x_0 + x_1 + ... (inputs broadcast against each other, as a + b)",
        backward="""
1. dy/dx_k = 1 for every input: each input receives gy as it is.
2. An input that was broadcast (a bias of shape (C,) added to (N, C)) was reused along the broadcast
   axes, so its gradient sums gy over them back to its own shape (arithmetic.sum_to).""",
        saved="only the inputs' shapes: no array.")
    examples = {"add": Example(shape=(2, 3, 4), inputs=lambda shape, rng: [shape, shape[-1:]])}

    def __init__(self, inplace=False):
        self.inplace = inplace  # sum into the first input's array; add() asks for it only where no backward needs it

    def forward(self, *xs):
        self.shapes = [x.shape for x in xs]
        if self.inplace:
            y = xs[0]
            check_writeable("add", y)
            for x in xs[1:]:
                kernels.add_in_place(y, x)  # x broadcast to y's shape (add() checked that it fits)
            return y
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        # A fresh array even for one input, so the output never aliases an input.
        return y.copy() if len(xs) == 1 else y

    def backward(self, gy):
        # d(sum_i x_i)/dx_i = 1: every input receives gy, summed back over broadcast axes.
        return tuple(sum_to(gy, shape) if needed else None
                     for shape, needed in zip(self.shapes, self.needs_input_grad))


def add(*tensors, inplace=False):
    """Sum several tensors with one op: add(a, b, c) or add([a, b, c]).

    inplace=True is torch's `a += b` (a residual block's `out += identity`; with more tensors
    `a += b; a += c`, in that order): the sum is written into the first tensor's array and the
    Tensor returned shares it, in training too, unless a recorded backward keeps that memory or the
    first tensor is a leaf that requires a gradient while a graph is recorded: then the sum is a new
    array and every input is left as it was (see functional/_inplace.py). Either way the result
    has the first tensor's shape and dtype: the others must broadcast to that shape (as torch's +=
    allows) and have that dtype, else ValueError or TypeError.
    """
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors:
        raise ValueError("add: expected at least one tensor, got none")
    if inplace:
        first = as_tensor(tensors[0])
        tensors = (first,) + tuple(as_tensor(t, like=first.data) for t in tensors[1:])
        _check_fits_into_first(tensors)
    return AddN(writes_in_place(inplace, *tensors))(*tensors)


def _check_fits_into_first(tensors):
    """add(inplace=True)'s rule, checked whether or not it then writes in place, so that the result
    never depends on whether a graph is recorded: every tensor broadcasts to the first's shape
    (trailing axes equal or 1, no more axes than the first), and all share its dtype."""
    first = tensors[0]
    for index, t in enumerate(tensors[1:], start=1):
        fits = t.ndim <= first.ndim and all(s in (1, f) for s, f in zip(t.shape[::-1], first.shape[::-1]))
        if not fits:
            raise ValueError(f"add: inplace=True writes into the first tensor, of shape {tuple(first.shape)}; "
                             f"tensor {index} of shape {tuple(t.shape)} does not broadcast to that shape")
        if t.dtype != first.dtype:
            raise TypeError(f"add: inplace=True writes into the first tensor, of dtype {first.dtype}; "
                            f"tensor {index} has dtype {t.dtype}")


class Flatten(Function):
    """Merge axes start_dim..end_dim (inclusive) into one."""

    explanation = Explanation(
        forward="y = x reshaped, axes start_dim..end_dim merged into one: (N, C, H, W) -> (N, C*H*W)",
        backward="""
1. y holds the same elements as x in the same order, only the shape differs: dy/dx is the identity.
2. So gx = gy reshaped back to x's shape.""",
        saved="only x's shape: no array.")
    examples = {"flatten": Example(shape=(2, 3, 4, 4), options={"start_dim": 1})}

    def __init__(self, start_dim, end_dim):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        ndim = max(x.ndim, 1)
        if not (-ndim <= self.start_dim < ndim and -ndim <= self.end_dim < ndim):
            raise ValueError(f"flatten: start_dim {self.start_dim} and end_dim {self.end_dim} must lie in "
                             f"[{-ndim}, {ndim - 1}] for an input of shape {tuple(x.shape)}")
        start, end = self.start_dim % ndim, self.end_dim % ndim
        if start > end:
            raise ValueError(f"flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} "
                             f"for an input of shape {tuple(x.shape)}")
        self.input_shape = x.shape
        if x.ndim == 0:
            return x.reshape(1)
        merged = int(numpy.prod(x.shape[start:end + 1]))
        # (N, C, H, W) with start 1, end -1 -> (N, C*H*W)
        return x.reshape(x.shape[:start] + (merged,) + x.shape[end + 1:])

    def backward(self, gy):
        # Flattening only relabels elements: the gradient takes the input's shape back.
        return gy.reshape(self.input_shape)


def flatten(input, start_dim=1, end_dim=-1):
    """Merge axes start_dim..end_dim into one, as torch.flatten (default keeps the batch axis)."""
    return Flatten(start_dim, end_dim)(input)
