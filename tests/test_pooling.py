"""max_pool2d, avg_pool2d, adaptive_avg_pool2d and global_avg_pool2d: gradients, agreement with
PyTorch (values, indices and gradients) and bad input."""
import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from functional_support import compare_with_torch, leaf, with_xp_fixture

DTYPES = [np.float32, np.float64]
TF = torch.nn.functional


def torch_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """PyTorch's pooling output length (aten/src/ATen/native/Pool.h), written out independently."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def has_window_of_padding_only(size, kernel, stride, padding, dilation, ceil_mode):
    out = torch_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    return any(all(not 0 <= o * stride - padding + i * dilation < size for i in range(kernel)) for o in range(out))


@st.composite
def pool_configs(draw, dilation=True):
    """A small pooling: input shape and keyword arguments that PyTorch accepts. Covers non-square
    kernels and strides, stride None, padding up to half the kernel, dilation and ceil_mode."""
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    DH, DW = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    ceil_mode = draw(st.booleans())
    min_H = max(1, DH * (KH - 1) + 1 - 2 * PH)
    min_W = max(1, DW * (KW - 1) + 1 - 2 * PW)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(min_H, min_H + 4)), draw(st.integers(min_W, min_W + 4)))
    kwargs = dict(kernel_size=(KH, KW), stride=stride, padding=(PH, PW), ceil_mode=ceil_mode)
    if dilation:
        kwargs["dilation"] = (DH, DW)
        SH, SW = stride or (KH, KW)
        # Such windows are an error here; PyTorch returns -inf and an out-of-range index for them.
        assume(not has_window_of_padding_only(shape[2], KH, SH, PH, DH, ceil_mode))
        assume(not has_window_of_padding_only(shape[3], KW, SW, PW, DW, ceil_mode))
    return shape, kwargs


def distinct_values(shape, seed):
    """Values at least 0.09 apart, so no max is a tie and a finite difference never changes the winner."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)) - 0.05 * size


# Windows at the borders, where ceil_mode and padding interact: a last window running past the
# input and its padding, one that PyTorch drops because it would start in the padding, and
# windows that start in the left padding. (H, W, kernel, stride, padding)
BORDER_CASES = [
    (4, 4, 3, 2, 0),  # ceil_mode: the last window covers column 2, 3 and one past the input
    (5, 5, 3, 2, 1),  # ceil_mode: the last window starts at 3 and ends in the right padding
    (6, 6, 3, 4, 1),  # ceil_mode would add a window starting at 7 = H + 1: dropped as PyTorch does
    (5, 7, (2, 4), (3, 2), (1, 2)),  # windows starting in the padding, non-square everything
    (1, 1, 2, 1, 1),  # a single pixel, every window mostly padding
]


@with_xp_fixture
@given(config=pool_configs(), seed=st.integers(0, 2**16))
def test_max_pool2d_gradcheck(xp, config, seed):
    shape, kwargs = config
    assert tinycnn.gradcheck(lambda x: F.max_pool2d(x, **kwargs), [leaf(distinct_values(shape, seed), xp)])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(config=pool_configs(), seed=st.integers(0, 2**16))
def test_max_pool2d_matches_torch(xp, dtype, config, seed):
    shape, kwargs = config
    x = distinct_values(shape, seed)
    compare_with_torch(lambda x: F.max_pool2d(x, **kwargs), lambda x: TF.max_pool2d(x, **kwargs),
                       [x], xp, dtype, f"max_pool2d {shape} {kwargs}")
    _, indices = F.max_pool2d(tinycnn.Tensor(xp.asarray(x, dtype=dtype)), return_indices=True, **kwargs)
    _, torch_indices = TF.max_pool2d(torch.tensor(x, dtype=getattr(torch, np.dtype(dtype).name)),
                                     return_indices=True, **kwargs)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices.numpy(), torch_indices.numpy())


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("H, W, kernel, stride, padding", BORDER_CASES)
def test_max_pool2d_border_windows_match_torch(H, W, kernel, stride, padding, ceil_mode):
    x = distinct_values((2, 2, H, W), 3)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    compare_with_torch(lambda x: F.max_pool2d(x, **kwargs), lambda x: TF.max_pool2d(x, **kwargs),
                       [x], np, np.float64, f"max_pool2d {x.shape} {kwargs}")


def test_max_pool2d_ties_go_to_the_first_pixel_and_overlaps_accumulate():
    x = leaf(np.array([[[[1.0, 1.0, 0.0],
                         [0.0, 0.0, 0.0],
                         [0.0, 0.0, 2.0]]]]))
    y, indices = F.max_pool2d(x, 2, stride=1, return_indices=True)
    # The tie in the first window goes to (0, 0), as PyTorch's scan; 2.0 wins only the last window.
    np.testing.assert_array_equal(indices.numpy(), [[[[0, 1], [3, 8]]]])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]])


@with_xp_fixture
@given(config=pool_configs(dilation=False), count_include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_avg_pool2d_gradcheck(xp, config, count_include_pad, seed):
    shape, kwargs = config
    x = leaf(np.random.default_rng(seed).uniform(-1, 1, shape), xp)
    assert tinycnn.gradcheck(lambda x: F.avg_pool2d(x, count_include_pad=count_include_pad, **kwargs), [x])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(config=pool_configs(dilation=False), count_include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_avg_pool2d_matches_torch(xp, dtype, config, count_include_pad, seed):
    shape, kwargs = config
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    compare_with_torch(lambda x: F.avg_pool2d(x, **kwargs), lambda x: TF.avg_pool2d(x, **kwargs),
                       [np.random.default_rng(seed).uniform(-1, 1, shape)], xp, dtype, f"avg_pool2d {shape} {kwargs}")


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("H, W, kernel, stride, padding", BORDER_CASES)
def test_avg_pool2d_border_windows_match_torch(H, W, kernel, stride, padding, ceil_mode, count_include_pad):
    x = np.random.default_rng(4).uniform(-1, 1, (2, 2, H, W))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)
    compare_with_torch(lambda x: F.avg_pool2d(x, **kwargs), lambda x: TF.avg_pool2d(x, **kwargs),
                       [x], np, np.float64, f"avg_pool2d {x.shape} {kwargs}")


@st.composite
def adaptive_configs(draw):
    """An input and an output_size: int or pair, None entries, bins that divide or not, more
    outputs than inputs (bins that overlap)."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    sizes = st.integers(1, 8)
    output_size = draw(sizes | st.tuples(sizes | st.none(), sizes | st.none()))
    return shape, output_size


@with_xp_fixture
@given(config=adaptive_configs(), seed=st.integers(0, 2**16))
def test_adaptive_avg_pool2d_gradcheck(xp, config, seed):
    shape, output_size = config
    x = leaf(np.random.default_rng(seed).uniform(-1, 1, shape), xp)
    assert tinycnn.gradcheck(lambda x: F.adaptive_avg_pool2d(x, output_size), [x])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(config=adaptive_configs(), seed=st.integers(0, 2**16))
def test_adaptive_avg_pool2d_matches_torch(xp, dtype, config, seed):
    shape, output_size = config
    compare_with_torch(lambda x: F.adaptive_avg_pool2d(x, output_size),
                       lambda x: TF.adaptive_avg_pool2d(x, output_size),
                       [np.random.default_rng(seed).uniform(-1, 1, shape)], xp, dtype,
                       f"adaptive_avg_pool2d {shape} -> {output_size}")


@pytest.mark.parametrize("shape, output_size", [((2, 3, 7, 5), (3, 2)), ((1, 2, 20, 20), 16), ((2, 4, 7, 7), 1)])
def test_adaptive_avg_pool2d_both_products_match_torch(monkeypatch, shape, output_size):
    # The averaging as A_H x A_W^T plane by plane, and as one product of all planes with A_H kron
    # A_W (small planes, functional/pooling.py's KRONECKER_VALUES), each forced in turn.
    from tinycnn.functional import pooling
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    for limit in (0, 1 << 30):
        monkeypatch.setattr(pooling, "KRONECKER_VALUES", limit)
        compare_with_torch(lambda x: F.adaptive_avg_pool2d(x, output_size),
                           lambda x: TF.adaptive_avg_pool2d(x, output_size), [x], np, np.float64,
                           f"adaptive_avg_pool2d {shape} -> {output_size}, Kronecker up to {limit} values")


def test_adaptive_avg_pool2d_bins_as_pytorch_defines_them():
    # H = 5 into 3 bins: [floor(0), ceil(5/3)) = [0, 2), [1, 4), [3, 5): overlapping by one.
    x = tinycnn.tensor(np.arange(5.0).reshape(1, 1, 5, 1))
    y = F.adaptive_avg_pool2d(x, (3, 1))
    np.testing.assert_allclose(y.data.ravel(), [0.5, 2.0, 3.5])


shapes_4d = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))


@with_xp_fixture
@given(shape=shapes_4d, seed=st.integers(0, 2**16))
def test_global_avg_pool2d_gradcheck(xp, shape, seed):
    x = leaf(np.random.default_rng(seed).uniform(-1, 1, shape), xp)
    assert tinycnn.gradcheck(F.global_avg_pool2d, [x])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(shape=shapes_4d, seed=st.integers(0, 2**16))
def test_global_avg_pool2d_matches_torch(xp, dtype, shape, seed):
    y = compare_with_torch(F.global_avg_pool2d, lambda x: x.mean(dim=(2, 3), keepdim=True),
                           [np.random.default_rng(seed).uniform(-1, 1, shape)], xp, dtype, f"global_avg_pool2d {shape}")
    assert y.shape == shape[:2] + (1, 1)


@pytest.mark.parametrize("call, error, text", [
    (lambda x: F.max_pool2d(x[0], 2), ValueError, "max_pool2d: expected a 4-D input (N, C, H, W), got shape (1, 5, 5)"),
    (lambda x: F.avg_pool2d(x[0, 0], 2), ValueError, "avg_pool2d: expected a 4-D input (N, C, H, W), got shape (5, 5)"),
    (lambda x: F.max_pool2d(x, 3, padding=2), ValueError,
     "max_pool2d: padding should be at most half of the kernel size, got padding (2, 2) for kernel_size (3, 3)"),
    (lambda x: F.avg_pool2d(x, (2, 4), padding=(1, 3)), ValueError, "avg_pool2d: padding should be at most half"),
    (lambda x: F.max_pool2d(x, 6), ValueError, "max_pool2d: kernel of size 6x6 (dilation (1, 1)) is larger than "
                                               "the padded input 5x5 (input (1, 1, 5, 5)"),
    (lambda x: F.avg_pool2d(x, (2, 8), padding=1), ValueError, "avg_pool2d: kernel of size 2x8"),
    (lambda x: F.max_pool2d(x, 2, stride=0), ValueError, "max_pool2d: stride must be positive, got (0, 0)"),
    (lambda x: F.max_pool2d(x, 0), ValueError, "max_pool2d: kernel_size must be positive, got (0, 0)"),
    (lambda x: F.max_pool2d(x, 2, dilation=0), ValueError, "max_pool2d: dilation must be positive"),
    (lambda x: F.avg_pool2d(x, 2.5), TypeError, "avg_pool2d: expected kernel_size as an int or a pair of ints, got 2.5"),
    (lambda x: F.max_pool2d(x, 2, stride=1, padding=1, dilation=6), ValueError,
     "max_pool2d: the window at output row 0 covers only padding"),
    (lambda x: F.adaptive_avg_pool2d(x, 0), ValueError, "adaptive_avg_pool2d: output_size must be positive, got 0"),
    (lambda x: F.adaptive_avg_pool2d(x, (1, 2, 3)), ValueError, "adaptive_avg_pool2d: expected output_size as an int or a pair"),
    (lambda x: F.adaptive_avg_pool2d(x[0], 2), ValueError, "adaptive_avg_pool2d: expected a 4-D input"),
    (lambda x: F.global_avg_pool2d(x[0]), ValueError, "global_avg_pool2d: expected a 4-D input (N, C, H, W), got shape (1, 5, 5)"),
])
def test_pooling_rejects_bad_input(call, error, text):
    with pytest.raises(error, match=re.escape(text)):
        call(tinycnn.tensor(np.zeros((1, 1, 5, 5))))


def test_stride_defaults_to_the_kernel_size():
    x = tinycnn.tensor(np.arange(36.0).reshape(1, 1, 6, 6))
    assert F.max_pool2d(x, (2, 3)).shape == (1, 1, 3, 2)
    assert F.avg_pool2d(x, 3).shape == (1, 1, 2, 2)
