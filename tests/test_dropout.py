"""dropout: gradients through a fixed mask, its statistics, reproducibility from the seed, the
deterministic cases against PyTorch and the argument check."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture

DTYPES = [np.float32, np.float64]
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


@given(shape=shapes, p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_dropout_gradcheck(shape, p, seed):
    def dropped(x):
        tinycnn.manual_seed(seed)  # the same mask at every evaluation of the finite difference
        return F.dropout(x, p)

    x = np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)
    assert tinycnn.gradcheck(dropped, [leaf(x)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(shape=shapes, p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_dropout_scales_survivors_as_torch(xp, dtype, shape, p, seed):
    # Masks come from different generators, so compare what each keeps: survivors are x / (1 - p),
    # and each gradient is the output divided by the input (the mask itself).
    x_values = np.random.default_rng(seed).uniform(0.5, 2.0, size=shape).astype(dtype)
    tinycnn.manual_seed(seed)
    torch.manual_seed(seed)
    x, t = leaf(x_values, xp, dtype), torch.tensor(x_values, requires_grad=True)
    y, ty = F.dropout(x, p), torch.nn.functional.dropout(t, p)
    assert y.dtype == np.dtype(dtype)
    y.sum().backward()
    ty.sum().backward()
    for output, grad, who in ((y.numpy(), x.grad, "tinycnn"), (ty.detach().numpy(), t.grad.numpy(), "torch")):
        grad = tinycnn.backend.to_cpu(grad)
        kept = output != 0
        np.testing.assert_allclose(output[kept], x_values[kept] / (1 - p), rtol=1e-6, err_msg=who)
        np.testing.assert_allclose(grad, kept / np.asarray(1 - p, dtype=dtype), rtol=1e-6, err_msg=who)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p, training", [(0.0, True), (0.5, False), (1.0, True), (1.0, False)])
def test_deterministic_cases_match_torch(xp, dtype, p, training):
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    compare_with_torch(lambda t: F.dropout(t, p, training) * 1.0,
                       lambda t: torch.nn.functional.dropout(t, p, training) * 1.0, [x], xp, dtype,
                       f"dropout p={p} training={training}")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    tinycnn.manual_seed(1)
    n = 200 * 200
    y = F.dropout(tinycnn.tensor(np.ones((200, 200))), p).numpy()
    dropped = (y == 0).mean()
    # Four standard deviations of a binomial fraction, and of the mean of the scaled survivors.
    assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert abs(y.mean() - 1.0) < 4 * np.sqrt(p / (1 - p) / n)
    assert set(np.unique(y)) <= {0.0, 1 / (1 - p)}


def test_eval_mode_and_p_zero_are_the_identity():
    x = tinycnn.tensor(np.arange(6.0).reshape(2, 3))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x


def test_the_seed_reproduces_the_mask():
    x = tinycnn.tensor(np.ones((8, 8)))
    tinycnn.manual_seed(7)
    first = F.dropout(x, 0.5).numpy()
    tinycnn.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), first)
    assert not np.array_equal(F.dropout(x, 0.5).numpy(), first)  # the stream moves on
    tinycnn.manual_seed(8)
    assert not np.array_equal(F.dropout(x, 0.5).numpy(), first)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_outside_zero_one_is_rejected(p):
    with pytest.raises(ValueError, match=rf"dropout: probability p must lie in \[0, 1\], got {p}"):
        F.dropout(tinycnn.tensor(np.ones(3)), p)
