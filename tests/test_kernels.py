"""The Numba kernels (tinycnn.kernels.cpu) against the NumPy reference, and the kernel dispatch.

Gathers and maxima (im2col, col2im, max pooling) must equal the reference exactly; kernels that
sum (average pooling, batch norm, LRN) within support.TOLERANCES, as their summation order or
accumulator width may differ. Configurations are drawn by Hypothesis: stride, padding, dilation,
ceil_mode, count_include_pad, non-square windows and inputs, batch 1, one channel, even LRN sizes.
"""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import tinycnn
from tinycnn import config
from tinycnn.kernels import cpu, reference

from support import assert_close

DTYPES = st.sampled_from([np.float32, np.float64])


def _array(seed, shape, dtype):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dtype)


def _assert_equal(actual, expected, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


@st.composite
def windows(draw, pooling=False, dilation=True):
    """(N, C, H, W) and a window (KH, KW, SH, SW, PH, PW, DH, DW) with at least one output.

    Pooling windows keep PyTorch's rule that padding is at most half the kernel."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # Dilation up to 3, as far as the dilated window (at most 9 wide) fits the largest input.
    DH = draw(st.integers(1, min(3, 8 // max(1, KH - 1)))) if dilation else 1
    DW = draw(st.integers(1, min(3, 8 // max(1, KW - 1)))) if dilation else 1
    PH = draw(st.integers(0, KH // 2 if pooling else 3))
    PW = draw(st.integers(0, KW // 2 if pooling else 3))
    # The smallest input a window (with its padding) fits in, up to 9.
    H = draw(st.integers(max(1, DH * (KH - 1) + 1 - 2 * PH), 9))
    W = draw(st.integers(max(1, DW * (KW - 1) + 1 - 2 * PW), 9))
    return (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW)


@given(windows(), DTYPES, st.integers(0, 2**16))
@example(((1, 1, 1, 1), (1, 1, 1, 1, 0, 0, 1, 1)), np.float32, 0)  # batch 1, one channel, one pixel
@example(((1, 2, 5, 7), (3, 2, 2, 3, 3, 1, 2, 1)), np.float64, 1)  # padding wider than the window
def test_im2col_equals_reference(shape_window, dtype, seed):
    shape, window = shape_window
    x = _array(seed, shape, dtype)
    _assert_equal(cpu.im2col(x, *window), reference.im2col(x, *window), f"im2col {shape} {window}")


@given(windows(), DTYPES, st.integers(0, 2**16))
@example(((1, 1, 7, 6), (3, 3, 1, 2, 1, 2, 2, 1)), np.float32, 0)  # overlapping dilated windows
def test_col2im_equals_reference(shape_window, dtype, seed):
    (N, C, H, W), window = shape_window
    KH, KW, SH, SW, PH, PW, DH, DW = window
    OH = reference.conv_output_size(H, KH, SH, PH, DH)
    OW = reference.conv_output_size(W, KW, SW, PW, DW)
    col = _array(seed, (N, C, KH, KW, OH, OW), dtype)
    # Both add the overlapping taps in the same (i, j) order, so the sums are equal to the bit.
    _assert_equal(cpu.col2im(col, H, W, SH, SW, PH, PW, DH, DW),
                  reference.col2im(col, H, W, SH, SW, PH, PW, DH, DW), f"col2im {(N, C, H, W)} {window}")


def test_im2col_tap_that_only_sees_the_left_padding():
    # Kernel width 3, dilation 2, padding 2 on a 1-pixel row: tap 0 lands at w = -2 for the only
    # output. Its valid range must be empty and within the OW outputs; a start past OW once made
    # im2col zero-fill past the row, over the next sample's column (seen as sample 0 convolving to 0).
    lo, hi = cpu._valid_range(0, 1, 1, 1, 2, 2)
    assert lo == hi and 0 <= lo <= 1
    window = (1, 3, 1, 1, 0, 2, 1, 2)
    for seed in range(50):  # the overwrite depended on thread timing, so try many inputs
        x = _array(seed, (2, 1, 1, 1), np.float32)
        _assert_equal(cpu.im2col(x, *window), reference.im2col(x, *window), f"im2col seed {seed}")


def test_im2col_of_a_non_contiguous_input():
    x = _array(0, (2, 3, 7, 6), np.float32).transpose(0, 1, 3, 2)  # (2, 3, 6, 7), not C-contiguous
    window = (3, 2, 2, 1, 1, 1, 1, 2)
    _assert_equal(cpu.im2col(x, *window), reference.im2col(x, *window), "im2col of a transposed input")


@given(windows(pooling=True), st.booleans(), DTYPES, st.integers(0, 2**16), st.booleans())
# ceil_mode: the rows keep a last partial window; the columns drop one that would start in the padding
@example(((1, 1, 6, 5), (3, 2, 3, 2, 1, 1, 1, 1)), True, np.float32, 0, True)
@example(((1, 1, 1, 1), (1, 2, 1, 1, 0, 1, 1, 2)), False, np.float32, 0, False)  # a window of padding only
def test_max_pool2d_equals_reference(shape_window, ceil_mode, dtype, seed, ties):
    (N, C, H, W), window = shape_window
    x = _array(seed, (N, C, H, W), dtype)
    if ties:  # few distinct values, so windows hold equal maxima: the first one must win
        x = np.round(x * 2).astype(dtype)
    y, argmax = cpu.max_pool2d_forward(x, *window, ceil_mode)
    y_ref, argmax_ref = reference.max_pool2d_forward(x, *window, ceil_mode)
    what = f"max_pool2d {(N, C, H, W)} {window} ceil_mode={ceil_mode}"
    _assert_equal(y, y_ref, what)
    _assert_equal(argmax, argmax_ref, what + " argmax")
    gy = _array(seed + 1, y.shape, dtype)
    if argmax.min() < 0 or argmax.max() >= H * W:
        # A dilated window of padding only has no winner in the input: its backward must refuse,
        # not write outside the gradient (F.max_pool2d rejects such windows up front).
        for implementation in (cpu, reference):
            with pytest.raises(ValueError, match="max_pool2d_backward: expected argmax indices"):
                implementation.max_pool2d_backward(gy, argmax, H, W)
        return
    # One pixel may win several overlapping windows; both sum its gradients in output order.
    _assert_equal(cpu.max_pool2d_backward(gy, argmax, H, W),
                  reference.max_pool2d_backward(gy, argmax_ref, H, W), what + " backward")


def test_max_pool2d_propagates_nan_as_the_reference():
    x = _array(0, (1, 2, 5, 5), np.float64)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 3, 4] = np.nan
    y, argmax = cpu.max_pool2d_forward(x, 3, 3, 2, 2, 1, 1, 1, 1, True)
    y_ref, argmax_ref = reference.max_pool2d_forward(x, 3, 3, 2, 2, 1, 1, 1, 1, True)
    _assert_equal(y, y_ref, "max_pool2d with NaN")
    _assert_equal(argmax, argmax_ref, "max_pool2d argmax with NaN")


@given(windows(pooling=True, dilation=False), st.booleans(), st.booleans(), DTYPES, st.integers(0, 2**16))
@example(((1, 1, 5, 4), (3, 2, 2, 3, 1, 1, 1, 1)), True, False, np.float32, 0)  # partial windows
def test_avg_pool2d_equals_reference(shape_window, ceil_mode, count_include_pad, dtype, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, _, _) = shape_window
    options = (KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad)
    x = _array(seed, (N, C, H, W), dtype)
    y = cpu.avg_pool2d_forward(x, *options)
    what = f"avg_pool2d {(N, C, H, W)} {options}"
    assert y.dtype == dtype, what
    assert_close(y, reference.avg_pool2d_forward(x, *options), dtype, what)
    gy = _array(seed + 1, y.shape, dtype)
    gx = cpu.avg_pool2d_backward(gy, H, W, *options)
    assert gx.dtype == dtype, what
    assert_close(gx, reference.avg_pool2d_backward(gy, H, W, *options), dtype, what + " backward")


@st.composite
def normalization_inputs(draw):
    """(N, C, ...) with 0, 1 or 2 trailing axes: batch norm and LRN see them as one."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    trailing = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    return (N, C, *trailing)


@given(normalization_inputs(), st.booleans(), DTYPES, st.integers(0, 2**16))
@example((1, 2), False, np.float32, 86)  # a channel whose mean is large beside its spread
def test_batch_norm_equals_reference(shape, affine, dtype, seed):
    if shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (2,) + shape[1:]  # one value per channel has no variance to normalise by
    x = _array(seed, shape, dtype) * 3 + 1
    C = shape[1]
    gamma = _array(seed + 1, (C,), dtype) if affine else None
    beta = _array(seed + 2, (C,), dtype) if affine else None
    what = f"batch_norm {shape} affine={affine}"
    outputs = cpu.batch_norm_forward_training(x, gamma, beta, 1e-5)
    expected = reference.batch_norm_forward_training(x, gamma, beta, 1e-5)
    for name, actual, oracle in zip(("y", "mean", "var", "inv_std"), outputs, expected):
        assert actual.dtype == dtype, f"{what} {name}: dtype {actual.dtype}"
        assert_close(actual, oracle, dtype, f"{what} {name}")
    _, mean, _, inv_std = expected
    gy = _array(seed + 3, shape, dtype)
    grads = cpu.batch_norm_backward(gy, x, gamma, mean, inv_std)
    for name, actual, oracle in zip(("gx", "ggamma", "gbeta"), grads,
                                    reference.batch_norm_backward(gy, x, gamma, mean, inv_std)):
        assert actual.dtype == dtype, f"{what} {name}: dtype {actual.dtype}"
        assert_close(actual, oracle, dtype, f"{what} {name}")


@given(normalization_inputs(), st.integers(1, 6), DTYPES, st.integers(0, 2**16))
def test_lrn_equals_reference(shape, size, dtype, seed):
    # Even sizes make the window lopsided ([c - size//2, c + (size-1)//2]) and the backward
    # window its mirror image, which a symmetric implementation would get wrong.
    alpha, beta, k = 0.3, 0.75, 2.0
    x = _array(seed, shape, dtype) * 2
    what = f"lrn {shape} size={size}"
    y, scale = cpu.lrn_forward(x, size, alpha, beta, k)
    y_ref, scale_ref = reference.lrn_forward(x, size, alpha, beta, k)
    assert y.dtype == scale.dtype == dtype, what
    assert_close(y, y_ref, dtype, what + " y")
    assert_close(scale, scale_ref, dtype, what + " scale")
    gy = _array(seed + 1, shape, dtype)
    gx = cpu.lrn_backward(x, y_ref, scale_ref, gy, size, alpha, beta)
    assert gx.dtype == dtype, what
    assert_close(gx, reference.lrn_backward(x, y_ref, scale_ref, gy, size, alpha, beta), dtype, what + " backward")


def test_dispatch_routes_numpy_arrays_by_config():
    x = np.zeros((1, 1, 3, 3))
    for name in tinycnn.kernels.PRIMITIVES:
        with config.using(kernels="auto"):
            assert tinycnn.kernels.implementation(name, x) is cpu, name
        with config.using(kernels="numba"):
            assert tinycnn.kernels.implementation(name, x) is cpu, name
        with config.using(kernels="numpy"):
            assert tinycnn.kernels.implementation(name, x) is reference, name
        assert callable(getattr(cpu, name)) and callable(getattr(reference, name)), name


def test_dispatch_calls_the_chosen_implementation():
    # A max-pool on a strided view: the dispatcher must hand the call to cpu or reference, whose
    # results agree, and the numpy setting must not load anything else.
    x = _array(3, (2, 3, 8, 8), np.float32)[:, :, ::2, 1::2]  # (2, 3, 4, 4) view
    with config.using(kernels="numpy"):
        y_numpy, argmax_numpy = tinycnn.kernels.max_pool2d_forward(x, 2, 2, 1, 1, 1, 0, 1, 1, False)
    with config.using(kernels="auto"):
        y_auto, argmax_auto = tinycnn.kernels.max_pool2d_forward(x, 2, 2, 1, 1, 1, 0, 1, 1, False)
    _assert_equal(y_auto, y_numpy, "dispatch max_pool2d")
    _assert_equal(argmax_auto, argmax_numpy, "dispatch max_pool2d argmax")


def test_set_kernels_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="kernels"):
        config.set_kernels("fortran")
    with pytest.raises(ValueError, match="kernels"):
        with config.using(kernels="cuda"):
            pass


def test_conv_pool_network_same_through_numba_and_reference():
    # End to end, through tinycnn.functional: the ops reach the kernels only via the dispatcher.
    import tinycnn.functional as F

    x = _array(0, (2, 1, 9, 9), np.float64)
    W = _array(1, (3, 1, 3, 3), np.float64)
    results = {}
    for kernels in ("numpy", "numba"):
        with config.using(kernels=kernels):
            xt, Wt = tinycnn.tensor(x, requires_grad=True), tinycnn.tensor(W, requires_grad=True)
            h = F.max_pool2d(F.conv2d(xt, Wt, padding=1, stride=2), 2, ceil_mode=True)
            loss = (F.avg_pool2d(h, 2, padding=1) * 1.5).sum()
            loss.backward()
            results[kernels] = (loss.numpy(), xt.grad, Wt.grad)
    for name, numba_value, numpy_value in zip(("loss", "gx", "gW"), results["numba"], results["numpy"]):
        assert_close(numba_value, numpy_value, np.float64, name)


# The conv2d kernels: the Numba version works a chunk of samples at a time on several threads; it
# must equal the reference's whole-batch products to round-off, whatever the thread count.

@st.composite
def convolutions(draw):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW) = draw(windows())
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if C % g == 0]))
    OC = groups * draw(st.integers(1, 3))
    return (N, C, H, W), (OC, C // groups, KH, KW), (SH, SW, PH, PW, DH, DW), groups


@given(convolutions(), DTYPES, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_conv2d_kernels_equal_reference(convolution, dtype, bias, one_sample_chunks, pixel_major, blas_products,
                                        seed):
    x_shape, w_shape, window, groups = convolution
    x = _array(seed, x_shape, dtype)
    W = _array(seed + 1, w_shape, dtype)
    b = _array(seed + 2, w_shape[:1], dtype) if bias else None
    settings = cpu.COLUMN_CHUNK, cpu.PIXEL_MAJOR_CHANNELS, cpu.SMALL_PRODUCT
    # Drawn inputs are small: one chunk unless the chunks are made one sample each (which also
    # takes the channel-major layout's one-sample path), and the channel-major layout unless the
    # pixel-major one is asked for at any channel count.
    cpu.COLUMN_CHUNK = 1 if one_sample_chunks else settings[0]
    cpu.PIXEL_MAJOR_CHANNELS = 1 if pixel_major else 10**9
    cpu.SMALL_PRODUCT = 0 if blas_products else settings[2]  # drawn weights are all "small"
    try:
        y = cpu.conv2d_forward(x, W, b, *window, groups)
        gy = _array(seed + 3, y.shape, dtype)
        grads = cpu.conv2d_backward(gy, x, W, *window, groups)
        weight_only = cpu.conv2d_backward(gy, x, W, *window, groups, needs_grad=(False, True, False))
        chunks = cpu._ConvGeometry(x, W, *window, groups).chunks
    finally:
        cpu.COLUMN_CHUNK, cpu.PIXEL_MAJOR_CHANNELS, cpu.SMALL_PRODUCT = settings
    assert len(chunks) == (x_shape[0] if one_sample_chunks else 1)
    assert_close(y, reference.conv2d_forward(x, W, b, *window, groups), dtype, what="conv2d_forward")
    expected = reference.conv2d_backward(gy, x, W, *window, groups)
    for actual, wanted, name in zip(grads, expected, ("gx", "gW", "gb")):
        assert_close(actual, wanted, dtype, what=f"conv2d_backward {name}")
    assert weight_only[0] is None and weight_only[2] is None
    np.testing.assert_array_equal(weight_only[1], grads[1])


def test_conv2d_kernels_give_the_same_bits_on_any_thread_count():
    # Big enough for several chunks on several threads; gW and gb add the chunks' shares in a
    # fixed order, so the thread count must not change a bit of the result.
    from tinycnn.kernels import parallel
    x = _array(0, (32, 16, 12, 12), np.float32)
    W = _array(1, (24, 16, 3, 3), np.float32)
    gy = _array(2, (32, 24, 12, 12), np.float32)
    results = []
    previous = parallel.get_num_threads()
    try:
        for threads in (1, 2, 3):
            parallel.set_num_threads(threads)
            results.append((cpu.conv2d_forward(x, W, W[:, 0, 0, 0], 1, 1, 1, 1, 1, 1, 1),)
                           + cpu.conv2d_backward(gy, x, W, 1, 1, 1, 1, 1, 1, 1))
    finally:
        parallel.set_num_threads(previous)
    assert len(cpu._conv_chunks(32, 16 * 9 * 144, 32 * 24 * 16 * 9 * 144)) > 1
    for other in results[1:]:
        for actual, expected in zip(other, results[0]):
            np.testing.assert_array_equal(actual, expected)
    # Against the reference in float64: gW and gb add 4,608 products each, and float32 sums in two
    # different orders can differ by more than the float32 tolerance where they nearly cancel.
    x64, W64, gy64 = x.astype(np.float64), W.astype(np.float64), gy.astype(np.float64)
    expected = (reference.conv2d_forward(x64, W64, W64[:, 0, 0, 0], 1, 1, 1, 1, 1, 1, 1),) \
        + reference.conv2d_backward(gy64, x64, W64, 1, 1, 1, 1, 1, 1, 1)
    for actual, wanted, name in zip(results[0], expected, ("y", "gx", "gW", "gb")):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("x_shape, w_shape, window", [
    ((4, 16, 1, 1), (8, 16, 3, 3), (1, 1, 1, 1, 1, 1)),  # a ResNet's last stage on 32x32 images
    ((4, 16, 2, 2), (8, 16, 3, 3), (2, 2, 1, 1, 1, 1)),  # stride 2: the first row and column are dead
    ((2, 3, 3, 2), (5, 3, 3, 3), (1, 1, 2, 1, 3, 1)),  # dilated rows: the top tap lands under the input
    ((2, 3, 1, 1), (2, 3, 3, 3), (1, 1, 3, 3, 3, 3)),  # every tap lands in the padding
])
@pytest.mark.parametrize("pixel_major", [False, True])
def test_conv2d_kernels_cut_taps_that_only_see_padding(x_shape, w_shape, window, pixel_major, monkeypatch):
    monkeypatch.setattr(cpu, "PIXEL_MAJOR_CHANNELS", 1 if pixel_major else 10**9)
    x = _array(0, x_shape, np.float64)
    W = _array(1, w_shape, np.float64)
    y = cpu.conv2d_forward(x, W, W[:, 0, 0, 0], *window, 1)
    assert_close(y, reference.conv2d_forward(x, W, W[:, 0, 0, 0], *window, 1), np.float64, what="y")
    gy = _array(2, y.shape, np.float64)
    grads = cpu.conv2d_backward(gy, x, W, *window, 1)
    for actual, wanted, name in zip(grads, reference.conv2d_backward(gy, x, W, *window, 1), ("gx", "gW", "gb")):
        assert_close(actual, wanted, np.float64, what=name)
    if x_shape[2:] == (1, 1) and window[2:4] == (1, 1):
        assert cpu._ConvGeometry(x, W, *window, 1).K == x_shape[1]  # only the centre tap is computed


@pytest.mark.parametrize("M, K, N", [(1, 3, 4), (64, 800, 500), (500, 64, 800), (300, 70, 100), (2, 2000, 1000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_equals_reference_when_split_across_threads(M, K, N, dtype):
    a = _array(0, (M, K), dtype)
    b = _array(1, (N, K), dtype).T  # transposed, as Linear passes its weight
    assert_close(cpu.matmul(a, b), reference.matmul(a, b), dtype, what=f"matmul {M}x{K}x{N}")
    assert cpu.matmul(a, b).dtype == dtype


@pytest.mark.parametrize("x_shape, w_shape, window, groups", [
    ((64, 20, 12, 12), (50, 20, 5, 5), (1, 1, 0, 0, 1, 1), 1),  # LeNet's second layer: pixel-major
    ((16, 1, 28, 28), (20, 1, 5, 5), (1, 1, 0, 0, 1, 1), 1),  # LeNet's first: the small weight product
    ((8, 64, 20, 20), (64, 64, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # wide rows: channel-major, one sample a chunk
    ((8, 32, 9, 9), (48, 32, 3, 3), (2, 2, 1, 1, 1, 1), 1),  # strided, pixel-major
    ((16, 24, 20, 20), (48, 8, 3, 3), (1, 1, 2, 2, 2, 2), 3),  # grouped and dilated
    ((32, 512, 1, 1), (256, 512, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # dead taps cut, products split in two
])
def test_conv2d_kernels_at_real_sizes_equal_reference(x_shape, w_shape, window, groups):
    # Layers big enough for several chunks on every kernel thread, against the float64 reference.
    x = _array(0, x_shape, np.float32)
    W = _array(1, w_shape, np.float32)
    b = _array(2, w_shape[:1], np.float32)
    assert len(cpu._ConvGeometry(x, W, *window, groups).chunks) > 1
    y = cpu.conv2d_forward(x, W, b, *window, groups)
    gy = _array(3, y.shape, np.float32)
    grads = cpu.conv2d_backward(gy, x, W, *window, groups)
    x64, W64, b64, gy64 = (a.astype(np.float64) for a in (x, W, b, gy))
    expected = (reference.conv2d_forward(x64, W64, b64, *window, groups),) \
        + reference.conv2d_backward(gy64, x64, W64, *window, groups)
    OC, C_group, KH, KW = w_shape
    terms = {"y": C_group * KH * KW, "gx": OC // groups * KH * KW, "gW": y.shape[0] * y.shape[2] * y.shape[3]}
    terms["gb"] = terms["gW"]
    for actual, wanted, name in zip((y,) + grads, expected, ("y", "gx", "gW", "gb")):
        assert actual.dtype == np.float32, name
        # Each value sums `terms` float32 products of numbers in [-1, 1]: allow 1e-6 per term.
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6 * terms[name], err_msg=name)
