"""batch_norm and local_response_norm: gradients, agreement with PyTorch (outputs, gradients and
running statistics), LRN's two definitions and input validation."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture
from support import assert_close

DTYPES = [np.float32, np.float64]


@st.composite
def batch_norm_case(draw):
    """Input (N, C) or (N, C, H, W) with at least two values per channel, and the affine parameters."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (1, 2), (2, 2), (3, 1)]))
    if N == 1 and not spatial:
        N = 2  # a single value per channel has no batch variance (PyTorch refuses it as well)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.uniform(-2.0, 2.0, size=(N, C) + spatial)
    affine = draw(st.sampled_from(["both", "none", "weight only", "bias only"]))
    gamma = rng.uniform(0.5, 1.5, size=C) if affine in ("both", "weight only") else None
    beta = rng.uniform(-1.0, 1.0, size=C) if affine in ("both", "bias only") else None
    return x, gamma, beta


def given_arrays(x, gamma, beta):
    """The float inputs that exist, and a function putting Nones back in the absent places."""
    arrays = [a for a in (x, gamma, beta) if a is not None]

    def call(bn, *tensors):
        tensors = iter(tensors)
        return bn(next(tensors), None if gamma is None else next(tensors), None if beta is None else next(tensors))

    return arrays, call


@given(case=batch_norm_case(), eps=st.sampled_from([1e-5, 1e-3, 0.5]))
def test_batch_norm_training_gradcheck(case, eps):
    arrays, call = given_arrays(*case)
    assert tinycnn.gradcheck(lambda *ts: call(lambda x, g, b: F.batch_norm(x, None, None, g, b, True, 0.1, eps), *ts),
                             [leaf(a) for a in arrays])


@given(case=batch_norm_case(), seed=st.integers(0, 2**16))
def test_batch_norm_eval_gradcheck(case, seed):
    arrays, call = given_arrays(*case)
    C = case[0].shape[1]
    rng = np.random.default_rng(seed)
    running_mean, running_var = rng.uniform(-1.0, 1.0, C), rng.uniform(0.5, 2.0, C)
    assert tinycnn.gradcheck(
        lambda *ts: call(lambda x, g, b: F.batch_norm(x, running_mean, running_var, g, b, False), *ts),
        [leaf(a) for a in arrays])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=batch_norm_case(), momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3]),
       seed=st.integers(0, 2**16))
def test_batch_norm_matches_torch(xp, dtype, training, case, momentum, eps, seed):
    arrays, call = given_arrays(*case)
    C = case[0].shape[1]
    rng = np.random.default_rng(seed)
    start_mean, start_var = rng.uniform(-1.0, 1.0, C).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype)
    ours_mean, ours_var = xp.asarray(start_mean.copy()), xp.asarray(start_var.copy())
    theirs_mean, theirs_var = torch.tensor(start_mean), torch.tensor(start_var)

    def ours(*ts):
        return call(lambda x, g, b: F.batch_norm(x, ours_mean, ours_var, g, b, training, momentum, eps), *ts)

    def theirs(*ts):
        return call(lambda x, g, b: torch.nn.functional.batch_norm(x, theirs_mean, theirs_var, g, b, training,
                                                                   momentum, eps), *ts)

    compare_with_torch(ours, theirs, arrays, xp, dtype, f"batch_norm training={training}")
    assert_close(ours_mean, theirs_mean, dtype, "running_mean")
    assert_close(ours_var, theirs_var, dtype, "running_var")


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=st.sampled_from([(3, 2), (2, 3, 2, 2), (1, 1, 3, 3)]), momentum=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**16))
def test_running_statistics_after_several_steps_equal_torch(dtype, shape, momentum, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    running_mean, running_var = np.zeros(C, dtype=dtype), np.ones(C, dtype=dtype)
    torch_mean, torch_var = torch.tensor(running_mean), torch.tensor(running_var)  # copies
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        F.batch_norm(tinycnn.tensor(x), running_mean, running_var, training=True, momentum=momentum)
        torch.nn.functional.batch_norm(torch.tensor(x), torch_mean, torch_var, training=True, momentum=momentum)
    assert_close(running_mean, torch_mean, dtype, "running_mean")
    assert_close(running_var, torch_var, dtype, "running_var")


def test_running_variance_is_the_unbiased_one():
    x = np.array([[1.0], [3.0]])  # one channel, n = 2: biased variance 1, unbiased 2
    running_mean, running_var = np.zeros(1), np.zeros(1)
    F.batch_norm(tinycnn.tensor(x), running_mean, running_var, training=True, momentum=1.0)
    assert running_mean.tolist() == [2.0] and running_var.tolist() == [2.0]


def test_running_statistics_held_in_tensors_are_updated_in_place():
    running_mean, running_var = tinycnn.tensor(np.zeros(2)), tinycnn.tensor(np.ones(2))
    data = running_mean.data
    F.batch_norm(tinycnn.tensor(np.arange(8.0).reshape(4, 2)), running_mean, running_var, training=True)
    assert running_mean.data is data
    np.testing.assert_allclose(running_mean.numpy(), 0.1 * np.array([3.0, 4.0]))


def test_shape_only_mode_leaves_running_statistics_alone():
    running_mean, running_var = np.zeros(2), np.ones(2)
    with tinycnn.config.using(shape_only=True):
        y = F.batch_norm(tinycnn.tensor(np.ones((3, 2, 2, 2))), running_mean, running_var, training=True)
    assert y.shape == (3, 2, 2, 2)
    assert running_mean.tolist() == [0.0, 0.0] and running_var.tolist() == [1.0, 1.0]


def test_batch_norm_rejects_bad_input():
    x = tinycnn.tensor(np.ones((1, 3)))
    message = r"batch_norm: expected more than 1 value per channel when training, got input of shape \(1, 3\)"
    with pytest.raises(ValueError, match=message):
        F.batch_norm(x, None, None, training=True)
    message = r"batch_norm: expected weight of shape \(3,\) for input of shape \(2, 3\), got \(4,\)"
    with pytest.raises(ValueError, match=message):
        F.batch_norm(tinycnn.tensor(np.ones((2, 3))), None, None, np.ones(4), training=True)
    message = r"batch_norm: evaluation \(training=False\) needs running_mean and running_var"
    with pytest.raises(ValueError, match=message):
        F.batch_norm(x, None, None, training=False)


@st.composite
def lrn_case(draw):
    """Input (N, C, H, W) or (N, C, L), any window size (even ones too) and the constants."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    spatial = draw(st.sampled_from([(1, 1), (2, 3), (3,)]))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(-2.0, 2.0, size=(N, C) + spatial)
    size = draw(st.integers(1, 6))
    alpha = draw(st.sampled_from([1e-4, 0.1, 1.0]))
    beta = draw(st.sampled_from([0.75, 0.5, 1.3]))
    k = draw(st.sampled_from([1.0, 2.0, 0.5]))
    return x, size, alpha, beta, k


@given(case=lrn_case(), divided=st.booleans())
def test_local_response_norm_gradcheck(case, divided):
    x, size, alpha, beta, k = case
    assert tinycnn.gradcheck(lambda t: F.local_response_norm(t, size, alpha, beta, k, alpha_divided_by_size=divided),
                             [leaf(x)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=lrn_case())
def test_local_response_norm_matches_torch(xp, dtype, case):
    x, size, alpha, beta, k = case
    compare_with_torch(lambda t: F.local_response_norm(t, size, alpha, beta, k),
                       lambda t: torch.nn.functional.local_response_norm(t, size, alpha, beta, k),
                       [x], xp, dtype, f"local_response_norm size {size}")
    # The undivided form with alpha is PyTorch's divided form with alpha * size.
    compare_with_torch(lambda t: F.local_response_norm(t, size, alpha, beta, k, alpha_divided_by_size=False),
                       lambda t: torch.nn.functional.local_response_norm(t, size, alpha * size, beta, k),
                       [x], xp, dtype, f"undivided local_response_norm size {size}")


def naive_lrn(x, size, alpha, beta, k):
    """The AlexNet paper's formula (undivided), one channel at a time."""
    N, C = x.shape[:2]
    y = np.empty_like(x)
    for c in range(C):
        window = range(max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1))
        y[:, c] = x[:, c] / (k + alpha * sum(x[:, j] ** 2 for j in window)) ** beta
    return y


@pytest.mark.parametrize("size", [4, 5])
def test_local_response_norm_undivided_follows_the_alexnet_paper(size):
    x = np.random.default_rng(size).uniform(-3.0, 3.0, size=(2, 7, 2, 2))
    y = F.local_response_norm(leaf(x), size, alpha=1e-2, beta=0.75, k=2.0, alpha_divided_by_size=False)
    np.testing.assert_allclose(y.numpy(), naive_lrn(x, size, 1e-2, 0.75, 2.0), rtol=1e-12)


def test_local_response_norm_rejects_bad_size_and_shape():
    x = tinycnn.tensor(np.ones((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="local_response_norm: size must be a positive integer, got 0"):
        F.local_response_norm(x, 0)
    with pytest.raises(ValueError, match="local_response_norm: size must be a positive integer, got 2.5"):
        F.local_response_norm(x, 2.5)
    with pytest.raises(ValueError, match=r"local_response_norm: expected input of shape \(N, C, ...\), got \(3,\)"):
        F.local_response_norm(tinycnn.tensor(np.ones(3)), 3)


def test_check_nan_names_batch_norm():
    x = np.ones((2, 2))
    x[0, 1] = np.nan
    with tinycnn.config.using(check_nan=True), pytest.raises(ValueError, match="BatchNorm: input 0"):
        F.batch_norm(tinycnn.tensor(x), None, None, training=True)


@pytest.mark.parametrize("shape", [(64, 160, 4, 4), (40, 96, 8, 8), (256, 600, 2, 2)])
def test_batch_norm_relu_in_blocks_of_channels_matches_torch_on_any_thread_count(shape, monkeypatch):
    # Big batches of small planes: kernels/cpu_norm.py runs blocks of several channels
    # (at least CHANNEL_RUN values of each sample), several blocks a call here.
    # Training-mode BatchNorm, the residual's add and ReLU, forward and backward, in float64 against
    # torch, and the same bits on 1, 2 and 3 threads.
    from tinycnn.kernels import cpu_norm, parallel
    N, C, H, W = shape
    blocks = []
    run_chunks = parallel.run_chunks
    monkeypatch.setattr(parallel, "run_chunks", lambda run, chunks: blocks.append(chunks) or run_chunks(run, chunks))
    rng = np.random.default_rng(0)
    x, residual, gy = (rng.standard_normal(shape) for _ in range(3))
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    results = []
    previous = parallel.get_num_threads()
    try:
        for threads in (1, 2, 3):
            parallel.set_num_threads(threads)
            y, mean, _, inv_std = cpu_norm.batch_norm_relu_forward_training(x, gamma, beta, 1e-5, residual, True)
            gradients = cpu_norm.batch_norm_relu_backward(gy, y, x, gamma, mean, inv_std, True, True)
            results.append((y,) + gradients)
    finally:
        parallel.set_num_threads(previous)
    assert len(blocks) == 6 and all(len(chunks) > 1 for chunks in blocks), blocks  # several blocks a call
    assert all(stop - start >= min(C, -(-cpu_norm.CHANNEL_RUN // (H * W))) for start, stop in blocks[0][:-1])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    tx, tr = torch.tensor(x, requires_grad=True), torch.tensor(residual, requires_grad=True)
    tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    ty = torch.relu(torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5) + tr)
    ty.backward(torch.tensor(gy))
    y, gx, ggamma, gbeta, gresidual = results[0]
    for ours, theirs in [(y, ty), (gx, tx.grad), (ggamma, tg.grad), (gbeta, tb.grad), (gresidual, tr.grad)]:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)
