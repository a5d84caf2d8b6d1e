"""linear, concat/cat, add and flatten: gradients, agreement with PyTorch and input validation."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture

DTYPES = [np.float32, np.float64]
lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def values(seed, shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape)


@given(lead=lead_shapes, in_features=st.integers(1, 4), out_features=st.integers(1, 4),
       with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_gradcheck(lead, in_features, out_features, with_bias, seed):
    x = leaf(values(seed, lead + (in_features,)))
    W = leaf(values(seed + 1, (out_features, in_features)))
    inputs = [x, W] + ([leaf(values(seed + 2, (out_features,)))] if with_bias else [])
    assert tinycnn.gradcheck(F.linear, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(lead=lead_shapes, in_features=st.integers(1, 4), out_features=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_linear_matches_torch(xp, dtype, lead, in_features, out_features, seed):
    arrays = [values(seed, lead + (in_features,)), values(seed + 1, (out_features, in_features)),
              values(seed + 2, (out_features,))]
    compare_with_torch(F.linear, torch.nn.functional.linear, arrays, xp, dtype, "linear")
    compare_with_torch(F.linear, torch.nn.functional.linear, arrays[:2], xp, dtype, "linear without bias")


def test_linear_shape_only_gives_zeros_of_the_output_shape():
    x, W = tinycnn.tensor(np.ones((2, 3, 5))), tinycnn.tensor(np.ones((4, 5)))
    with tinycnn.config.using(shape_only=True):
        y = F.linear(x, W, tinycnn.tensor(np.ones(4)))
    assert y.shape == (2, 3, 4) and not y.numpy().any()
    with tinycnn.config.using(shape_only=True), pytest.raises(ValueError, match="linear"):
        F.linear(x, tinycnn.tensor(np.ones((4, 6))))


def test_linear_rejects_mismatched_shapes():
    x = tinycnn.tensor(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 5\) has 5 features.*expects 4"):
        F.linear(x, tinycnn.tensor(np.ones((3, 4))))
    with pytest.raises(ValueError, match="linear: expected a 2-D weight"):
        F.linear(x, tinycnn.tensor(np.ones(5)))
    with pytest.raises(ValueError, match=r"linear: expected a bias of shape \(3,\), got \(4,\)"):
        F.linear(x, tinycnn.tensor(np.ones((3, 5))), tinycnn.tensor(np.ones(4)))


concat_cases = st.tuples(st.integers(1, 3), st.integers(0, 2), st.lists(st.integers(1, 3), min_size=1, max_size=3))


@given(case=concat_cases, other=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_concat_gradcheck(case, other, seed):
    ndim, axis, sizes = case
    axis = axis % ndim
    shapes = [tuple(size if i == axis else other for i in range(ndim)) for size in sizes]
    inputs = [leaf(values(seed + k, shape)) for k, shape in enumerate(shapes)]
    assert tinycnn.gradcheck(lambda *xs: F.concat(xs, axis=axis), inputs)
    assert tinycnn.gradcheck(lambda *xs: F.concat(xs, axis=axis - ndim), inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=concat_cases, seed=st.integers(0, 2**16))
def test_concat_and_cat_match_torch(xp, dtype, case, seed):
    ndim, axis, sizes = case
    axis = axis % ndim
    arrays = [values(seed + k, tuple(size if i == axis else 2 for i in range(ndim))) for k, size in enumerate(sizes)]
    compare_with_torch(lambda *xs: F.concat(xs, axis), lambda *ts: torch.cat(ts, dim=axis), arrays, xp, dtype, "concat")
    compare_with_torch(lambda *xs: F.cat(list(xs), dim=axis), lambda *ts: torch.cat(ts, dim=axis),
                       arrays, xp, dtype, "cat")


def test_concat_default_axes_and_a_frozen_input():
    a, b = leaf(np.ones((2, 1, 3))), tinycnn.tensor(np.zeros((2, 2, 3)))
    assert F.concat([a, b]).shape == (2, 3, 3)  # channels by default
    assert F.cat([a, a]).shape == (4, 1, 3)  # dim 0 by default, as torch.cat
    F.concat([b, a]).sum().backward()
    assert b.grad is None and a.grad.shape == (2, 1, 3)


def test_concat_rejects_mismatched_shapes():
    message = r"concat: expected shapes that agree except along axis 1, got \(2, 1, 3\), \(2, 2, 4\)"
    with pytest.raises(ValueError, match=message):
        F.concat([tinycnn.tensor(np.ones((2, 1, 3))), tinycnn.tensor(np.ones((2, 2, 4)))])
    with pytest.raises(ValueError, match="concat: axis 3 is out of range"):
        F.concat([tinycnn.tensor(np.ones((2, 1, 3)))], axis=3)
    with pytest.raises(ValueError, match="concat: expected at least one tensor"):
        F.concat([])


@given(count=st.integers(1, 4), shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
       broadcast=st.booleans(), seed=st.integers(0, 2**16))
def test_add_gradcheck(count, shape, broadcast, seed):
    shapes = [shape] * count
    if broadcast:  # the last input has size 1 on the first axis and no leading axis, as a bias would
        shapes[-1] = (1,) + shape[1:]
    inputs = [leaf(values(seed + k, s)) for k, s in enumerate(shapes)]
    assert tinycnn.gradcheck(F.add, inputs)
    assert tinycnn.gradcheck(lambda *xs: F.add(list(xs)), inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(count=st.integers(1, 4), shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**16))
def test_add_matches_torch(xp, dtype, count, shape, seed):
    arrays = [values(seed + k, shape) for k in range(count)]

    def torch_sum(*ts):
        return ts[0] * 1.0 if len(ts) == 1 else sum(ts[1:], ts[0])

    compare_with_torch(F.add, torch_sum, arrays, xp, dtype, "add")


def test_add_of_one_tensor_is_a_copy_and_add_needs_one():
    x = tinycnn.tensor(np.ones(3))
    y = F.add(x)
    y.data[0] = 5.0
    assert x.data[0] == 1.0
    with pytest.raises(ValueError, match="add: expected at least one tensor"):
        F.add()


flatten_cases = st.integers(1, 4).flatmap(
    lambda ndim: st.tuples(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim).map(tuple),
                           st.integers(-ndim, ndim - 1), st.integers(-ndim, ndim - 1))
).filter(lambda case: case[1] % len(case[0]) <= case[2] % len(case[0]))


@given(case=flatten_cases, seed=st.integers(0, 2**16))
def test_flatten_gradcheck(case, seed):
    shape, start, end = case
    assert tinycnn.gradcheck(lambda x: F.flatten(x, start, end), [leaf(values(seed, shape))])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=flatten_cases, seed=st.integers(0, 2**16))
def test_flatten_matches_torch(xp, dtype, case, seed):
    shape, start, end = case
    compare_with_torch(lambda x: F.flatten(x, start, end), lambda t: torch.flatten(t, start, end),
                       [values(seed, shape)], xp, dtype, "flatten")


def test_flatten_keeps_the_batch_axis_by_default_and_validates():
    x = tinycnn.tensor(np.ones((2, 3, 4, 5)))
    assert F.flatten(x).shape == (2, 60)
    message = r"flatten: start_dim 2 comes after end_dim 1 for an input of shape \(2, 3, 4, 5\)"
    with pytest.raises(ValueError, match=message):
        F.flatten(x, 2, 1)
    with pytest.raises(ValueError, match="flatten: start_dim 4"):
        F.flatten(x, 4)
