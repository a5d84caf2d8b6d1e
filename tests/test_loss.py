"""cross_entropy, nll_loss and mse_loss: gradients, agreement with PyTorch (class weights, label
smoothing, every reduction, per-pixel labels) and the errors on bad labels."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture

DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]


@st.composite
def classification(draw):
    """Scores (N, K) or (N, K, H, W), labels, optional class weights and the loss settings."""
    N, K = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(), (1, 1), (2, 3)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scores = rng.uniform(-3.0, 3.0, size=(N, K) + spatial)
    labels = rng.integers(0, K, size=(N,) + spatial)
    weight = rng.uniform(0.2, 2.0, size=K) if draw(st.booleans()) else None
    reduction = draw(st.sampled_from(REDUCTIONS))
    label_smoothing = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    return scores, labels, weight, reduction, label_smoothing


@given(case=classification())
def test_cross_entropy_gradcheck(case):
    scores, labels, weight, reduction, label_smoothing = case
    assert tinycnn.gradcheck(lambda x: F.cross_entropy(x, labels, weight, reduction, label_smoothing), [leaf(scores)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=classification())
def test_cross_entropy_matches_torch(xp, dtype, case):
    scores, labels, weight, reduction, label_smoothing = case
    w = None if weight is None else weight.astype(dtype)

    def ours(x):
        return F.cross_entropy(x, xp.asarray(labels), None if w is None else xp.asarray(w), reduction, label_smoothing)

    def theirs(t):
        return torch.nn.functional.cross_entropy(t, torch.tensor(labels), None if w is None else torch.tensor(w),
                                                 reduction=reduction, label_smoothing=label_smoothing)

    compare_with_torch(ours, theirs, [scores], xp, dtype, f"cross_entropy {reduction} smoothing {label_smoothing}")


@given(case=classification())
def test_nll_loss_gradcheck(case):
    scores, labels, weight, reduction, _ = case
    assert tinycnn.gradcheck(lambda x: F.nll_loss(x, labels, weight, reduction), [leaf(scores)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(case=classification())
def test_nll_loss_matches_torch(xp, dtype, case):
    scores, labels, weight, reduction, _ = case
    w = None if weight is None else weight.astype(dtype)

    def ours(x):
        return F.nll_loss(x, xp.asarray(labels), None if w is None else xp.asarray(w), reduction)

    def theirs(t):
        return torch.nn.functional.nll_loss(t, torch.tensor(labels), None if w is None else torch.tensor(w),
                                            reduction=reduction)

    compare_with_torch(ours, theirs, [scores], xp, dtype, f"nll_loss {reduction}")


def test_cross_entropy_is_stable_for_huge_scores():
    scores = np.array([[1000.0, -1000.0, 0.0], [0.0, 0.0, 5000.0]])
    labels = np.array([1, 2])
    ours = F.cross_entropy(leaf(scores), labels).item()
    theirs = torch.nn.functional.cross_entropy(torch.tensor(scores), torch.tensor(labels)).item()
    assert np.isfinite(ours) and ours == pytest.approx(theirs, rel=1e-12)


def test_cross_entropy_equals_nll_of_log_softmax():
    scores = np.random.default_rng(3).standard_normal((3, 4))
    labels = np.array([0, 3, 1])
    x = leaf(scores)
    composed = F.nll_loss(F.log_softmax(x, 1), labels)
    np.testing.assert_allclose(F.cross_entropy(x, labels).numpy(), composed.numpy(), rtol=1e-12)


@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple),
       reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16))
def test_mse_loss_gradcheck(shape, reduction, seed):
    rng = np.random.default_rng(seed)
    x, t = leaf(rng.standard_normal(shape)), leaf(rng.standard_normal(shape))
    assert tinycnn.gradcheck(lambda a, b: F.mse_loss(a, b, reduction), [x, t])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple),
       reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16))
def test_mse_loss_matches_torch(xp, dtype, shape, reduction, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape), rng.standard_normal(shape)]
    compare_with_torch(lambda a, b: F.mse_loss(a, b, reduction),
                       lambda a, b: torch.nn.functional.mse_loss(a, b, reduction=reduction),
                       arrays, xp, dtype, f"mse_loss {reduction}")


def test_labels_out_of_range_name_the_op_value_and_class_count():
    x = leaf(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"cross_entropy: label 7 is out of range for 5 classes"):
        F.cross_entropy(x, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: label -1 is out of range for 5 classes"):
        F.cross_entropy(x, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match=r"nll_loss: label 5 is out of range for 5 classes"):
        F.nll_loss(x, np.array([5, 0, 0]))


def test_labels_of_a_float_type_are_a_type_error():
    with pytest.raises(TypeError, match="cross_entropy: expected integer class labels, got dtype float32"):
        F.cross_entropy(leaf(np.zeros((2, 3))), np.array([0.0, 1.0], dtype=np.float32))


def test_shape_mismatches_are_value_errors():
    message = r"cross_entropy: input of shape \(3, 5\) needs labels of shape \(3,\), got \(2,\)"
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(leaf(np.zeros((3, 5))), np.array([0, 1]))
    message = r"cross_entropy: input of shape \(2, 5, 4, 4\) needs labels of shape \(2, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(leaf(np.zeros((2, 5, 4, 4))), np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"cross_entropy: expected a class weight of shape \(5,\), got \(4,\)"):
        F.cross_entropy(leaf(np.zeros((3, 5))), np.array([0, 1, 2]), np.ones(4))
    message = r"mse_loss: input and target must have the same shape, got \(3,\) and \(3, 1\)"
    with pytest.raises(ValueError, match=message):
        F.mse_loss(leaf(np.zeros(3)), leaf(np.zeros((3, 1))))


def test_bad_settings_are_value_errors():
    x, labels = leaf(np.zeros((2, 3))), np.array([0, 1])
    with pytest.raises(ValueError, match="cross_entropy: reduction must be one of"):
        F.cross_entropy(x, labels, reduction="avg")
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing must lie in \[0, 1\], got 1.5"):
        F.cross_entropy(x, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match="mse_loss: reduction must be one of"):
        F.mse_loss(x, x, reduction="total")


def test_nan_scores_raise_naming_the_op_under_check_nan():
    scores = np.zeros((2, 3))
    scores[1, 2] = np.nan
    with tinycnn.config.using(check_nan=True):
        with pytest.raises(ValueError, match=r"CrossEntropy: input 0 of shape \(2, 3\) holds 1 NaN"):
            F.cross_entropy(leaf(scores), np.array([0, 1]))
