"""conv2d's nogil chunks (kernels/cpu_conv_chunks.py) against PyTorch, and against the Python
chunks they replace, bit for bit.

Each test routes drawn layers to one layout of kernels/cpu_conv.py (a product per sample for 1x1
layers, channel-major by blocks of output rows or by several samples, pixel-major) by setting the
module's thresholds, checks that the plan took that layout, and compares the result with
torch.nn.functional.conv2d in float64 (and inference's BatchNorm, residual and ReLU where fused),
then with the same call made with kernels/cpu_blas.py off, where the Python chunks run with
np.matmul: the same sgemm calls in the same order, so the same bits.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import assume, given, strategies as st

from support import conv_layers, inference_statistics, numpy_blas_name, random_array
from tinycnn.kernels import cpu, cpu_blas, cpu_conv
from tinycnn.kernels.reference import conv_output_size

pytestmark = pytest.mark.skipif(numpy_blas_name() != "scipy-openblas",
                                reason="the nogil chunks call NumPy's own OpenBLAS (scipy-openblas) by address")

LAYOUTS = ["per_sample", "channel_major_rows", "channel_major_samples", "pixel_major"]


def _route(patch, layout, layer):
    """Set cpu_conv's thresholds so that `layer` takes `layout` (im2col's paths only)."""
    N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    for switch in ("WINOGRAD", "TAPS", "DENSE"):
        patch.setattr(cpu_conv, switch, False)
    patch.setattr(cpu_conv, "PER_SAMPLE_PIXELS", 1 if layout == "per_sample" else 10**9)
    pixel_major = layout == "pixel_major"
    patch.setattr(cpu_conv, "PIXEL_MAJOR_CHANNELS", 1 if pixel_major else 10**9)
    patch.setattr(cpu_conv, "PIXEL_MAJOR_WIDTH", 10**9)
    if layout == "channel_major_rows":
        # A chunk per sample, its columns in blocks: blocks when C*KH*KW*L > COLUMN_CHUNK, which
        # at 4 times the weight needs L*G > 4*OC; each block then takes a few output rows.
        patch.setattr(cpu_conv, "COLUMN_CHUNK", 4 * OC * (C // G) * KH * KW)
    cpu_conv._cached_conv_plan.cache_clear()


def _plan(layer):
    N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    return cpu_conv._conv_plan((N, C, H, W), (OC, C // G, KH, KW), SH, SW, PH, PW, DH, DW, G)


def _took(layout, plan):
    """Whether the plan runs `layout` for every chunk."""
    if layout == "per_sample":
        return plan.per_sample
    if layout == "pixel_major":
        return plan.pixel_major
    channel_major = not plan.per_sample and not plan.pixel_major
    if layout == "channel_major_rows":
        # (a 1x1 layer's sample is read in place, without blocks)
        return (channel_major and (len(plan.row_blocks) > 1 or plan.pointwise)
                and all(stop - start == 1 for start, stop in plan.chunks))
    return channel_major and any(stop - start > 1 for start, stop in plan.chunks)


@st.composite
def routed_layers(draw, layout):
    """A layer (N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW, groups) that the
    layout can take: 1x1 at stride 1 with at least 2 pixels for per_sample, at least two samples
    for channel_major_samples, a kernel one row tall on more than 8 output rows for
    channel_major_rows, one group for pixel_major. Every product has two sides and an inner axis
    longer than 1 (at least two channels a group in and out): np.matmul makes a product with a
    side of 1 by gemv or by its own loop, in another order than sgemm, and the bits differ."""
    N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW = draw(conv_layers(3, 9, 3))
    G = draw(st.sampled_from([1, 2, 3])) if layout != "pixel_major" else 1
    C, OC = max(C, 2) * G, max(OC, 2) * G
    if layout == "per_sample":
        KH = KW = SH = SW = DH = DW = 1
        PH = PW = 0
        H, W = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    if layout == "channel_major_samples":
        N = draw(st.integers(2, 4))
    if layout == "channel_major_rows":  # blocks need L * G > 4 * OC = 8 * G (see _route)
        OC = 2 * G
        KH, SH, DH, SW, PH = 1, 1, 1, 1, draw(st.integers(0, 1))
        H, W = draw(st.integers(9, 12)), draw(st.integers(6, 9))  # OW >= 2: each block two columns or more
    assume(N * conv_output_size(H, KH, SH, PH, DH) * conv_output_size(W, KW, SW, PW, DW) >= 2)
    return N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW, G


def _torch(x, W, b, layer):
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    as_torch = (lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64)))
    return torch_F.conv2d(as_torch(x), as_torch(W), as_torch(b), stride=(SH, SW), padding=(PH, PW),
                          dilation=(DH, DW), groups=G).numpy()


def _assert_matches_torch(y, expected, terms, dtype):
    # As tests/test_winograd.py: 1e-6 per summed term in float32, 2e-15 in float64.
    per_term = 1e-6 if dtype == np.float32 else 2e-15
    assert y.shape == expected.shape and y.dtype == dtype
    np.testing.assert_allclose(y, expected, rtol=10 * per_term, atol=per_term * terms)


def _drawn_inputs(data, layout, dtype, seed):
    """A layer the layout can take, drawn from `data`, with its window (SH, SW, PH, PW, DH, DW,
    groups), random x and W of `dtype` in [-1, 1], and the generator that made them."""
    layer = data.draw(routed_layers(layout))
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    rng = np.random.default_rng(seed)
    x = random_array(rng, (N, C, H, Wd), dtype)
    W = random_array(rng, (OC, C // G, KH, KW), dtype)
    return layer, (SH, SW, PH, PW, DH, DW, G), x, W, rng


@pytest.mark.parametrize("layout", LAYOUTS)
@given(st.data(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**32 - 1))
def test_forward_chunks_match_torch_and_the_python_chunks(layout, data, dtype, bias, seed):
    layer, window, x, W, rng = _drawn_inputs(data, layout, dtype, seed)
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    b = random_array(rng, (OC,), dtype) if bias else None
    with pytest.MonkeyPatch.context() as patch:  # (not the fixture: one per drawn example)
        _route(patch, layout, layer)
        assert _took(layout, _plan(layer)), (layout, layer)
        y = cpu.conv2d_forward(x, W, b, *window)
        _assert_matches_torch(y, _torch(x, W, b, layer), C // G * KH * KW, dtype)
        patch.setattr(cpu_blas, "ENABLED", False)
        np.testing.assert_array_equal(y, cpu.conv2d_forward(x, W, b, *window))


@pytest.mark.parametrize("layout", LAYOUTS)
@given(st.data(), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_fused_inference_chunks_match_torch_and_the_python_chunks(layout, data, residual, relu, seed):
    # conv2d_batch_norm_relu_inference normalises each chunk's rows inside the same nogil call.
    layer, window, x, W, rng = _drawn_inputs(data, layout, np.float32, seed)
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    gamma, beta, mean, inv_std = inference_statistics(seed, OC, np.float32)
    expected = _torch(x, W, None, layer)
    shift = random_array(rng, expected.shape, np.float32) if residual else None
    arguments = (gamma, beta, mean, inv_std, shift, relu)
    with pytest.MonkeyPatch.context() as patch:
        _route(patch, layout, layer)
        assert _took(layout, _plan(layer)), (layout, layer)
        y = cpu.conv2d_batch_norm_relu_inference(x, W, None, *window, *arguments)
        per_channel = (lambda a: a.astype(np.float64)[None, :, None, None])
        expected = (expected - per_channel(mean)) * per_channel(inv_std) * per_channel(gamma) + per_channel(beta)
        if residual:
            expected = expected + shift
        if relu:
            expected = np.maximum(expected, 0)
        # the convolution's error, scaled by the gain gamma * inv_std (under 4 with these statistics)
        _assert_matches_torch(y, expected, 4 * C // G * KH * KW, np.float32)
        patch.setattr(cpu_blas, "ENABLED", False)
        np.testing.assert_array_equal(y, cpu.conv2d_batch_norm_relu_inference(x, W, None, *window, *arguments))


def test_a_1x1_layer_with_a_chunk_per_sample_reads_the_sample_in_place():
    # Channel-major, one sample a chunk, a 1x1 window at stride 1: the product reads x itself.
    layer = (3, 4, 4, 9, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2)
    rng = np.random.default_rng(0)
    x, W, b = random_array(rng, (3, 4, 9, 6), np.float32), random_array(rng, (4, 2, 1, 1), np.float32), \
        random_array(rng, (4,), np.float32)
    with pytest.MonkeyPatch.context() as patch:
        _route(patch, "channel_major_rows", layer)
        plan = _plan(layer)
        assert plan.pointwise and not plan.per_sample and all(stop - start == 1 for start, stop in plan.chunks)
        y = cpu.conv2d_forward(x, W, b, 1, 1, 0, 0, 1, 1, 2)
        _assert_matches_torch(y, _torch(x, W, b, layer), 2, np.float32)
        patch.setattr(cpu_blas, "ENABLED", False)
        np.testing.assert_array_equal(y, cpu.conv2d_forward(x, W, b, 1, 1, 0, 0, 1, 1, 2))


def _torch_gradients(gy, x, W, b, layer):
    """(gx, gW, gb) of torch.nn.functional.conv2d in float64, by autograd."""
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    leaves = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in (x, W, b)]
    y = torch_F.conv2d(*leaves, stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW), groups=G)
    y.backward(torch.from_numpy(np.asarray(gy, dtype=np.float64)))
    return tuple(leaf.grad.numpy() for leaf in leaves)


@pytest.mark.parametrize("layout", LAYOUTS)
@given(st.data(), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([(True, True, True), (True, False, False), (False, True, False), (False, True, True),
                        (True, True, False)]), st.integers(0, 2**32 - 1))
def test_backward_chunks_match_torch_and_the_python_chunks(layout, data, dtype, needs_grad, seed):
    layer, window, x, W, rng = _drawn_inputs(data, layout, dtype, seed)
    N, C, OC, H, Wd, KH, KW, SH, SW, PH, PW, DH, DW, G = layer
    gy = random_array(rng, _torch(x, W, None, layer).shape, dtype)
    with pytest.MonkeyPatch.context() as patch:
        _route(patch, layout, layer)
        plan = _plan(layer)
        assert _took(layout, plan), (layout, layer)
        gradients = cpu.conv2d_backward(gy, x, W, *window, needs_grad)
        expected = _torch_gradients(gy, x, W, np.zeros(OC), layer)
        terms = (OC // G * KH * KW, N * gy.shape[2] * gy.shape[3], N * gy.shape[2] * gy.shape[3])
        for name, actual, wanted, wanted_terms, needed in zip(("gx", "gW", "gb"), gradients, expected, terms,
                                                              needs_grad):
            assert (actual is None) == (not needed), name
            if needed:
                _assert_matches_torch(actual, wanted, wanted_terms, dtype)
        patch.setattr(cpu_blas, "ENABLED", False)
        python_gradients = cpu.conv2d_backward(gy, x, W, *window, needs_grad)
        # All bit for bit but gb, which a one-sample chunk sums in another order than NumPy's
        # pairwise sum: as for torch, a round-off per summed term.
        for name, actual, python in zip(("gx", "gW", "gb"), gradients, python_gradients):
            if actual is not None and name != "gb":
                np.testing.assert_array_equal(actual, python, err_msg=name)
            elif actual is not None:
                _assert_matches_torch(actual, python, terms[2], dtype)


@pytest.mark.parametrize("x_shape, w_shape, padding, groups, layout", [
    ((2, 64, 40, 40), (64, 64, 3, 3), 1, 1, "rows"),  # one sample a chunk, its columns in blocks of rows
    ((8, 256, 14, 14), (128, 256, 1, 1), 0, 1, "per_sample"),  # 1x1: a product per sample
    ((8, 32, 16, 16), (32, 32, 3, 3), 1, 1, "samples"),  # several samples a chunk, dW as (K, OC)
    ((8, 512, 4, 4), (256, 512, 3, 3), 1, 1, "samples"),  # a weight over COLUMN_CHUNK values: dW as (OC, K)
    ((2, 128, 14, 14), (128, 64, 3, 3), 1, 2, "grouped"),  # two groups, each a BLAS product
    ((4, 192, 14, 14), (128, 96, 1, 1), 0, 2, "per_sample"),  # and a grouped 1x1 layer
    ((64, 20, 12, 12), (50, 20, 5, 5), 0, 1, "pixel_major"),  # LeNet's second layer
])
def test_chunks_at_real_layer_sizes_give_the_python_chunks_bits(x_shape, w_shape, padding, groups, layout):
    # Products big enough for OpenBLAS (no _small_product), in float32 as networks run, with the
    # layouts cpu_conv's rules choose for these layers (Winograd and the tap products off).
    rng = np.random.default_rng(0)
    x, W, b = random_array(rng, x_shape, np.float32), random_array(rng, w_shape, np.float32), \
        random_array(rng, w_shape[:1], np.float32)
    window = (1, 1, padding, padding, 1, 1, groups)
    with pytest.MonkeyPatch.context() as patch:
        for switch in ("WINOGRAD", "TAPS", "DENSE"):
            patch.setattr(cpu_conv, switch, False)
        cpu_conv._cached_conv_plan.cache_clear()
        plan = cpu_conv._conv_plan(x_shape, w_shape, *window)
        one_sample = all(stop - start == 1 for start, stop in plan.chunks)
        assert {"rows": one_sample and len(plan.row_blocks) > 1, "per_sample": plan.per_sample,
                "samples": not plan.pixel_major and not one_sample, "pixel_major": plan.pixel_major,
                "grouped": plan.G == 2 and not plan.per_sample}[layout]
        y = cpu.conv2d_forward(x, W, b, *window)
        gy = random_array(rng, y.shape, np.float32)
        needs_grad = (not plan.input_gradient_by_convolution, True, True)
        gradients = cpu.conv2d_backward(gy, x, W, *window, needs_grad)
        layer = x_shape[:2] + (w_shape[0],) + x_shape[2:] + w_shape[2:] + window
        _assert_matches_torch(y, _torch(x, W, b, layer), np.prod(w_shape[1:]), np.float32)
        for actual, wanted, terms in zip(gradients, _torch_gradients(gy, x, W, b, layer),
                                         (w_shape[0] // groups * np.prod(w_shape[2:]), gy[:, 0].size, gy[:, 0].size)):
            if actual is not None:
                _assert_matches_torch(actual, wanted, terms, np.float32)
        patch.setattr(cpu_blas, "ENABLED", False)
        np.testing.assert_array_equal(y, cpu.conv2d_forward(x, W, b, *window))
        python_gradients = cpu.conv2d_backward(gy, x, W, *window, needs_grad)
        for name, actual, python in zip(("gx", "gW"), gradients, python_gradients):
            if actual is not None:
                np.testing.assert_array_equal(actual, python, err_msg=name)
