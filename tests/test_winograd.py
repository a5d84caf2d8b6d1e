"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) convolutions of the Numba backend (kernels/cpu_winograd.py,
kernels/cpu_winograd4x4.py) against PyTorch.

winograd_conv2d_forward is called directly on drawn shapes (odd sizes and sizes that are not a
multiple of 4, 1x1 and 2x2 inputs, padding 0 to 2, with and without bias), with either tile, so
that tiny layers the dispatch rule would send to im2col or to the other tile still test the code; then the rule in kernels/cpu_conv.py is checked to send the layers it was
measured on to Winograd (and to keep the others away), conv2d_forward and conv2d_backward are
checked to really call it there, and its bits are checked not to depend on the thread count.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import example, given, strategies as st

from tinycnn.kernels import cpu, cpu_blas, cpu_conv, parallel
from tinycnn.kernels.cpu_winograd import winograd_chunks, winograd_conv2d_forward


def _torch_conv2d(x, W, b, padding):
    """torch.nn.functional.conv2d in float64 on the same values."""
    as_torch = (lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64)))
    return torch_F.conv2d(as_torch(x), as_torch(W), as_torch(b), padding=padding).numpy()


def _assert_matches_torch(y, x, W, b, padding, tile=2):
    """y against PyTorch in float64, for x, W and b in [-1, 1]. Each output sums 9*C products, the
    terms; as tests/test_kernel_backends.py allows the im2col path, the error may be 1e-6 per term
    in float32 (17 unit round-offs), and here 2e-15 (as many) in float64. F(2,3)'s coefficients,
    0, +-1 and +-1/2, add a few exact or nearly exact additions per value, so its error stays of that
    order (kernels/cpu_conv.py gives the measured error on ResNet-50's layers). F(4,3)'s, up to 8
    and with 1/6, grow it: 8 times as much is allowed. Measured over 300 drawn layers, the largest
    error per term: float32 6.7e-8 by F(2,3), 1.7e-6 by F(4,3); float64 1.5e-16 and 1.9e-15."""
    expected = _torch_conv2d(x, W, b, padding)
    assert y.shape == expected.shape and y.dtype == x.dtype
    terms = 9 * W.shape[1]
    per_term = (1e-6 if x.dtype == np.float32 else 2e-15) * (1 if tile == 2 else 8)
    np.testing.assert_allclose(y, expected, rtol=10 * per_term, atol=per_term * terms)


@st.composite
def winograd_layers(draw):
    """(N, C, OC, H, W, PH, PW): any input the 3x3 kernel fits in once padded, 1x1 included."""
    PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, 3 - 2 * PH), 11))
    W = draw(st.integers(max(1, 3 - 2 * PW), 11))
    return draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)), H, W, PH, PW


@given(winograd_layers(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**32 - 1),
       st.sampled_from([2, 4]))
@example((1, 1, 1, 1, 1, 1, 1), np.float64, True, 0, 2)  # a 1x1 input: one tile, three quarters outside
@example((1, 1, 1, 1, 1, 1, 1), np.float64, True, 0, 4)  # one 4x4 tile, 15 of its 16 outputs outside
@example((2, 3, 2, 2, 2, 1, 1), np.float32, False, 1, 2)  # 2x2, one tile
@example((1, 2, 3, 5, 7, 0, 0), np.float64, True, 2, 2)  # odd outputs 3x5: last tile row and column partial
@example((1, 2, 3, 9, 11, 0, 1), np.float64, True, 2, 4)  # outputs 7x11: 4 + 3 and 4 + 4 + 3
@example((1, 2, 2, 4, 9, 2, 1), np.float64, False, 3, 2)  # padding 2 above and below, 1 at the sides
@example((1, 2, 2, 4, 9, 2, 1), np.float64, False, 3, 4)
def test_winograd_matches_torch(layer, dtype, bias, seed, tile):
    N, C, OC, H, W, PH, PW = layer
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(dtype)
    weight = rng.uniform(-1, 1, (OC, C, 3, 3)).astype(dtype)
    b = rng.uniform(-1, 1, OC).astype(dtype) if bias else None
    y = winograd_conv2d_forward(x, weight, b, PH, PW, None, tile)
    _assert_matches_torch(y, x, weight, b, (PH, PW), tile)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_matches_torch_with_several_chunks(tile):
    # Chunks of tile rows, one ending in the middle of a sample (8 tile rows a sample for F(2,3),
    # 4 for F(4,3)), and a 15x13 output (partial last tiles), in float32 as the network layers run.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 24, 15, 13)).astype(np.float32)
    chunks = winograd_chunks(5, 24, 40, 15, 13, tile)
    assert len(chunks) > 1 and any(start % (16 // tile) for start, _ in chunks), chunks
    weight = rng.uniform(-1, 1, (40, 24, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 40).astype(np.float32)
    _assert_matches_torch(winograd_conv2d_forward(x, weight, b, 1, 1, None, tile), x, weight, b, (1, 1), tile)


@given(winograd_layers(), st.sampled_from([np.float32, np.float64]), st.booleans(), st.integers(0, 2**32 - 1),
       st.sampled_from([2, 4]))
@example((1, 2, 3, 5, 7, 0, 0), np.float64, True, 2, 2)
@example((1, 2, 3, 9, 11, 0, 1), np.float64, True, 2, 4)
def test_winograd_with_numpys_matmul_matches_torch_too(layer, dtype, bias, seed, tile):
    # Each chunk is one nogil call where NumPy's BLAS can be called by address (kernels/cpu_blas.py;
    # the tests above), and Python around np.matmul where it cannot: that path, against torch too.
    with pytest.MonkeyPatch.context() as patch:  # (not the fixture: one per drawn example)
        patch.setattr(cpu_blas, "ENABLED", False)
        test_winograd_matches_torch.hypothesis.inner_test(layer, dtype, bias, seed, tile)
        test_winograd_matches_torch_with_several_chunks(tile)


@pytest.mark.parametrize("tile", [2, 4])
def test_the_nogil_chunks_give_the_bits_of_numpys_matmul(tile):
    # The same 16 (or 36) products of the same OpenBLAS, one gemm each (np.matmul makes a batched
    # product so): the same bits, where no product is a single row or column (np.matmul's gemv).
    if not cpu_blas.gemm_address(np.float32):
        pytest.skip("NumPy's BLAS cannot be called by address here")
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (5, 24, 15, 13)).astype(np.float32)
    weight = rng.uniform(-1, 1, (40, 24, 3, 3)).astype(np.float32)
    nogil = winograd_conv2d_forward(x, weight, None, 1, 1, None, tile)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_blas, "ENABLED", False)
        assert np.array_equal(winograd_conv2d_forward(x, weight, None, 1, 1, None, tile), nogil)


# (x shape, W shape, padding): the 3x3 layers the rule was measured to speed up (kernels/cpu_conv.py)
WINOGRAD_LAYERS = [
    ((4, 64, 224, 224), (64, 64, 3, 3), 1),  # VGG-16
    ((4, 128, 112, 112), (128, 128, 3, 3), 1),
    ((4, 256, 56, 56), (256, 256, 3, 3), 1),
    ((4, 512, 28, 28), (512, 512, 3, 3), 1),
    ((4, 512, 14, 14), (512, 512, 3, 3), 1),
    ((8, 64, 56, 56), (64, 64, 3, 3), 1),  # ResNet-50
    ((8, 128, 28, 28), (128, 128, 3, 3), 1),
    ((8, 256, 14, 14), (256, 256, 3, 3), 1),
    ((8, 128, 56, 56), (32, 128, 3, 3), 1),  # DenseNet-121
    ((8, 128, 14, 14), (32, 128, 3, 3), 1),
]
# and those it keeps on im2col, with (stride, dilation, groups)
IM2COL_LAYERS = [
    ((4, 3, 224, 224), (64, 3, 3, 3), 1, (1, 1, 1)),  # VGG-16's first layer: 3 input channels
    ((8, 512, 7, 7), (512, 512, 3, 3), 1, (1, 1, 1)),  # ResNet-50's last stage: 7x7 output
    ((8, 128, 7, 7), (32, 128, 3, 3), 1, (1, 1, 1)),  # DenseNet-121's last block
    ((8, 64, 56, 56), (64, 64, 3, 3), 1, (2, 1, 1)),  # stride 2
    ((8, 64, 56, 56), (64, 64, 3, 3), 2, (1, 2, 1)),  # dilation 2
    ((8, 64, 56, 56), (64, 32, 3, 3), 1, (1, 1, 2)),  # two groups
    ((8, 64, 56, 56), (64, 64, 5, 5), 2, (1, 1, 1)),  # 5x5
    ((8, 64, 1, 56), (64, 64, 3, 3), 1, (1, 1, 1)),  # one input row: the outer taps see only padding
    ((4, 448, 8, 8), (384, 448, 3, 3), 1, (1, 1, 1)),  # Inception v3 at 8x8, batch 4: 80 tiles, too few
]


@pytest.mark.parametrize("x_shape, w_shape, padding", WINOGRAD_LAYERS)
def test_rule_sends_measured_layers_to_winograd(x_shape, w_shape, padding):
    assert cpu_conv._winograd_suits(x_shape, w_shape, 1, 1, padding, padding, 1, 1, 1)


@pytest.mark.parametrize("x_shape, w_shape, padding, window", IM2COL_LAYERS)
def test_rule_keeps_other_layers_on_im2col(x_shape, w_shape, padding, window):
    stride, dilation, groups = window
    assert not cpu_conv._winograd_suits(x_shape, w_shape, stride, stride, padding, padding, dilation, dilation, groups)


@pytest.mark.parametrize("outputs, tile", [((14, 14), 2), ((15, 40), 2), ((16, 16), 4), ((56, 56), 4)])
def test_rule_takes_the_4x4_tile_from_16_outputs_on(outputs, tile):
    assert cpu_conv._winograd_tile(*outputs) == tile


@pytest.fixture
def winograd_calls(monkeypatch):
    """The (x shape, W shape, tile) of every call conv2d makes to Winograd, while the test runs."""
    calls = []

    def counting(x, W, b, PH, PW, normalisation=None, outputs_per_tile=2):
        calls.append((x.shape, W.shape, outputs_per_tile))
        return winograd_conv2d_forward(x, W, b, PH, PW, normalisation, outputs_per_tile)
    monkeypatch.setattr(cpu_conv, "winograd_conv2d_forward", counting)
    return calls


@pytest.mark.parametrize("side, tile", [(16, 4), (12, 2)])
def test_conv2d_forward_and_backward_take_winograd(winograd_calls, side, tile):
    # A ResNet-style 3x3 layer with as many output as input channels, small enough to be quick:
    # the forward and dx (as the convolution of gy with the turned weight) go through Winograd,
    # with the tile the rule names for the output's size.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 32, side, side)).astype(np.float32)
    weight = rng.uniform(-1, 1, (32, 32, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 32).astype(np.float32)
    assert cpu_conv._winograd_suits(x.shape, weight.shape, 1, 1, 1, 1, 1, 1, 1)
    y = cpu.conv2d_forward(x, weight, b, 1, 1, 1, 1, 1, 1, 1)
    assert winograd_calls == [(x.shape, weight.shape, tile)]
    _assert_matches_torch(y, x, weight, b, (1, 1), tile)

    gy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    gx, gW, gb = cpu.conv2d_backward(gy, x, weight, 1, 1, 1, 1, 1, 1, 1)
    assert winograd_calls[1:] == [(gy.shape, (32, 32, 3, 3), tile)]
    x_torch = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    W_torch = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    torch_F.conv2d(x_torch, W_torch, padding=1).backward(torch.from_numpy(gy.astype(np.float64)))
    # gx sums 9 * OC products of numbers in [-1, 1]: 1e-6 per term, as for y (8 times that for
    # F(4,3)); gW sums N * side * side
    per_term = 1e-6 * (1 if tile == 2 else 8)
    np.testing.assert_allclose(gx, x_torch.grad.numpy(), rtol=10 * per_term, atol=per_term * 9 * 32)
    np.testing.assert_allclose(gW, W_torch.grad.numpy(), rtol=10 * per_term, atol=per_term * 4 * side * side)
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6 * 4 * side * side)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_gives_the_same_bits_on_any_thread_count(tile):
    # Chunks of tile rows are fixed by the layer's shape, each chunk's products are one thread's:
    # 1, 2 or 3 threads must give the same bits.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (16, 32, 20, 20)).astype(np.float32)
    weight = rng.uniform(-1, 1, (32, 32, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 32).astype(np.float32)
    assert len(winograd_chunks(16, 32, 32, 20, 20, tile)) > 3
    previous = parallel.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            parallel.set_num_threads(threads)
            results.append(winograd_conv2d_forward(x, weight, b, 1, 1, None, tile))
    finally:
        parallel.set_num_threads(previous)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("x_shape, w_shape, padding", [
    ((1, 2, 5, 5), (3, 2, 5, 5), 1),  # not a 3x3 kernel
    ((1, 2, 5, 5), (3, 4, 3, 3), 1),  # weight channels != input channels
    ((1, 2, 1, 5), (3, 2, 3, 3), 0),  # one row, no padding: no output row
])
def test_winograd_rejects_what_it_cannot_compute(x_shape, w_shape, padding):
    with pytest.raises(ValueError, match="winograd_conv2d_forward: expected"):
        winograd_conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), None, padding, padding)
