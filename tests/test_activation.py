"""Activations and (log-)softmax: gradients, agreement with PyTorch, numerical stability."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture

DTYPES = [np.float32, np.float64]
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3)
# Away from 0, where relu and leaky_relu have a kink and no finite difference is meaningful.
off_zero = st.floats(0.01, 3.0) | st.floats(-3.0, -0.01)
slopes = st.floats(-0.5, 2.0, allow_nan=False)

# name -> (ours, torch's), each a function of the input alone once hyper-parameters are drawn.
ELEMENTWISE = {
    "relu": (F.relu, torch.nn.functional.relu),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@given(data=st.data())
def test_elementwise_gradcheck(name, data):
    x = data.draw(hnp.arrays(np.float64, shapes, elements=off_zero))
    assert tinycnn.gradcheck(ELEMENTWISE[name][0], [leaf(x)])


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(data=st.data())
def test_elementwise_matches_torch(xp, dtype, name, data):
    x = data.draw(hnp.arrays(np.float64, shapes, elements=off_zero))
    ours, theirs = ELEMENTWISE[name]
    compare_with_torch(ours, theirs, [x], xp, dtype, name)


@given(data=st.data(), slope=slopes)
def test_leaky_relu_gradcheck(data, slope):
    x = data.draw(hnp.arrays(np.float64, shapes, elements=off_zero))
    assert tinycnn.gradcheck(lambda t: F.leaky_relu(t, slope), [leaf(x)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(data=st.data(), slope=slopes)
def test_leaky_relu_matches_torch(xp, dtype, data, slope):
    x = data.draw(hnp.arrays(np.float64, shapes, elements=off_zero))
    compare_with_torch(lambda t: F.leaky_relu(t, slope), lambda t: torch.nn.functional.leaky_relu(t, slope),
                       [x], xp, dtype, "leaky_relu")


def test_relu_gradient_at_zero_is_zero_as_torch():
    x = leaf(np.array([-1.0, 0.0, 2.0]))
    F.relu(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0]
    y = leaf(np.array([0.0]))
    F.leaky_relu(y, 0.2).sum().backward()
    assert y.grad.tolist() == [0.2]  # torch takes the negative side at 0 too


SOFTMAXES = {
    "softmax": (F.softmax, torch.nn.functional.softmax),
    "log_softmax": (F.log_softmax, torch.nn.functional.log_softmax),
}
shape_and_dim = shapes.flatmap(lambda shape: st.tuples(st.just(shape), st.integers(-len(shape), len(shape) - 1)))


@pytest.mark.parametrize("name", sorted(SOFTMAXES))
@given(case=shape_and_dim, data=st.data())
def test_softmax_gradcheck(name, case, data):
    shape, dim = case
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-4.0, 4.0)))
    assert tinycnn.gradcheck(lambda t: SOFTMAXES[name][0](t, dim), [leaf(x)])


@pytest.mark.parametrize("name", sorted(SOFTMAXES))
@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=shape_and_dim, data=st.data())
def test_softmax_matches_torch(xp, dtype, name, case, data):
    shape, dim = case
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-4.0, 4.0)))
    ours, theirs = SOFTMAXES[name]
    compare_with_torch(lambda t: ours(t, dim), lambda t: theirs(t, dim=dim), [x], xp, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_sigmoid_are_stable_for_huge_inputs(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-800.0, -800.0, -790.0]])
    t = torch.tensor(x.astype(dtype))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        np.testing.assert_allclose(F.softmax(leaf(x, dtype=dtype), 1).numpy(),
                                   torch.softmax(t, 1).numpy(), atol=1e-7)
        np.testing.assert_allclose(F.log_softmax(leaf(x, dtype=dtype), 1).numpy(),
                                   torch.log_softmax(t, 1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(F.sigmoid(leaf(x, dtype=dtype)).numpy(), torch.sigmoid(t).numpy(), atol=1e-7)


def test_softmax_rejects_a_dim_out_of_range():
    with pytest.raises(ValueError, match=r"log_softmax: dim 2 is out of range for an input of shape \(2, 3\)"):
        F.log_softmax(tinycnn.tensor(np.ones((2, 3))), 2)


def test_check_nan_names_the_activation():
    x = tinycnn.tensor(np.array([0.5, np.nan]))
    with tinycnn.config.using(check_nan=True), pytest.raises(ValueError, match="ReLU: input 0"):
        F.relu(x)
