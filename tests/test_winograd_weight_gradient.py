"""The weight gradient of 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3)
(kernels/cpu_winograd_backward.py) and F(4x4, 3x3) (kernels/cpu_winograd4x4_backward.py), against
PyTorch's convolution backward directly.

Shapes are drawn to reach the transforms' edges: outputs of odd height or width, or not a multiple
of 4 (a last tile that sticks out of the output), 1x1 and 2x2 inputs, paddings 0, 1 and 2 (a tile
reading only padding), batches of one and several samples across chunk boundaries. float64 must
agree to round-off; float32 to the error that the transforms' coefficients allow (+-1/2 for
F(2x2, 3x3); 4, 5, 8 and 1/6 for F(4x4, 3x3), measured 5-8 times F(2x2, 3x3)'s).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import example, given, strategies as st

from tinycnn.kernels import cpu_blas, cpu_conv, parallel
from tinycnn.kernels.cpu_winograd_backward import weight_gradient_chunks, winograd_conv2d_weight_gradient


def torch_weight_gradient(x, W, gy, padding):
    weight = torch.tensor(W, requires_grad=True)
    y = torch_F.conv2d(torch.tensor(x), weight, padding=padding)
    y.backward(torch.tensor(gy))
    return weight.grad.numpy()


def draw_case(rng, N, C, OC, H, W, padding, dtype):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = rng.standard_normal((OC, C, 3, 3)).astype(dtype)
    gy = rng.standard_normal((N, OC, H + 2 * padding - 2, W + 2 * padding - 2)).astype(dtype)
    return x, weight, gy


@given(N=st.integers(1, 3), C=st.integers(1, 6), OC=st.integers(1, 6), H=st.integers(1, 11),
       W=st.integers(1, 11), padding=st.integers(0, 2), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**16), tile=st.sampled_from([2, 4]))
@example(N=2, C=3, OC=4, H=7, W=5, padding=1, dtype=np.float64, seed=0, tile=2)  # odd output sides
@example(N=2, C=3, OC=4, H=7, W=5, padding=1, dtype=np.float64, seed=0, tile=4)  # 7 and 5: 4 + 3, 4 + 1
@example(N=1, C=2, OC=3, H=1, W=1, padding=1, dtype=np.float64, seed=0, tile=2)  # one tile, mostly padding
@example(N=1, C=2, OC=3, H=1, W=1, padding=1, dtype=np.float64, seed=0, tile=4)
@example(N=1, C=1, OC=1, H=2, W=2, padding=2, dtype=np.float64, seed=0, tile=2)  # tiles that see only padding
@example(N=1, C=1, OC=1, H=4, W=4, padding=2, dtype=np.float64, seed=0, tile=4)
@example(N=2, C=2, OC=3, H=10, W=10, padding=1, dtype=np.float64, seed=0, tile=4)  # 10 = 4 + 4 + 2
def test_weight_gradient_equals_torch(N, C, OC, H, W, padding, dtype, seed, tile):
    if H + 2 * padding < 3 or W + 2 * padding < 3:
        return  # no output: not a valid layer
    x, weight, gy = draw_case(np.random.default_rng(seed), N, C, OC, H, W, padding, dtype)
    expected = torch_weight_gradient(x.astype(np.float64), weight.astype(np.float64), gy.astype(np.float64), padding)
    got = winograd_conv2d_weight_gradient(gy, x, padding, padding, tile)
    assert got.shape == expected.shape and got.dtype == dtype
    # float32: sums of up to N*OH*OW products of unit-normal values, each through the transforms
    # (measured over 400 drawn cases: 4.4e-7 of the largest entry for F(2x2, 3x3), 3.4e-6 for
    # F(4x4, 3x3); float64 6e-16 and 5e-15)
    scale = max(1.0, np.abs(expected).max())
    tolerance = 1e-13 * scale if dtype == np.float64 else (2e-6 if tile == 2 else 2e-5) * scale
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)


@given(N=st.integers(1, 3), C=st.integers(1, 6), OC=st.integers(1, 6), H=st.integers(1, 11),
       W=st.integers(1, 11), padding=st.integers(0, 2), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**16), tile=st.sampled_from([2, 4]))
@example(N=2, C=3, OC=4, H=7, W=5, padding=1, dtype=np.float64, seed=0, tile=2)
@example(N=2, C=5, OC=2, H=6, W=6, padding=1, dtype=np.float32, seed=1, tile=2)  # more input channels
@example(N=2, C=5, OC=2, H=9, W=6, padding=1, dtype=np.float32, seed=1, tile=4)
def test_the_weight_gradient_with_numpys_matmul_matches_torch_too(N, C, OC, H, W, padding, dtype, seed, tile):
    # Each chunk is one nogil call where NumPy's BLAS can be called by address (kernels/cpu_blas.py;
    # the test above), and Python around np.matmul where it cannot: that path, against torch too.
    with pytest.MonkeyPatch.context() as patch:  # (not the fixture: one per drawn example)
        patch.setattr(cpu_blas, "ENABLED", False)
        test_weight_gradient_equals_torch.hypothesis.inner_test(N, C, OC, H, W, padding, dtype, seed, tile)


@pytest.mark.parametrize("tile, bound", [(2, 2e-6), (4, 3e-5)])
def test_a_resnet_sized_layer_in_float32_is_within_its_transforms_round_off(tile, bound):
    # 3x3 128->128 at 28x28, batch 2: the error relative to the largest entry. Measured 6.2e-7 for
    # F(2x2, 3x3), 5.0e-6 for F(4x4, 3x3) (1.2e-5 at DenseNet-121's 128->32 at 56x56, batch 8;
    # PyTorch's float32 3.4e-6 there).
    rng = np.random.default_rng(1)
    x, _, gy = draw_case(rng, 2, 128, 128, 28, 28, 1, np.float32)
    expected = torch_weight_gradient(x.astype(np.float64), np.zeros((128, 128, 3, 3)), gy.astype(np.float64), 1)
    got = winograd_conv2d_weight_gradient(gy, x, 1, 1, tile)
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    assert relative < bound, relative


@pytest.mark.parametrize("tile", [2, 4])
def test_the_sum_over_chunks_does_not_depend_on_the_thread_count(tile):
    rng = np.random.default_rng(2)
    x, _, gy = draw_case(rng, 8, 16, 8, 62, 62, 1, np.float32)
    assert len(weight_gradient_chunks(8, 16, 8, 62, 62, tile)) > 2  # several chunks, summed in order
    previous = parallel.get_num_threads()
    try:
        parallel.set_num_threads(1)
        one = winograd_conv2d_weight_gradient(gy, x, 1, 1, tile)
        parallel.set_num_threads(3)
        three = winograd_conv2d_weight_gradient(gy, x, 1, 1, tile)
    finally:
        parallel.set_num_threads(previous)
    assert np.array_equal(one, three)


@pytest.mark.parametrize("tile", [2, 4])
def test_an_empty_batch_has_a_zero_weight_gradient(tile):
    x = np.zeros((0, 3, 5, 5), np.float32)
    gy = np.zeros((0, 4, 5, 5), np.float32)
    assert np.array_equal(winograd_conv2d_weight_gradient(gy, x, 1, 1, tile), np.zeros((4, 3, 3, 3), np.float32))


@pytest.mark.parametrize("shape, takes_tile", [
    ((8, 64, 56, 56), 4),     # ResNet-50's 3x3 64->64 at 56x56: F(4x4, 3x3)
    ((8, 128, 16, 16), 4),    # the smallest output F(4x4, 3x3) takes
    ((8, 128, 14, 14), 2),    # DenseNet-121's 3x3 128->32 at 14x14: F(2x2, 3x3)
    ((8, 512, 7, 7), None),   # ResNet-50's last stage: 7x7 outputs waste 30% of the 8x8 tiles
    ((32, 64, 8, 8), 2),      # ResNet-18 on 32x32 images, layer1 (the smallest Winograd takes)
])
def test_conv2d_backward_sends_the_layers_the_rule_names_to_winograd(monkeypatch, shape, takes_tile):
    # conv2d_backward must really take the Winograd path where the rule says so (and not where it
    # does not): a path that is silently never taken would leave every other test green.
    N, C, H, W = shape
    calls = []
    original = cpu_conv.winograd_conv2d_weight_gradient
    monkeypatch.setattr(cpu_conv, "winograd_conv2d_weight_gradient",
                        lambda *args: calls.append(args) or original(*args))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, C, H, W)).astype(np.float32).repeat(N, axis=0)
    weight = (rng.standard_normal((32 if C == 128 else C, C, 3, 3)) * 0.05).astype(np.float32)
    gy = rng.standard_normal((N, weight.shape[0], H, W)).astype(np.float32)
    _, gW, _ = cpu_conv.conv2d_backward(gy, x, weight, 1, 1, 1, 1, 1, 1, 1, (False, True, False))
    assert [args[4] for args in calls] == ([takes_tile] if takes_tile else [])
    expected = torch_weight_gradient(x.astype(np.float64), weight.astype(np.float64), gy.astype(np.float64), 1)
    np.testing.assert_allclose(gW, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
