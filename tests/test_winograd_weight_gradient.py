"""The weight gradient of 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3)
(kernels/cpu_winograd_backward.py), against PyTorch's convolution backward directly.

Shapes are drawn to reach the transforms' edges: outputs of odd height or width (a last tile that
sticks out of the output), 1x1 and 2x2 inputs, paddings 0, 1 and 2 (a tile reading only padding),
batches of one and several samples across chunk boundaries. float64 must agree to round-off;
float32 to the error that the transforms' +-1/2 coefficients and the 16 products allow.
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


@given(N=st.integers(1, 3), C=st.integers(1, 6), OC=st.integers(1, 6), H=st.integers(1, 9),
       W=st.integers(1, 9), padding=st.integers(0, 2), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**16))
@example(N=2, C=3, OC=4, H=7, W=5, padding=1, dtype=np.float64, seed=0)  # odd output sides
@example(N=1, C=2, OC=3, H=1, W=1, padding=1, dtype=np.float64, seed=0)  # one tile, mostly padding
@example(N=1, C=1, OC=1, H=2, W=2, padding=2, dtype=np.float64, seed=0)  # tiles that see only padding
def test_weight_gradient_equals_torch(N, C, OC, H, W, padding, dtype, seed):
    if H + 2 * padding < 3 or W + 2 * padding < 3:
        return  # no output: not a valid layer
    x, weight, gy = draw_case(np.random.default_rng(seed), N, C, OC, H, W, padding, dtype)
    expected = torch_weight_gradient(x.astype(np.float64), weight.astype(np.float64), gy.astype(np.float64), padding)
    got = winograd_conv2d_weight_gradient(gy, x, padding, padding)
    assert got.shape == expected.shape and got.dtype == dtype
    # float32: sums of up to N*OH*OW products of unit-normal values, each through the transforms
    tolerance = 1e-12 if dtype == np.float64 else 2e-5 * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)


@given(N=st.integers(1, 3), C=st.integers(1, 6), OC=st.integers(1, 6), H=st.integers(1, 9),
       W=st.integers(1, 9), padding=st.integers(0, 2), dtype=st.sampled_from([np.float64, np.float32]),
       seed=st.integers(0, 2**16))
@example(N=2, C=3, OC=4, H=7, W=5, padding=1, dtype=np.float64, seed=0)
@example(N=2, C=5, OC=2, H=6, W=6, padding=1, dtype=np.float32, seed=1)  # more input channels
def test_the_weight_gradient_with_numpys_matmul_matches_torch_too(N, C, OC, H, W, padding, dtype, seed):
    # Each chunk is one nogil call where NumPy's BLAS can be called by address (kernels/cpu_blas.py;
    # the test above), and Python around np.matmul where it cannot: that path, against torch too.
    with pytest.MonkeyPatch.context() as patch:  # (not the fixture: one per drawn example)
        patch.setattr(cpu_blas, "ENABLED", False)
        test_weight_gradient_equals_torch.hypothesis.inner_test(N, C, OC, H, W, padding, dtype, seed)


def test_a_resnet_sized_layer_in_float32_is_within_a_few_ulps_of_float64():
    # 3x3 128->128 at 28x28, batch 2, weights at He scale: the error relative to the largest entry.
    rng = np.random.default_rng(1)
    x, _, gy = draw_case(rng, 2, 128, 128, 28, 28, 1, np.float32)
    expected = torch_weight_gradient(x.astype(np.float64), np.zeros((128, 128, 3, 3)), gy.astype(np.float64), 1)
    got = winograd_conv2d_weight_gradient(gy, x, 1, 1)
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    assert relative < 1e-5, relative


def test_the_sum_over_chunks_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    x, _, gy = draw_case(rng, 8, 16, 8, 62, 62, 1, np.float32)
    assert len(weight_gradient_chunks(8, 16, 8, 62, 62)) > 2  # several chunks, summed in order
    previous = parallel.get_num_threads()
    try:
        parallel.set_num_threads(1)
        one = winograd_conv2d_weight_gradient(gy, x, 1, 1)
        parallel.set_num_threads(3)
        three = winograd_conv2d_weight_gradient(gy, x, 1, 1)
    finally:
        parallel.set_num_threads(previous)
    assert np.array_equal(one, three)


def test_an_empty_batch_has_a_zero_weight_gradient():
    x = np.zeros((0, 3, 5, 5), np.float32)
    gy = np.zeros((0, 4, 5, 5), np.float32)
    assert np.array_equal(winograd_conv2d_weight_gradient(gy, x, 1, 1), np.zeros((4, 3, 3, 3), np.float32))


@pytest.mark.parametrize("shape, takes_winograd", [
    ((8, 64, 56, 56), True),     # ResNet-50's 3x3 64->64 at 56x56
    ((8, 128, 14, 14), True),    # DenseNet-121's 3x3 128->32 at 14x14
    ((8, 512, 7, 7), False),     # ResNet-50's last stage: 7x7 outputs waste 30% of the 8x8 tiles
    ((32, 64, 8, 8), True),      # ResNet-18 on 32x32 images, layer1 (the smallest Winograd takes)
])
def test_conv2d_backward_sends_the_layers_the_rule_names_to_winograd(monkeypatch, shape, takes_winograd):
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
    assert bool(calls) == takes_winograd
    expected = torch_weight_gradient(x.astype(np.float64), weight.astype(np.float64), gy.astype(np.float64), 1)
    np.testing.assert_allclose(gW, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
