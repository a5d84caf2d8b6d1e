"""The engine: graph building, the backward pass, arithmetic ops and gradcheck itself."""
import gc
import re
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinycnn
from tinycnn import Function, Tensor
from support import TOLERANCES, assert_close


def leaf(array, requires_grad=True):
    return tinycnn.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def test_tensor_constructor_follows_torch_dtypes():
    assert tinycnn.tensor([1.0, 2.0]).dtype == np.float32
    assert tinycnn.tensor([1, 2]).dtype == np.int64
    assert tinycnn.tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    source = np.zeros(3)
    copy = tinycnn.tensor(source)
    copy.data[0] = 1.0
    assert source[0] == 0.0, "tinycnn.tensor must copy its input as torch.tensor does"


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        tinycnn.tensor([1, 2], requires_grad=True)


def test_gradient_of_a_value_used_twice_is_accumulated():
    x = leaf([3.0])
    y = x * x + x  # dy/dx = 2x + 1
    y.backward()
    assert x.grad.tolist() == [7.0]


def test_residual_and_dense_style_reuse():
    x = leaf(np.arange(4.0))
    h = x * 2.0
    y = (h + x) * h  # y = 3x * 2x = 6x^2 -> dy/dx = 12x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 12 * np.arange(4.0))


def test_gradients_summed_from_many_uses_equal_torchs_even_where_a_sum_is_passed_on():
    # `out`'s gradient is a sum, which the add passes on as the same array to both of its inputs;
    # `x` then receives two more gradients, and `h` four: summing any of them in place into an array
    # another tensor holds would corrupt that tensor's gradient.
    rng = np.random.default_rng(0)
    a0, b0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def loss(a, b, add):
        x, y = a * 1.5, b * 0.5
        out = add(x, y)
        h = a * 2.0
        return (out * 2.0 + out * 3.0 + x * 7.0 + x * 11.0 + h * h * h + h * h * 5.0).sum()

    a, b = leaf(a0), leaf(b0)
    loss(a, b, lambda x, y: tinycnn.functional.add(x, y)).backward()
    ta, tb = torch.tensor(a0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    loss(ta, tb, lambda x, y: x + y).backward()
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-12)


def test_sums_of_many_gradients_leave_the_arrays_the_backwards_returned_as_they_were():
    # A DenseNet-like reuse: every feature joins each later concatenation, whose backward returns
    # views of one gradient array, and an add returns one array for both of its inputs. The engine
    # sums a feature's gradients into an array of its own after the first sum; adding in place into
    # one of those views would change the concatenations' gradients (retained here) as well.
    rng = np.random.default_rng(1)
    a0 = rng.standard_normal((2, 3, 4))

    def loss(a, concat, add, retain):
        features, joins = [a * 1.5], []
        for k in range(4):
            joined = concat(features)
            retain(joined)
            joins.append(joined)
            features.append(add(joined[:, :3] * (k + 2.0), joined[:, -3:]))
        return sum((j * j).sum() for j in joins), joins

    a = leaf(a0)
    total, joins = loss(a, lambda fs: tinycnn.functional.concat(fs, axis=1), tinycnn.functional.add,
                        lambda t: t.retain_grad())
    total.backward()
    ta = torch.tensor(a0, requires_grad=True)
    torch_total, torch_joins = loss(ta, lambda fs: torch.cat(fs, dim=1), torch.add, lambda t: t.retain_grad())
    torch_total.backward()
    np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-12)
    for join, torch_join in zip(joins, torch_joins):
        np.testing.assert_allclose(join.grad, torch_join.grad.numpy(), rtol=1e-12)


def test_leaf_gradients_accumulate_across_backward_calls_as_torch():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    assert x.grad.tolist() == [6.0, 6.0]


def test_thousand_layer_chain_needs_no_recursion():
    x = leaf([1.0])
    h = x
    for _ in range(1000):
        h = h * 1.001
    h.backward()
    np.testing.assert_allclose(x.grad, [1.001 ** 1000])


def test_graph_is_freed_after_backward_unless_retained():
    x = leaf([2.0])
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [8.0]
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_functions_do_not_keep_their_outputs_alive():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    function = weakref.ref(y.creator)
    del y
    gc.collect()
    assert function() is None


def test_no_grad_records_no_graph():
    x = leaf([1.0])
    with tinycnn.no_grad():
        y = x * 2.0
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_detach_cuts_the_graph():
    x = leaf([1.0])
    y = (x * 2.0).detach() * x
    y.backward()
    assert x.grad.tolist() == [2.0]


def test_retain_grad_keeps_an_intermediate_gradient():
    x = leaf([1.0, 2.0])
    h = (x * 3.0).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * 3.0 * np.array([1.0, 2.0]))


def test_explicit_output_gradient_and_shape_check():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match="one-element"):
        y.backward()
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones(3))
    y.backward(np.array([1.0, 10.0]))
    assert x.grad.tolist() == [2.0, 20.0]


def test_broadcast_gradients_reduce_to_the_input_shape():
    a = leaf(np.ones((2, 3, 4)))
    b = leaf(np.ones((3, 1)))
    (a * b).sum().backward()
    assert b.grad.shape == (3, 1)
    np.testing.assert_allclose(b.grad, np.full((3, 1), 8.0))


def test_fancy_indexing_scatters_repeated_indices():
    x = leaf(np.arange(3.0))
    x[np.array([0, 0, 2])].sum().backward()
    assert x.grad.tolist() == [2.0, 0.0, 1.0]


def test_numpy_array_on_the_left_defers_to_tensor():
    x = leaf([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 4.0]


def test_python_scalars_keep_float32():
    x = tinycnn.tensor([1.0, 2.0], requires_grad=True)
    assert (x * 2.5 + 1).dtype == np.float32
    assert (1.0 / x).dtype == np.float32


def test_check_nan_names_the_operation():
    x = leaf([1.0, np.nan])
    with tinycnn.config.using(check_nan=True):
        with pytest.raises(ValueError, match="Mul: input 0"):
            x * 2.0
    x * 2.0  # off by default


class WrongSquare(Function):
    """x^2 with a deliberately wrong backward (x instead of 2x), to prove gradcheck can fail."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, gy):
        (x,) = self.saved_arrays
        return gy * x


def test_gradcheck_reports_input_element_and_values():
    x = leaf([[1.0, -2.0]])
    with pytest.raises(tinycnn.GradcheckError) as error:
        tinycnn.gradcheck(lambda t: WrongSquare()(t), [x])
    message = str(error.value)
    assert "input 0" in message and "element (0, 1)" in message
    numeric = float(re.search(r"numeric (\S+),", message).group(1))
    analytic = float(re.search(r"analytic (\S+) ", message).group(1))
    assert numeric == pytest.approx(2 * analytic, rel=1e-6)  # the true 2x against the wrong x
    assert tinycnn.gradcheck(lambda t: WrongSquare()(t), [x], raise_exception=False) is False


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        tinycnn.gradcheck(lambda t: t * 2.0, [tinycnn.tensor([1.0], requires_grad=True)])


small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def arrays(shape, low=-2.0, high=2.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(low, high, allow_nan=False, width=64))


UNARY = {
    "neg": (lambda t: -t, lambda t: -t),
    "exp": (lambda t: t.exp(), torch.exp),
    "log": (lambda t: (t * t + 0.5).log(), lambda t: torch.log(t * t + 0.5)),
    "pow3": (lambda t: t ** 3, lambda t: t ** 3),
    "sum_axis0": (lambda t: t.sum(axis=0), lambda t: t.sum(dim=0)),
    "mean_keepdims": (lambda t: t.mean(axis=-1, keepdims=True), lambda t: t.mean(dim=-1, keepdim=True)),
    "max_last": (lambda t: t.max(axis=-1), lambda t: t.amax(dim=-1)),
    "max_all": (lambda t: t.max(), lambda t: t.amax()),
    "reshape": (lambda t: t.reshape(-1) * 2.0, lambda t: t.reshape(-1) * 2.0),
    "transpose": (lambda t: t.transpose(0, -1) * 1.0, lambda t: t.transpose(0, -1) * 1.0),
    "slice": (lambda t: t[..., ::2] * 1.0, lambda t: t[..., ::2] * 1.0),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_ops_gradcheck_and_match_torch(name, data):
    ours, theirs = UNARY[name]
    shape = data.draw(small_shapes)
    # Distinct values so max has no ties, where the finite difference of max is undefined.
    values = data.draw(arrays(shape)) + np.arange(np.prod(shape)).reshape(shape) * 1e-3
    x = leaf(values)
    assert tinycnn.gradcheck(ours, [x])
    for dtype in (np.float32, np.float64):
        x = leaf(values.astype(dtype))
        x = tinycnn.tensor(values.astype(dtype), requires_grad=True)
        t = torch.tensor(values.astype(dtype), requires_grad=True)
        y, ty = ours(x), theirs(t)
        assert_close(y, ty, dtype, name)
        weight = np.random.default_rng(1).standard_normal(ty.shape).astype(dtype)
        (y * tinycnn.tensor(weight)).sum().backward()
        (ty * torch.tensor(weight)).sum().backward()
        assert_close(x.grad, t.grad, dtype, name + " grad")


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1.0),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), data=st.data())
def test_broadcasting_binary_ops(name, shapes, data):
    op = BINARY[name]
    a_values = data.draw(arrays(shapes.input_shapes[0]))
    b_values = data.draw(arrays(shapes.input_shapes[1]))
    assert tinycnn.gradcheck(op, [leaf(a_values), leaf(b_values)])
    a, b = leaf(a_values), leaf(b_values)
    ta = torch.tensor(a_values, requires_grad=True)
    tb = torch.tensor(b_values, requires_grad=True)
    op(a, b).sum().backward()
    op(ta, tb).sum().backward()
    assert_close(a.grad, ta.grad, np.float64)
    assert_close(b.grad, tb.grad, np.float64)


@given(n=st.integers(1, 3), k=st.integers(1, 4), m=st.integers(1, 3), batch=st.sampled_from([(), (2,)]))
def test_matmul(n, k, m, batch):
    rng = np.random.default_rng(n * 100 + k * 10 + m)
    a_values, b_values = rng.standard_normal(batch + (n, k)), rng.standard_normal((k, m))
    assert tinycnn.gradcheck(lambda a, b: a @ b, [leaf(a_values), leaf(b_values)])
    a, b = leaf(a_values), leaf(b_values)
    ta, tb = torch.tensor(a_values, requires_grad=True), torch.tensor(b_values, requires_grad=True)
    assert_close(a @ b, ta @ tb)
    (a @ b).sum().backward()
    (ta @ tb).sum().backward()
    assert_close(a.grad, ta.grad)
    assert_close(b.grad, tb.grad)


def test_matmul_vectors_and_error():
    a, b = leaf(np.arange(3.0)), leaf(np.ones((3, 2)))
    assert tinycnn.gradcheck(lambda a, b: a @ b, [a, b])
    with pytest.raises(ValueError, match="matmul"):
        leaf(np.ones((2, 3))) @ leaf(np.ones((2, 3)))


def test_tolerances_are_stated_for_both_float_types():
    assert set(TOLERANCES) == {np.dtype(np.float32), np.dtype(np.float64)}


def test_device_mismatch_is_a_clear_error():
    class FakeGpuArray(np.ndarray):
        pass

    # As if CuPy were installed (without it, no array can be a GPU one and nothing is checked).
    original = tinycnn.backend.cupy_ndarray, tinycnn.backend.cupy
    tinycnn.backend.cupy_ndarray, tinycnn.backend.cupy = FakeGpuArray, object()
    try:
        x = leaf([1.0])
        y = Tensor(np.array([1.0]).view(FakeGpuArray))
        with pytest.raises(tinycnn.backend.DeviceMismatchError, match="Mul: expected all inputs on one device"):
            x * y
    finally:
        tinycnn.backend.cupy_ndarray, tinycnn.backend.cupy = original
