"""conv2d's forward as one product with the layer's whole linear map (kernels/cpu_conv_dense.py),
against PyTorch.

dense_conv2d_forward is called directly on drawn layers (kernels of 1 to 4 taps along each axis,
strides 1-3, dilations 1-2, padding 0-3, so that some pixel pairs, or all of them, are linked by no
tap), with and without bias, float32 and float64, whatever the rule would say. The map of taps is
checked by brute force. The rule in kernels/cpu_conv.py must send ResNet-18's 3x3 256->256 layers
at 2x2 (batch 32) there and keep the other layers away, conv2d_forward must really call it there,
the fused conv-BatchNorm-ReLU inference must give the bits of its layers run in turn, and the bits
must not depend on the thread count. An empty batch gives an empty output.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import example, given, strategies as st

from tinycnn.kernels import cpu, cpu_conv, parallel
from tinycnn.kernels.cpu_conv_dense import dense_conv2d_forward, map_chunks, plane_map
from tinycnn.kernels.cpu_norm import inference_normalisation
from support import conv_layers, inference_statistics, unfused_batch_norm_relu

# Error allowed per term of a sum of products of numbers in [-1, 1], as tests/test_conv_taps.py:
# the dense product adds its terms in its own order (pixel by pixel, channel by channel).
PER_TERM = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 2e-15}


def layers():
    """Ungrouped layers with at least one output along each axis (support.conv_layers)."""
    return conv_layers(4, 6, 4)


RESNET18_2X2 = (3, 4, 5, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1)  # 3x3, padding 1, on 2x2: every pair linked
RESNET18_1X1 = (2, 3, 4, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1)  # on 1x1: only the centre tap
NO_PAIR_LINKED = (2, 2, 3, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1)  # 1x1/2, padding 1, on 1x1: outputs read padding only
DILATED_STRIDED = (2, 3, 2, 6, 5, 3, 2, 2, 3, 2, 1, 2, 2)
ASYMMETRIC = (1, 2, 3, 2, 5, 1, 4, 1, 2, 0, 3, 1, 1)


def _draw_arrays(layer, dtype, bias, seed):
    N, C, OC, H, W, KH, KW = layer[:7]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(dtype)
    weight = rng.uniform(-1, 1, (OC, C, KH, KW)).astype(dtype)
    b = rng.uniform(-1, 1, OC).astype(dtype) if bias else None
    return x, weight, b


def _assert_matches_torch(y, x, W, b, window):
    """y against PyTorch's conv2d in float64: each output sums C*KH*KW products."""
    SH, SW, PH, PW, DH, DW = window
    as_torch = (lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64)))
    expected = torch_F.conv2d(as_torch(x), as_torch(W), as_torch(b), stride=(SH, SW), padding=(PH, PW),
                              dilation=(DH, DW)).numpy()
    assert y.shape == expected.shape and y.dtype == x.dtype
    per_term = PER_TERM[x.dtype]
    np.testing.assert_allclose(y, expected, rtol=10 * per_term, atol=per_term * W.shape[1] * W.shape[2] * W.shape[3])


@given(layers(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**32 - 1))
@example(RESNET18_2X2, np.float32, False, 0)
@example(RESNET18_1X1, np.float64, True, 1)
@example(NO_PAIR_LINKED, np.float32, True, 2)  # M all zeros: y is the bias
@example(NO_PAIR_LINKED, np.float64, False, 2)  # ... or zero
@example(DILATED_STRIDED, np.float64, True, 3)
@example(ASYMMETRIC, np.float32, True, 4)
def test_forward_matches_torch(layer, dtype, bias, seed):
    x, weight, b = _draw_arrays(layer, dtype, bias, seed)
    window = tuple(layer[7:])
    _assert_matches_torch(dense_conv2d_forward(x, weight, b, *window), x, weight, b, window)


def test_the_map_of_taps_by_brute_force():
    # 3x3, padding 1: on 2x2 every output pixel reads every input pixel, output (0, 0) through taps
    # (1, 1), (1, 2), (2, 1), (2, 2); on 4x4, 100 of the 256 pairs are linked.
    layer = plane_map(2, 2, 3, 3, 1, 1, 1, 1, 1, 1)
    assert layer.live == 1.0
    np.testing.assert_array_equal(layer.taps[0], [4, 5, 7, 8])
    np.testing.assert_array_equal(layer.taps[3], [0, 1, 3, 4])
    assert plane_map(4, 4, 3, 3, 1, 1, 1, 1, 1, 1).live == 100 / 256
    # stride 2 on 2x2 to 1x1: every pixel, through taps (1, 1), (1, 2), (2, 1), (2, 2)
    np.testing.assert_array_equal(plane_map(2, 2, 3, 3, 2, 2, 1, 1, 1, 1).taps, [[4, 5, 7, 8]])
    assert plane_map(1, 1, 1, 1, 2, 2, 1, 1, 1, 1).live == 0.0  # every output reads padding only


def test_chunks_of_output_channels():
    assert map_chunks(256, 16 * 256) == [(0, 32), (32, 64), (64, 96), (96, 128), (128, 160), (160, 192),
                                         (192, 224), (224, 256)]
    assert map_chunks(5, 1) == [(0, 2), (2, 5)]  # small: two chunks still, so both threads work
    assert map_chunks(1, 10 ** 6) == [(0, 1)]  # never more chunks than channels
    assert map_chunks(0, 16) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_empty_batch(dtype):
    x = np.zeros((0, 3, 2, 2), dtype)
    y = dense_conv2d_forward(x, np.ones((4, 3, 3, 3), dtype), np.ones(4, dtype), 1, 1, 1, 1, 1, 1)
    assert y.shape == (0, 4, 2, 2) and y.dtype == dtype


# (x shape, W shape, stride, padding), dilation 1, ungrouped unless said
DENSE_LAYERS = [
    ((32, 256, 2, 2), (256, 256, 3, 3), 1, 1),  # ResNet-18's third stage on 32x32 images
    ((16, 32, 2, 2), (32, 32, 3, 3), 1, 1),  # the smallest batch and channels the rule allows
]
OTHER_LAYERS = [
    ((32, 128, 4, 4), (128, 128, 3, 3), (1, 1, 1)),  # 4x4: 39% of M linked
    ((16, 64, 3, 3), (32, 64, 3, 3), (1, 1, 1)),  # 3x3: M 49/81 weights, as many as im2col's live share
    ((32, 256, 2, 2), (512, 256, 3, 3), (2, 1, 1)),  # cut to 2x2 on 2x2: im2col all live
    ((32, 512, 1, 1), (512, 512, 3, 3), (1, 1, 1)),  # cut to 1x1: im2col all live
    ((32, 256, 2, 2), (512, 256, 1, 1), (2, 0, 1)),  # 1x1/2: a quarter of M
    ((15, 256, 2, 2), (256, 256, 3, 3), (1, 1, 1)),  # too small a batch
    ((32, 16, 2, 2), (256, 16, 3, 3), (1, 1, 1)),  # too few input channels
    ((32, 256, 2, 2), (16, 256, 3, 3), (1, 1, 1)),  # too few output channels
    ((32, 256, 2, 2), (256, 128, 3, 3), (1, 1, 2)),  # two groups
    ((32, 64, 8, 8), (64, 64, 3, 3), (1, 1, 1)),  # ResNet-18's first stage
    ((0, 256, 2, 2), (256, 256, 3, 3), (1, 1, 1)),  # an empty batch
]


def test_rule_sends_small_planes_to_the_dense_product():
    for x_shape, w_shape, stride, padding in DENSE_LAYERS:
        assert cpu_conv._dense_suits(x_shape, w_shape, stride, stride, padding, padding, 1, 1, 1), x_shape


@pytest.mark.parametrize("x_shape, w_shape, window", OTHER_LAYERS)
def test_rule_keeps_other_layers_away(x_shape, w_shape, window):
    stride, padding, groups = window
    assert not cpu_conv._dense_suits(x_shape, w_shape, stride, stride, padding, padding, 1, 1, groups)


def test_the_rule_follows_its_switches(monkeypatch):
    layer = ((32, 256, 2, 2), (256, 256, 3, 3), 1, 1, 1, 1, 1, 1, 1)
    assert cpu_conv._dense_suits(*layer)
    monkeypatch.setattr(cpu_conv, "DENSE", False)
    assert not cpu_conv._dense_suits(*layer)
    monkeypatch.setattr(cpu_conv, "DENSE", True)
    monkeypatch.setattr(cpu_conv, "DENSE_BATCH", 33)
    assert not cpu_conv._dense_suits(*layer)


@pytest.fixture
def dense_calls(monkeypatch):
    """The (x shape, W shape) of every call conv2d_forward makes to the dense product."""
    calls = []
    dense = cpu_conv.dense_conv2d_forward

    def counting(x, W, b, SH, SW, PH, PW, DH, DW, normalisation=None):
        calls.append((x.shape, W.shape))
        return dense(x, W, b, SH, SW, PH, PW, DH, DW, normalisation)
    monkeypatch.setattr(cpu_conv, "dense_conv2d_forward", counting)
    return calls


@pytest.mark.parametrize("x_shape, w_shape, stride, dense", [
    ((32, 256, 2, 2), (256, 256, 3, 3), 1, True),
    ((32, 128, 4, 4), (128, 128, 3, 3), 1, False),
])
def test_conv2d_forward_takes_the_dense_product(dense_calls, x_shape, w_shape, stride, dense):
    # conv2d must really take the dense product where the rule says so, and not elsewhere: a path
    # silently never taken would leave the other tests green. float32, as networks run.
    window = (stride, stride, 1, 1, 1, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, x_shape).astype(np.float32)
    weight = rng.uniform(-1, 1, w_shape).astype(np.float32)
    b = rng.uniform(-1, 1, w_shape[0]).astype(np.float32)
    y = cpu.conv2d_forward(x, weight, b, *window, 1)
    assert dense_calls == ([(x_shape, w_shape)] if dense else [])
    _assert_matches_torch(y, x, weight, b, window)


@pytest.mark.parametrize("bias, residual, relu", [(False, False, True), (True, False, False), (False, True, True)])
def test_fused_inference_gives_the_bits_of_its_layers_in_turn(dense_calls, bias, residual, relu):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 256, 2, 2)).astype(np.float32)
    weight = (rng.uniform(-1, 1, (256, 256, 3, 3)) / 16).astype(np.float32)
    b = rng.uniform(-1, 1, 256).astype(np.float32) if bias else None
    window = (1, 1, 1, 1, 1, 1)
    gamma, beta, mean, inv_std = inference_statistics(3, 256, np.float32)
    conv_y = cpu.conv2d_forward(x, weight, b, *window, 1)
    r = rng.uniform(-1, 1, conv_y.shape).astype(np.float32) if residual else None
    y = unfused_batch_norm_relu(conv_y, gamma, beta, mean, inv_std, r, relu)
    fused_y = cpu.conv2d_batch_norm_relu_inference(x, weight, b, *window, 1, gamma, beta, mean, inv_std, r, relu)
    np.testing.assert_array_equal(fused_y, y)
    assert len(dense_calls) == 2  # both through the dense product
    if relu:
        assert (y == 0).any() and (y > 0).any(), "the case must exercise the ReLU"


def test_normalisation_given_directly():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 5, 2, 3)).astype(np.float64)
    weight = rng.uniform(-1, 1, (4, 5, 3, 2)).astype(np.float64)
    window = (1, 2, 1, 1, 1, 1)
    y = dense_conv2d_forward(x, weight, None, *window)
    gamma, beta, mean, inv_std = inference_statistics(2, 4, np.float64)
    expected = unfused_batch_norm_relu(y, gamma, beta, mean, inv_std, None, True)
    normalisation = inference_normalisation(y.shape, y.dtype, gamma, beta, mean, inv_std, None, True)
    np.testing.assert_array_equal(dense_conv2d_forward(x, weight, None, *window, normalisation), expected)


def test_the_same_bits_on_any_thread_count():
    # Each chunk of output channels is one thread's product over the whole batch: 1 and 2 threads
    # must give the same bits.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 256, 2, 2)).astype(np.float32)
    weight = rng.uniform(-1, 1, (256, 256, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 256).astype(np.float32)
    previous = parallel.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            parallel.set_num_threads(threads)
            results.append(dense_conv2d_forward(x, weight, b, 1, 1, 1, 1, 1, 1))
    finally:
        parallel.set_num_threads(previous)
    assert np.array_equal(results[0], results[1])
