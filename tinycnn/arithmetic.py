"""Element-wise arithmetic, reductions and shape operations on Tensors, each a Function.

These are attached to Tensor as operators and methods at the bottom of this file, so `a + b`,
`x.sum(axis=1)` and `x[:, 0]` build the graph like any other op.
"""
import numpy

from tinycnn import backend
from tinycnn.autograd import Function, Tensor, as_tensor


def sum_to(gy, shape):
    """Sum a broadcast gradient back down to `shape` (the inverse of NumPy broadcasting)."""
    if tuple(gy.shape) == tuple(shape):
        return gy
    lead = gy.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and gy.shape[i + lead] != 1)
    gx = gy.sum(axis=axes, keepdims=True)
    return gx.reshape(shape)


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        # d(a+b)/da = d(a+b)/db = 1; broadcast dimensions are summed back.
        return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        # d(ab)/da = b, d(ab)/db = a.
        a, b = self.saved_arrays
        ga = sum_to(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2.
        a, b = self.saved_arrays
        ga = sum_to(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """x ** exponent for a constant exponent."""

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        self.save_for_backward(x)
        return x ** self.exponent

    def backward(self, gy):
        # d(x^p)/dx = p x^(p-1).
        (x,) = self.saved_arrays
        return gy * self.exponent * x ** (self.exponent - 1)


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ, got shapes {a.shape} and {b.shape}")
        self.save_for_backward(a, b)
        return a @ b

    def forward_shape_only(self, a, b):
        xp = backend.get_array_module(a)
        return xp.zeros(numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + a.shape[-2:-1] + b.shape[-1:],
                        dtype=numpy.result_type(a.dtype, b.dtype))

    def backward(self, gy):
        # Y = A B: dA = dY B^T, dB = A^T dY (batch dimensions broadcast and are summed back).
        a, b = self.saved_arrays
        if a.ndim == 1 or b.ndim == 1:  # promote vectors as NumPy does, then squeeze back
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            gy2 = gy.reshape(a2.shape[:-1] + b2.shape[-1:])
            ga = (gy2 @ b2.swapaxes(-1, -2)).reshape(a.shape) if a.ndim == 1 else sum_to(gy2 @ b2.swapaxes(-1, -2), a.shape)
            gb = (a2.swapaxes(-1, -2) @ gy2).reshape(b.shape) if b.ndim == 1 else sum_to(a2.swapaxes(-1, -2) @ gy2, b.shape)
            return ga, gb
        ga = sum_to(gy @ b.swapaxes(-1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(a.swapaxes(-1, -2) @ gy, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Exp(Function):
    def forward(self, x):
        y = backend.get_array_module(x).exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        # d(e^x)/dx = e^x, which forward already computed.
        (y,) = self.saved_arrays
        return gy * y


class Log(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.get_array_module(x).log(x)

    def backward(self, gy):
        # d(log x)/dx = 1/x.
        (x,) = self.saved_arrays
        return gy / x


class Cast(Function):
    def __init__(self, dtype):
        self.dtype = numpy.dtype(dtype)

    def forward(self, x):
        self.source_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.source_dtype)


def _normalize_axis(axis, ndim):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axes) if ndim else axes


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        self.axis = _normalize_axis(self.axis, x.ndim)
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        # Every summed element receives the output's gradient: re-insert the reduced axes and broadcast.
        xp = backend.get_array_module(gy)
        if not self.keepdims and self.axis is not None:
            gy = xp.expand_dims(gy, self.axis)
        return xp.broadcast_to(gy, self.shape).copy()


class Max(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axis = _normalize_axis(self.axis, x.ndim)
        y = x.max(axis=self.axis, keepdims=True)
        # Ties share the gradient equally, so the result does not depend on the scan order.
        mask = x == y
        self.weights = mask / mask.sum(axis=self.axis, keepdims=True)
        return y if self.keepdims else (y.reshape(()) if self.axis is None else y.squeeze(self.axis))

    def backward(self, gy):
        # d max / dx_i = 1 for the maximal element (split among ties), 0 elsewhere.
        xp = backend.get_array_module(gy)
        if not self.keepdims and self.axis is not None:
            gy = xp.expand_dims(gy, self.axis)
        return (gy * self.weights).astype(gy.dtype)


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.input_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.input_shape)


class Permute(Function):
    def __init__(self, axes):
        self.axes = tuple(axes)

    def forward(self, x):
        if sorted(a % x.ndim for a in self.axes) != list(range(x.ndim)):
            raise ValueError(f"permute: expected a permutation of {x.ndim} axes, got {self.axes}")
        return x.transpose(self.axes)

    def backward(self, gy):
        # The gradient travels back through the inverse permutation.
        return gy.transpose(numpy.argsort([a % gy.ndim for a in self.axes]))


class GetItem(Function):
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.input_shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        # Scatter-add, so an element picked twice by fancy indexing gets both gradients.
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.input_shape, dtype=self.dtype)
        xp.add.at(gx, self.index, gy)
        return gx


def _other(value, like):
    return as_tensor(value, like=like.data)


def _sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    return Sum(dim if dim is not None else axis, keepdim if keepdim is not None else keepdims)(x)


def _mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis = dim if dim is not None else axis
    axes = _normalize_axis(axis, x.ndim)
    count = x.size if axes is None else int(numpy.prod([x.shape[a] for a in axes]))
    return _sum(x, axis, keepdim if keepdim is not None else keepdims) * (1.0 / count)


def _max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    return Max(dim if dim is not None else axis, keepdim if keepdim is not None else keepdims)(x)


def _reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(shape)(x)


def _transpose(x, dim0=None, dim1=None):
    """Swap two axes as torch.transpose; with no arguments, reverse all axes (x.T)."""
    if dim0 is None:
        return Permute(tuple(reversed(range(x.ndim))))(x)
    axes = list(range(x.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return Permute(axes)(x)


def _permute(x, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return Permute(axes)(x)


def _pow(x, exponent):
    if isinstance(exponent, Tensor):
        return Exp()(Log()(x) * exponent)
    return Pow(exponent)(x)


def _getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def _argmax(x, axis=None):
    return Tensor(x.data.argmax(axis=axis))


def _binary(function_class, reflected=False):
    def operator(self, other):
        other = _other(other, self)
        return function_class()(other, self) if reflected else function_class()(self, other)
    return operator


def _comparison(name):
    def operator(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(getattr(self.data, name)(other))
    return operator


Tensor.__add__ = _binary(Add)
Tensor.__radd__ = _binary(Add, reflected=True)
Tensor.__sub__ = _binary(Sub)
Tensor.__rsub__ = _binary(Sub, reflected=True)
Tensor.__mul__ = _binary(Mul)
Tensor.__rmul__ = _binary(Mul, reflected=True)
Tensor.__truediv__ = _binary(Div)
Tensor.__rtruediv__ = _binary(Div, reflected=True)
Tensor.__matmul__ = _binary(MatMul)
Tensor.__rmatmul__ = _binary(MatMul, reflected=True)
Tensor.__neg__ = lambda self: Neg()(self)
Tensor.__pow__ = _pow
Tensor.__getitem__ = _getitem
for _name in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
    setattr(Tensor, _name, _comparison(_name))
Tensor.__hash__ = lambda self: id(self)  # __eq__ is element-wise, so restore identity hashing
Tensor.sum = _sum
Tensor.mean = _mean
Tensor.max = _max
Tensor.argmax = _argmax
Tensor.exp = lambda self: Exp()(self)
Tensor.log = lambda self: Log()(self)
Tensor.reshape = _reshape
Tensor.view = _reshape
Tensor.transpose = _transpose
Tensor.permute = _permute
Tensor.T = property(lambda self: _transpose(self))
Tensor.astype = lambda self, dtype: self if self.dtype == numpy.dtype(dtype) else Cast(dtype)(self)
Tensor.float = lambda self: self.astype(numpy.float32)
Tensor.double = lambda self: self.astype(numpy.float64)
