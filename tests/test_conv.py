"""conv2d and pad: gradients, agreement with PyTorch and with a naive loop, and bad input."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tinycnn
import tinycnn.functional as F
from tinycnn.functional.conv import Conv2d
from functional_support import compare_with_torch, leaf, with_xp_fixture
from support import assert_close

DTYPES = [np.float32, np.float64]
# torch warns that its own 'same' with an even kernel copies the input; that is its business.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


@st.composite
def conv_configs(draw, paddings=("numbers", "numbers", "same", "valid")):
    """A small convolution: shapes and keyword arguments that PyTorch accepts.

    Covers batch 1, one channel, non-square kernels and strides, padding above 1, dilation,
    groups up to 3, 'same' with even kernels and 'valid'.
    """
    groups = draw(st.integers(1, 3))
    C = groups * draw(st.integers(1, 2))
    OC = groups * draw(st.integers(1, 2))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    DH, DW = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding_kind = draw(st.sampled_from(paddings))
    if padding_kind == "numbers":
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        # The smallest input the dilated kernel fits in once padded.
        min_H = max(1, DH * (KH - 1) + 1 - 2 * padding[0])
        min_W = max(1, DW * (KW - 1) + 1 - 2 * padding[1])
    else:
        stride, padding = 1, padding_kind
        # 'same' pads any input enough; 'valid' needs the dilated kernel to fit unpadded.
        min_H = 1 if padding == "same" else DH * (KH - 1) + 1
        min_W = 1 if padding == "same" else DW * (KW - 1) + 1
    H, W = draw(st.integers(min_H, min_H + 3)), draw(st.integers(min_W, min_W + 3))
    N = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    kwargs = dict(stride=stride, padding=padding, dilation=(DH, DW), groups=groups)
    return dict(x=(N, C, H, W), W=(OC, C // groups, KH, KW), bias=bias, kwargs=kwargs)


def conv_arrays(config, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, config["x"]), rng.uniform(-1, 1, config["W"])]
    if config["bias"]:
        arrays.append(rng.uniform(-1, 1, config["W"][:1]))
    return arrays


@with_xp_fixture
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_gradcheck(xp, config, seed):
    inputs = [leaf(a, xp) for a in conv_arrays(config, seed)]
    assert tinycnn.gradcheck(lambda *t: F.conv2d(*t, **config["kwargs"]), inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(xp, dtype, config, seed):
    y = compare_with_torch(lambda *t: F.conv2d(*t, **config["kwargs"]),
                           lambda *t: torch.nn.functional.conv2d(*t, **config["kwargs"]),
                           conv_arrays(config, seed), xp, dtype, f"conv2d {config}")
    if config["kwargs"]["padding"] == "same":
        assert y.shape[2:] == config["x"][2:]


def naive_conv2d(x, W, b, stride, padding, dilation, groups):
    """The definition of a grouped, strided, dilated, zero-padded cross-correlation, one product
    at a time: an oracle that shares nothing with im2col."""
    N, C, H, W_in = x.shape
    OC, C_group, KH, KW = W.shape
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    OW = (W_in + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    OC_group = OC // groups
    y = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for oc in range(OC):
            g = oc // OC_group
            for oh in range(OH):
                for ow in range(OW):
                    total = 0.0 if b is None else b[oc]
                    for c in range(C_group):
                        for i in range(KH):
                            for j in range(KW):
                                h = oh * SH - PH + i * DH
                                w = ow * SW - PW + j * DW
                                if 0 <= h < H and 0 <= w < W_in:
                                    total += W[oc, c, i, j] * x[n, g * C_group + c, h, w]
                    y[n, oc, oh, ow] = total
    return y


@given(config=conv_configs(paddings=("numbers",)), seed=st.integers(0, 2**16))
def test_conv2d_matches_naive_loop(config, seed):
    kwargs = config["kwargs"]
    x, W, *b = conv_arrays(config, seed)
    b = b[0] if b else None
    y = F.conv2d(tinycnn.tensor(x), tinycnn.tensor(W), None if b is None else tinycnn.tensor(b), **kwargs)
    expected = naive_conv2d(x, W, b, kwargs["stride"], kwargs["padding"], kwargs["dilation"], kwargs["groups"])
    assert_close(y, expected, np.float64, f"conv2d {config}")


def test_conv2d_takes_ints_like_torch():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y = F.conv2d(tinycnn.tensor(x), tinycnn.tensor(W), tinycnn.tensor(b), 2, 1, 2)
    expected = torch.nn.functional.conv2d(*map(torch.tensor, (x, W, b)), 2, 1, 2)
    assert_close(y, expected, np.float64, "conv2d with int arguments")


@pytest.mark.parametrize("kernel, dilation", [((2, 4), 1), ((2, 3), (1, 2)), ((4, 1), (3, 1))])
def test_same_padding_with_even_kernels_puts_the_extra_row_at_the_bottom(kernel, dilation):
    # An asymmetric split is visible in the values: compare with torch, which pads bottom/right.
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((1, 2, 5, 6)), rng.standard_normal((3, 2) + kernel)
    compare_with_torch(lambda x, W: F.conv2d(x, W, padding="same", dilation=dilation),
                       lambda x, W: torch.nn.functional.conv2d(x, W, padding="same", dilation=dilation),
                       [x, W], np, np.float64, f"conv2d same {kernel} {dilation}")


def test_conv2d_computes_only_the_gradients_asked_for():
    rng = np.random.default_rng(2)
    x = leaf(rng.standard_normal((1, 2, 4, 4)))
    W = tinycnn.tensor(rng.standard_normal((3, 2, 2, 2)))
    b = tinycnn.tensor(rng.standard_normal(3))
    function = Conv2d()
    y = function(x, W, b)
    gx, gW, gb = function.backward(np.ones(y.shape))
    assert gx is not None and gx.shape == x.shape
    assert gW is None and gb is None


def test_conv2d_shape_only_mode_returns_zeros_of_the_output_shape():
    x = tinycnn.tensor(np.ones((2, 4, 9, 7), dtype=np.float32))
    W = tinycnn.tensor(np.ones((6, 2, 3, 2), dtype=np.float32))
    with tinycnn.config.using(shape_only=True):
        y = F.conv2d(x, W, stride=(2, 1), padding=1, groups=2)
        with pytest.raises(ValueError, match="conv2d"):
            F.conv2d(x, W, groups=3)
    assert y.shape == (2, 6, 5, 8) and y.dtype == np.float32
    assert not y.data.any()


def conv_error(x_shape, W_shape, **kwargs):
    """The message of the error conv2d raises for float64 zeros of these shapes."""
    with pytest.raises((ValueError, TypeError)) as info:
        F.conv2d(tinycnn.tensor(np.zeros(x_shape)), tinycnn.tensor(np.zeros(W_shape)), **kwargs)
    return str(info.value)


def test_conv2d_rejects_wrong_rank():
    message = conv_error((3, 5, 5), (2, 3, 3, 3))
    assert message.startswith("conv2d") and "4-D input" in message and "(3, 5, 5)" in message
    message = conv_error((1, 3, 5, 5), (2, 3, 3))
    assert message.startswith("conv2d") and "4-D weight" in message and "(2, 3, 3)" in message


def test_conv2d_rejects_channel_mismatch():
    message = conv_error((1, 3, 5, 5), (2, 4, 3, 3))
    assert message.startswith("conv2d") and "(1, 3, 5, 5)" in message and "(2, 4, 3, 3)" in message
    assert "3 channels" in message and "expects 4" in message


def test_conv2d_rejects_kernel_larger_than_padded_input():
    message = conv_error((1, 1, 3, 4), (1, 1, 3, 3), padding=(0, 0), dilation=2)
    assert message.startswith("conv2d") and "(1, 1, 3, 4)" in message and "(1, 1, 3, 3)" in message
    assert "dilated 5x5" in message and "padded input 3x4" in message
    # The same kernel fits once padded.
    F.conv2d(tinycnn.tensor(np.zeros((1, 1, 3, 4))), tinycnn.tensor(np.zeros((1, 1, 3, 3))), padding=1, dilation=2)


def test_conv2d_rejects_groups_that_do_not_divide_the_channels():
    message = conv_error((1, 4, 5, 5), (3, 1, 3, 3), groups=4)
    assert message.startswith("conv2d") and "groups=4" in message and "3 output channels" in message
    message = conv_error((1, 5, 5, 5), (4, 2, 3, 3), groups=2)
    assert message.startswith("conv2d") and "5 channels" in message and "groups=2" in message


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(stride=0), ValueError, "stride must be positive, got (0, 0)"),
    (dict(dilation=(1, -1)), ValueError, "dilation must be positive, got (1, -1)"),
    (dict(padding=(-1, 0)), ValueError, "padding must be non-negative, got (-1, 0)"),
    (dict(stride=1.5), TypeError, "stride as an int or a pair of ints, got 1.5"),
    (dict(groups=0), ValueError, "groups must be positive, got 0"),
    (dict(padding="full"), ValueError, "'same' or 'valid', got 'full'"),
    (dict(padding="same", stride=2), ValueError, "not supported for strided convolutions"),
])
def test_conv2d_rejects_bad_hyper_parameters(kwargs, error, text):
    with pytest.raises(error, match=re.escape(text)):
        F.conv2d(tinycnn.tensor(np.zeros((1, 1, 5, 5))), tinycnn.tensor(np.zeros((1, 1, 3, 3))), **kwargs)


def test_conv2d_rejects_dtype_mismatch_and_wrong_bias():
    x = tinycnn.tensor(np.zeros((1, 2, 5, 5), dtype=np.float32))
    W = tinycnn.tensor(np.zeros((3, 2, 3, 3), dtype=np.float64))
    with pytest.raises(TypeError, match=r"conv2d: input and weight must have the same dtype, got float32 and float64"):
        F.conv2d(x, W)
    x = tinycnn.tensor(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match=re.escape("conv2d: expected a bias of shape (3,) for weight (3, 2, 3, 3), got (2,)")):
        F.conv2d(x, W, tinycnn.tensor(np.zeros(2)))


@st.composite
def pad_configs(draw):
    """A 1- to 4-D input and a torch pad tuple for 1 to ndim of its last axes, with crops."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    axes = draw(st.integers(1, len(shape)))
    pads = []
    for size in reversed(shape[-axes:]):  # torch lists the last axis first
        before = draw(st.integers(-(size - 1), 3))
        after = draw(st.integers(-(size - 1 + min(before, 0)), 3))
        pads += [before, after]
    return shape, tuple(pads)


@given(config=pad_configs(), value=st.sampled_from([0.0, -1.5]))
def test_pad_gradcheck(config, value):
    shape, pads = config
    x = leaf(np.random.default_rng(0).uniform(-1, 1, shape))
    assert tinycnn.gradcheck(lambda t: F.pad(t, pads, value=value), [x])


@pytest.mark.parametrize("dtype", DTYPES)
@with_xp_fixture
@given(config=pad_configs(), value=st.sampled_from([0.0, 2.0]))
def test_pad_matches_torch(xp, dtype, config, value):
    shape, pads = config
    x = np.random.default_rng(1).uniform(-1, 1, shape)
    compare_with_torch(lambda t: F.pad(t, pads, value=value),
                       lambda t: torch.nn.functional.pad(t, pads, value=value), [x], xp, dtype, f"pad {pads}")


def test_pad_negative_amounts_crop():
    x = tinycnn.tensor(np.arange(12.0).reshape(1, 1, 3, 4))
    y = F.pad(x, (-1, 1, 0, -2))  # crop column 0, add a zero column, crop the last two rows
    np.testing.assert_array_equal(y.data, [[[[1.0, 2.0, 3.0, 0.0]]]])


@pytest.mark.parametrize("call, error, text", [
    (lambda x: F.pad(x, (1, 1), mode="reflect"), ValueError, "pad: only mode='constant' is implemented, got mode='reflect'"),
    (lambda x: F.pad(x, (1, 1, 1)), ValueError, "pad: expected an even number of padding values"),
    (lambda x: F.pad(x, (1,) * 10), ValueError, "pad: 10 padding values pad 5 axes, but the input of shape (1, 1, 3, 4) has only 4"),
    (lambda x: F.pad(x, (-3, -2)), ValueError, "pad: padding (-3, -2) crops axis 3 of size 4 below zero"),
    (lambda x: F.pad(x, (1.0, 1)), TypeError, "pad: expected pad as a sequence of ints"),
])
def test_pad_rejects_bad_arguments(call, error, text):
    with pytest.raises(error, match=re.escape(text)):
        call(tinycnn.tensor(np.zeros((1, 1, 3, 4))))
