"""conv2d by one product per kernel tap, over only the outputs where that tap reads the input
(kernels/cpu_conv_taps.py), against PyTorch.

taps_conv2d_forward and taps_conv2d_backward are called directly on drawn layers (kernels of 1 to
5 taps along each axis, strides 1-3, dilations 1-2, padding 0-3 so that some taps, or all of them,
read only padding, with and without bias, float32 and float64), each over one chunk of samples and
over several, so that tiny layers the dispatch rule would send to im2col still test the tap code;
dx, dW and db are checked for every combination of needs_grad that changes what is computed, the
weights of dead taps and the inputs no tap reads getting exactly zero. An empty batch gives empty
outputs and zero weight and bias gradients. The fused conv-BatchNorm-ReLU inference on layers that
take the taps gives the bits of its layers run in turn. Then the rule in kernels/cpu_conv.py is
checked to send ResNet-18's small layers (on 32x32 images) to the taps and to keep the others
away, conv2d_forward and conv2d_backward are checked to really call the taps there, and their bits
are checked not to depend on the thread count.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import example, given, strategies as st

from tinycnn.kernels import cpu, cpu_blas, cpu_conv, parallel
from tinycnn.kernels.cpu_conv_taps import taps_conv2d_backward, taps_conv2d_forward
from tinycnn.kernels.cpu_norm import inference_normalisation
from tinycnn.kernels.parallel import split
from support import conv_layers, inference_statistics, numpy_blas_name, unfused_batch_norm_relu

# Error allowed per term of a sum of products of numbers in [-1, 1]: as tests/test_winograd.py
# (and tests/test_kernel_backends.py for im2col), 1e-6 in float32 (17 unit round-offs) and 2e-15 in
# float64 (as many). The taps add their products in another order than im2col's and PyTorch's
# (tap group by tap group, each product's own order inside), which moves the round-off, not its size.
PER_TERM = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 2e-15}


def layers():
    """Ungrouped layers with at least one output along each axis (support.conv_layers)."""
    return conv_layers(5, 9, 3)


# Layers for @example, as layers() draws them:
ONE_LIVE_TAP = (1, 2, 3, 1, 1, 3, 3, 2, 2, 1, 1, 1, 1)  # 3x3/2 on a 1x1 input, padding 1: only the centre
ALL_TAPS_DEAD = (2, 2, 3, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1)  # 1x1/2, padding 1 on 1x1: outputs -1 and 1, none inside
RESNET_DOWNSAMPLE = (3, 4, 5, 2, 2, 3, 3, 2, 2, 1, 1, 1, 1)  # 3x3/2 on 2x2: the first row and column dead
WIDE_PADDING = (1, 2, 2, 2, 3, 2, 2, 1, 1, 3, 3, 1, 1)  # padding 3 around 2x3: most outputs read only padding
DILATED_STRIDED = (2, 3, 4, 9, 9, 5, 5, 3, 3, 2, 2, 2, 2)  # 5x5, dilation 2, stride 3 (SW > 1: pixel by pixel)
ASYMMETRIC = (2, 3, 2, 4, 7, 1, 5, 1, 3, 0, 3, 1, 1)  # 1x5, stride (1, 3), padding (0, 3)
SKIPPED_PIXELS = (2, 2, 2, 7, 8, 1, 2, 3, 3, 0, 0, 1, 2)  # stride 3 over a 1x2 kernel: inputs no tap reads


def _window(layer):
    """(SH, SW, PH, PW, DH, DW) of a drawn layer."""
    return tuple(layer[7:])


def _draw_arrays(layer, dtype, bias, seed):
    """x, W and b (or None) in [-1, 1]."""
    N, C, OC, H, W, KH, KW = layer[:7]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(dtype)
    weight = rng.uniform(-1, 1, (OC, C, KH, KW)).astype(dtype)
    b = rng.uniform(-1, 1, OC).astype(dtype) if bias else None
    return x, weight, b


def _chunkings(N):
    """One chunk of all N samples, one sample a chunk, and chunks of two (the last one shorter for odd N)."""
    chunkings = []
    for per_chunk in (N, 1, 2):
        chunks = split(N, max(1, min(per_chunk, N)))
        if chunks not in chunkings:
            chunkings.append(chunks)
    return chunkings


def _torch_layer(x, W, b, window):
    """x, W, b as float64 torch leaves that need their gradients, and y = torch's conv2d of them."""
    SH, SW, PH, PW, DH, DW = window
    leaf = (lambda a: None if a is None else torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True))
    x_t, W_t, b_t = leaf(x), leaf(W), leaf(b)
    return x_t, W_t, b_t, torch_F.conv2d(x_t, W_t, b_t, stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW))


def _assert_forward_matches_torch(y, x, W, b, window):
    """y against PyTorch in float64: each output sums C*KH*KW products (those of the dead taps are zero)."""
    expected = _torch_layer(x, W, b, window)[3].detach().numpy()
    assert y.shape == expected.shape and y.dtype == x.dtype
    per_term = PER_TERM[x.dtype]
    terms = W.shape[1] * W.shape[2] * W.shape[3]
    np.testing.assert_allclose(y, expected, rtol=10 * per_term, atol=per_term * terms)


def _torch_gradients(gy, x, W, window):
    """dx, dW, db of conv2d by torch's autograd, in float64."""
    x_t, W_t, b_t, y = _torch_layer(x, W, np.zeros(W.shape[0]), window)
    y.backward(torch.from_numpy(np.asarray(gy, dtype=np.float64)))
    return x_t.grad.numpy(), W_t.grad.numpy(), b_t.grad.numpy()


def _assert_gradients_match_torch(gradients, gy, x, W, window, needs_grad):
    """(dx, dW, db) against torch's, None where needs_grad says so. dx sums OC*KH*KW products per
    value, dW and db N*OH*OW; the per-term error as for the forward."""
    expected = _torch_gradients(gy, x, W, window)
    N, OC, OH, OW = gy.shape
    terms = (OC * W.shape[2] * W.shape[3], N * OH * OW, N * OH * OW)
    per_term = PER_TERM[x.dtype]
    for name, got, want, needed, count in zip(("dx", "dW", "db"), gradients, expected, needs_grad, terms):
        if not needed:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == x.dtype, name
        np.testing.assert_allclose(got, want, rtol=10 * per_term, atol=per_term * count, err_msg=name)


def _read_along(L, O, K, S, P, D):
    """(live taps, read inputs) along one axis, by brute force: tap k is live if some output o reads
    inside the input there (o*S - P + k*D in [0, L)); input l is read if some (o, k) lands on it."""
    live, read = np.zeros(K, bool), np.zeros(L, bool)
    for o in range(O):
        for k in range(K):
            position = o * S - P + k * D
            if 0 <= position < L:
                live[k] = read[position] = True
    return live, read


@given(layers(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**32 - 1))
@example(ONE_LIVE_TAP, np.float64, True, 0)
@example(ALL_TAPS_DEAD, np.float32, True, 1)  # no product at all: y is the bias
@example(ALL_TAPS_DEAD, np.float64, False, 1)  # ... or zero
@example(RESNET_DOWNSAMPLE, np.float32, False, 2)
@example(WIDE_PADDING, np.float64, True, 3)
@example(DILATED_STRIDED, np.float64, True, 4)
@example(ASYMMETRIC, np.float32, True, 5)
def test_forward_matches_torch(layer, dtype, bias, seed):
    x, weight, b = _draw_arrays(layer, dtype, bias, seed)
    for chunks in _chunkings(x.shape[0]):
        y = taps_conv2d_forward(x, weight, b, *_window(layer), chunks)
        _assert_forward_matches_torch(y, x, weight, b, _window(layer))


NEEDS_GRAD = [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]


@given(layers(), st.sampled_from([np.float32, np.float64]), st.sampled_from(NEEDS_GRAD), st.integers(0, 2**32 - 1))
@example(ONE_LIVE_TAP, np.float64, (True, True, True), 0)  # eight dead taps, their dW exactly 0
@example(ONE_LIVE_TAP, np.float32, (False, True, False), 0)
@example(ALL_TAPS_DEAD, np.float64, (True, True, True), 1)  # dx and dW all zero
@example(RESNET_DOWNSAMPLE, np.float32, (True, True, True), 2)
@example(RESNET_DOWNSAMPLE, np.float64, (True, False, False), 2)
@example(WIDE_PADDING, np.float64, (True, True, True), 3)
@example(DILATED_STRIDED, np.float64, (True, True, True), 4)
@example(ASYMMETRIC, np.float32, (True, True, True), 5)
@example(SKIPPED_PIXELS, np.float64, (True, True, True), 6)  # dx exactly 0 at the pixels skipped
def test_backward_matches_torch(layer, dtype, needs_grad, seed):
    x, weight, _ = _draw_arrays(layer, dtype, False, seed)
    window = _window(layer)
    N, _, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW = layer
    OH, OW = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1, (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    gy = np.random.default_rng(seed + 1).uniform(-1, 1, (N, OC, OH, OW)).astype(dtype)
    live_i, read_h = _read_along(H, OH, KH, SH, PH, DH)
    live_j, read_w = _read_along(W, OW, KW, SW, PW, DW)
    for chunks in _chunkings(N):
        gradients = taps_conv2d_backward(gy, x, weight, *window, chunks, needs_grad)
        _assert_gradients_match_torch(gradients, gy, x, weight, window, needs_grad)
        gx, gW, _ = gradients
        if needs_grad[1]:  # a tap that reads only padding has no term in its sum: not round-off, but 0
            assert np.all(gW[:, :, ~(live_i[:, None] & live_j[None, :])] == 0)
        if needs_grad[0]:  # nor has an input pixel that no tap reads
            assert np.all(gx[:, :, ~(read_h[:, None] & read_w[None, :])] == 0)


def test_the_backward_takes_the_nogil_chunks_where_numpys_blas_can_be_called():
    # NumPy's wheels ship the OpenBLAS that kernels/cpu_blas.py calls by address: there the
    # backward's chunks are one Numba call each (test_backward_matches_torch checks them), and the
    # Python chunks with np.matmul are the fallback (checked against torch below).
    if numpy_blas_name() != "scipy-openblas":
        pytest.skip(f"NumPy built against {numpy_blas_name()}: the fallback is all there is")
    assert cpu_blas.gemm_address(np.float32) and cpu_blas.gemm_address(np.float64)


@given(layers(), st.sampled_from([np.float32, np.float64]), st.sampled_from(NEEDS_GRAD), st.integers(0, 2**32 - 1))
@example(RESNET_DOWNSAMPLE, np.float32, (True, True, True), 2)
@example(DILATED_STRIDED, np.float64, (True, True, False), 4)
@example(SKIPPED_PIXELS, np.float64, (True, True, True), 6)
def test_the_python_chunks_match_torch_too(layer, dtype, needs_grad, seed):
    # The fallback where NumPy's BLAS is another library: each chunk in Python, its products by
    # np.matmul. (Not the same bits as the nogil chunks everywhere: np.matmul makes a one-row
    # product by gemv, in another order.)
    with pytest.MonkeyPatch.context() as patch:  # (not the fixture: one per drawn example)
        patch.setattr(cpu_blas, "ENABLED", False)
        test_backward_matches_torch.hypothesis.inner_test(layer, dtype, needs_grad, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_empty_batch(dtype):
    # No chunk: y is empty, dx too, and dW and db are zero (nothing summed), of the right shapes.
    x = np.zeros((0, 3, 5, 4), dtype)
    weight = np.ones((6, 3, 3, 3), dtype)
    window = (2, 1, 1, 1, 1, 1)  # OH 3, OW 4
    y = taps_conv2d_forward(x, weight, np.ones(6, dtype), *window, [])
    assert y.shape == (0, 6, 3, 4) and y.dtype == dtype
    gy = np.ones((0, 6, 3, 4), dtype)
    gx, gW, gb = taps_conv2d_backward(gy, x, weight, *window, [], (True, True, True))
    assert gx.shape == x.shape and gx.dtype == dtype
    assert gW.shape == weight.shape and gW.dtype == dtype and np.all(gW == 0)
    assert gb.shape == (6,) and gb.dtype == dtype and np.all(gb == 0)


# ResNet-18's layers on 32x32 images that the rule was measured to speed up (kernels/cpu_conv.py),
# as (x shape, W shape, stride, padding, whether the forward takes the taps too): the backward
# takes them on all of these, the forward only where im2col's product would be mostly padding
TAPS_LAYERS = [
    ((32, 128, 4, 4), (128, 128, 3, 3), 1, 1, False),  # 69% live
    ((32, 256, 2, 2), (256, 256, 3, 3), 1, 1, False),  # 44% live
    ((32, 128, 4, 4), (256, 128, 3, 3), 2, 1, False),  # 69% live
    ((32, 256, 2, 2), (512, 256, 3, 3), 2, 1, False),  # 44% live
    ((32, 512, 1, 1), (512, 512, 3, 3), 1, 1, True),  # 11% live: only the centre tap
]
# and those it keeps away, with (stride, padding, groups)
OTHER_LAYERS = [
    ((32, 64, 8, 8), (64, 64, 3, 3), (1, 1, 1)),  # ResNet-18's 3x3 64->64 at 8x8: 84% live
    ((32, 256, 2, 2), (512, 256, 1, 1), (2, 0, 1)),  # 1x1 without padding: all live
    ((32, 128, 4, 4), (128, 128, 1, 1), (1, 0, 1)),
    ((32, 128, 4, 4), (128, 64, 3, 3), (1, 1, 2)),  # two groups
    ((32, 1, 28, 28), (20, 1, 5, 5), (1, 0, 1)),  # LeNet-like 1->20 5x5: too few channels (and all live)
    ((32, 1, 4, 4), (64, 1, 3, 3), (1, 1, 1)),  # few input channels, 69% live
    ((32, 128, 4, 4), (16, 128, 3, 3), (1, 1, 1)),  # few output channels, 69% live
    ((8, 512, 7, 7), (512, 512, 3, 3), (1, 1, 1)),  # ResNet-50's 3x3 512->512 at 7x7: 82% live
    ((0, 128, 4, 4), (128, 128, 3, 3), (1, 1, 1)),  # an empty batch
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, forward", TAPS_LAYERS)
def test_rule_sends_resnet18_small_layers_to_the_taps(x_shape, w_shape, stride, padding, forward):
    window = (stride, stride, padding, padding, 1, 1, 1)
    assert cpu_conv._taps_suit(x_shape, w_shape, *window, backward=True)
    assert cpu_conv._taps_suit(x_shape, w_shape, *window, backward=False) == forward
    assert not cpu_conv._winograd_suits(x_shape, w_shape, stride, stride, padding, padding, 1, 1, 1)


@pytest.mark.parametrize("x_shape, w_shape, window", OTHER_LAYERS)
def test_rule_keeps_other_layers_away_from_the_taps(x_shape, w_shape, window):
    stride, padding, groups = window
    for backward in (True, False):
        assert not cpu_conv._taps_suit(x_shape, w_shape, stride, stride, padding, padding, 1, 1, groups, backward)


def test_the_rule_follows_taps_channels():
    assert cpu_conv.TAPS_CHANNELS > 1
    below = cpu_conv.TAPS_CHANNELS - 1
    for backward in (True, False):  # a 1x1 output: 11% live, the taps for both passes
        assert not cpu_conv._taps_suit((2, below, 1, 1), (64, below, 3, 3), 1, 1, 1, 1, 1, 1, 1, backward)
        assert not cpu_conv._taps_suit((2, 64, 1, 1), (below, 64, 3, 3), 1, 1, 1, 1, 1, 1, 1, backward)
        at = cpu_conv.TAPS_CHANNELS
        assert cpu_conv._taps_suit((2, at, 1, 1), (at, at, 3, 3), 1, 1, 1, 1, 1, 1, 1, backward)


@pytest.fixture
def taps_calls(monkeypatch):
    """The ("forward" or "backward", x shape, W shape, chunks) of every call conv2d makes to the taps."""
    calls = []
    forward, backward = cpu_conv.taps_conv2d_forward, cpu_conv.taps_conv2d_backward

    def counting_forward(x, W, b, SH, SW, PH, PW, DH, DW, chunks, normalisation=None):
        calls.append(("forward", x.shape, W.shape, chunks))
        return forward(x, W, b, SH, SW, PH, PW, DH, DW, chunks, normalisation)

    def counting_backward(gy, x, W, SH, SW, PH, PW, DH, DW, chunks, needs_grad):
        calls.append(("backward", x.shape, W.shape, chunks))
        return backward(gy, x, W, SH, SW, PH, PW, DH, DW, chunks, needs_grad)
    monkeypatch.setattr(cpu_conv, "taps_conv2d_forward", counting_forward)
    monkeypatch.setattr(cpu_conv, "taps_conv2d_backward", counting_backward)
    return calls


@pytest.mark.parametrize("x_shape, w_shape, stride, forward, backward", [
    ((32, 128, 4, 4), (128, 128, 3, 3), 1, False, True),  # ResNet-18's third stage: backward, in two chunks
    ((4, 64, 4, 4), (96, 64, 3, 3), 2, False, True),  # stride 2, one chunk
    ((32, 512, 1, 1), (512, 512, 3, 3), 1, True, True),  # a 1x1 output: both passes, two chunks
    ((4, 16, 4, 4), (32, 16, 3, 3), 1, False, False),  # too few input channels: im2col
])
def test_conv2d_forward_and_backward_take_the_taps(taps_calls, x_shape, w_shape, stride, forward, backward):
    # conv2d must really take the taps where the rule says so (and not where it does not): a path
    # that is silently never taken would leave every other test green. float32, as networks run.
    window = (stride, stride, 1, 1, 1, 1)
    assert cpu_conv._taps_suit(x_shape, w_shape, *window, 1, backward=False) == forward
    assert cpu_conv._taps_suit(x_shape, w_shape, *window, 1, backward=True) == backward
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, x_shape).astype(np.float32)
    weight = rng.uniform(-1, 1, w_shape).astype(np.float32)
    b = rng.uniform(-1, 1, w_shape[0]).astype(np.float32)
    y = cpu.conv2d_forward(x, weight, b, *window, 1)
    chunks = cpu_conv._taps_chunks(x_shape, w_shape, *window)
    assert taps_calls == ([("forward", x_shape, w_shape, chunks)] if forward else [])
    _assert_forward_matches_torch(y, x, weight, b, window)

    del taps_calls[:]
    gy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    needs_grad = (True, True, True)
    gradients = cpu.conv2d_backward(gy, x, weight, *window, 1, needs_grad)
    assert taps_calls == ([("backward", x_shape, w_shape, chunks)] if backward else [])
    _assert_gradients_match_torch(gradients, gy, x, weight, window, needs_grad)
    if x_shape[0] == 32:
        assert len(chunks) == 2  # the backward's shares of dW are summed over chunks


FUSED_LAYERS = {  # (x shape, W shape, stride), padding 1: 1x1 outputs, whose forward takes the taps
    "3x3 64->64 at 1x1": ((4, 64, 1, 1), (64, 64, 3, 3), 1),
    "3x3/2 64->128 at 1x1": ((4, 64, 1, 1), (128, 64, 3, 3), 2),
    "3x3 512->512 at 1x1, batch 32: two chunks": ((32, 512, 1, 1), (512, 512, 3, 3), 1),
}


@pytest.mark.parametrize("layer", FUSED_LAYERS)
@pytest.mark.parametrize("bias, residual, relu", [(False, False, True), (True, False, False), (False, True, True)])
def test_fused_inference_gives_the_bits_of_its_layers_in_turn(taps_calls, layer, bias, residual, relu):
    # As tests/test_fused.py does for the other conv paths: each chunk normalised by the thread that
    # computed it, with the arithmetic of the separate kernels, so the same bits.
    x_shape, w_shape, stride = FUSED_LAYERS[layer]
    window = (stride, stride, 1, 1, 1, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, x_shape).astype(np.float32)
    weight = (rng.uniform(-1, 1, w_shape) / 4).astype(np.float32)
    b = rng.uniform(-1, 1, w_shape[0]).astype(np.float32) if bias else None
    gamma, beta, mean, inv_std = inference_statistics(3, w_shape[0], np.float32)
    conv_y = cpu.conv2d_forward(x, weight, b, *window, 1)
    r = rng.uniform(-1, 1, conv_y.shape).astype(np.float32) if residual else None
    y = unfused_batch_norm_relu(conv_y, gamma, beta, mean, inv_std, r, relu)
    fused_y = cpu.conv2d_batch_norm_relu_inference(x, weight, b, *window, 1, gamma, beta, mean, inv_std, r, relu)
    np.testing.assert_array_equal(fused_y, y, err_msg=layer)
    assert [call[0] for call in taps_calls] == ["forward", "forward"]  # both through the taps
    if relu:
        assert (y == 0).any() and (y > 0).any(), "the case must exercise the ReLU"


def test_normalisation_chunk_by_chunk_gives_the_bits_of_the_layers_in_turn():
    # taps_conv2d_forward called directly on chunks of unequal sizes, with the BatchNorm, residual
    # and ReLU applied to each chunk of y as it is written: the same bits as afterwards on the whole.
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (5, 6, 3, 4)).astype(np.float64)
    weight = rng.uniform(-1, 1, (7, 6, 3, 2)).astype(np.float64)
    b = rng.uniform(-1, 1, 7)
    window = (1, 2, 1, 1, 1, 1)
    gamma, beta, mean, inv_std = inference_statistics(2, 7, np.float64)
    chunks = [(0, 2), (2, 3), (3, 5)]
    y = taps_conv2d_forward(x, weight, b, *window, chunks)
    r = rng.uniform(-1, 1, y.shape)
    expected = unfused_batch_norm_relu(y, gamma, beta, mean, inv_std, r, True)
    normalisation = inference_normalisation(y.shape, y.dtype, gamma, beta, mean, inv_std, r, True)
    np.testing.assert_array_equal(taps_conv2d_forward(x, weight, b, *window, chunks, normalisation), expected)
    assert (expected == 0).any() and (expected > 0).any()


def test_the_taps_give_the_same_bits_on_any_thread_count():
    # The chunks are fixed by the layer's shape, each chunk's products are one thread's, and the
    # chunks' shares of dW are added in chunk order: 1 and 2 threads must give the same bits.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 128, 4, 4)).astype(np.float32)
    weight = rng.uniform(-1, 1, (128, 128, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 128).astype(np.float32)
    gy = rng.uniform(-1, 1, (32, 128, 4, 4)).astype(np.float32)
    window = (1, 1, 1, 1, 1, 1)
    chunks = cpu_conv._taps_chunks(x.shape, weight.shape, *window)
    assert len(chunks) == 2, chunks
    previous = parallel.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            parallel.set_num_threads(threads)
            y = taps_conv2d_forward(x, weight, b, *window, chunks)
            results.append((y,) + taps_conv2d_backward(gy, x, weight, *window, chunks, (True, True, True)))
    finally:
        parallel.set_num_threads(previous)
    for one, two, name in zip(results[0], results[1], ("y", "dx", "dW", "db")):
        assert np.array_equal(one, two), name
