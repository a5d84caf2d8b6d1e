"""The CuPy kernels (tinycnn.kernels.gpu) against the NumPy reference, whole networks on GPU
against CPU, and gradchecks on GPU. Every test here needs CuPy and a CUDA device and is skipped
cleanly without them (tinycnn.kernels.gpu is imported inside the tests, never at collection).
"""
import copy

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinycnn
import tinycnn.functional as F
from tinycnn import backend, models
from tinycnn.kernels import reference

from support import assert_close
from test_kernels import DTYPES, convolutions, normalization_inputs, windows

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")]


def _array(seed, shape, dtype):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dtype)


def _gpu():
    from tinycnn.kernels import gpu
    return gpu


def _assert_equal(actual, expected, what):
    actual = backend.to_cpu(actual)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def test_dispatch_routes_cupy_arrays_to_the_gpu_kernels():
    x = backend.cupy.zeros((1, 1, 3, 3))
    for kernels in ("auto", "numpy", "numba"):
        with tinycnn.config.using(kernels=kernels):
            for name in tinycnn.kernels.PRIMITIVES:
                assert tinycnn.kernels.implementation(name, x) is _gpu(), (kernels, name)
                assert callable(getattr(_gpu(), name)), name


@given(convolutions(), DTYPES, st.booleans(), st.integers(0, 2**16))
def test_conv2d_and_matmul_equal_reference(convolution, dtype, bias, seed):
    x_shape, w_shape, window, groups = convolution
    gpu = _gpu()
    x, W = _array(seed, x_shape, dtype), _array(seed + 1, w_shape, dtype)
    b = _array(seed + 2, w_shape[:1], dtype) if bias else None
    y = gpu.conv2d_forward(backend.to_gpu(x), backend.to_gpu(W), None if b is None else backend.to_gpu(b),
                           *window, groups)
    assert_close(backend.to_cpu(y), reference.conv2d_forward(x, W, b, *window, groups), dtype, what="conv2d_forward")
    gy = _array(seed + 3, y.shape, dtype)
    grads = gpu.conv2d_backward(backend.to_gpu(gy), backend.to_gpu(x), backend.to_gpu(W), *window, groups)
    for actual, expected, name in zip(grads, reference.conv2d_backward(gy, x, W, *window, groups), ("gx", "gW", "gb")):
        assert_close(backend.to_cpu(actual), expected, dtype, what=f"conv2d_backward {name}")
    a, c = _array(seed + 4, (7, 5), dtype), _array(seed + 5, (5, 3), dtype)
    assert_close(backend.to_cpu(gpu.matmul(backend.to_gpu(a), backend.to_gpu(c))), reference.matmul(a, c), dtype)


@given(windows(), DTYPES, st.integers(0, 2**16))
def test_im2col_and_col2im_equal_reference(shape_window, dtype, seed):
    (N, C, H, W), window = shape_window
    gpu = _gpu()
    x = _array(seed, (N, C, H, W), dtype)
    col = reference.im2col(x, *window)
    _assert_equal(gpu.im2col(backend.to_gpu(x), *window), col, f"im2col {(N, C, H, W)} {window}")
    gcol = _array(seed + 1, col.shape, dtype)
    KH, KW, SH, SW, PH, PW, DH, DW = window
    # The gather adds taps in the reference's (i, j) order: equal to the bit.
    _assert_equal(gpu.col2im(backend.to_gpu(gcol), H, W, SH, SW, PH, PW, DH, DW),
                  reference.col2im(gcol, H, W, SH, SW, PH, PW, DH, DW), f"col2im {(N, C, H, W)} {window}")


@given(windows(pooling=True), st.booleans(), DTYPES, st.integers(0, 2**16), st.booleans())
def test_max_pool2d_equals_reference(shape_window, ceil_mode, dtype, seed, ties):
    (N, C, H, W), window = shape_window
    gpu = _gpu()
    x = _array(seed, (N, C, H, W), dtype)
    if ties:
        x = np.round(x * 2).astype(dtype)
    y_ref, argmax_ref = reference.max_pool2d_forward(x, *window, ceil_mode)
    y, argmax = gpu.max_pool2d_forward(backend.to_gpu(x), *window, ceil_mode)
    what = f"max_pool2d {(N, C, H, W)} {window} ceil_mode={ceil_mode}"
    _assert_equal(y, y_ref, what)
    _assert_equal(argmax, argmax_ref, what + " argmax")
    gy = _array(seed + 1, y_ref.shape, dtype)
    _assert_equal(gpu.max_pool2d_backward(backend.to_gpu(gy), argmax, H, W),
                  reference.max_pool2d_backward(gy, argmax_ref, H, W), what + " backward")


@given(windows(pooling=True, dilation=False), st.booleans(), st.booleans(), DTYPES, st.integers(0, 2**16))
def test_avg_pool2d_equals_reference(shape_window, ceil_mode, count_include_pad, dtype, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, _, _) = shape_window
    options = (KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad)
    gpu = _gpu()
    x = _array(seed, (N, C, H, W), dtype)
    what = f"avg_pool2d {(N, C, H, W)} {options}"
    y_ref = reference.avg_pool2d_forward(x, *options)
    assert_close(gpu.avg_pool2d_forward(backend.to_gpu(x), *options), y_ref, dtype, what)
    gy = _array(seed + 1, y_ref.shape, dtype)
    assert_close(gpu.avg_pool2d_backward(backend.to_gpu(gy), H, W, *options),
                 reference.avg_pool2d_backward(gy, H, W, *options), dtype, what + " backward")


@given(normalization_inputs(), st.booleans(), DTYPES, st.integers(0, 2**16))
def test_batch_norm_equals_reference(shape, affine, dtype, seed):
    if shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (2,) + shape[1:]  # one value per channel has no variance to normalise by
    gpu = _gpu()
    x = _array(seed, shape, dtype) * 3 + 1
    C = shape[1]
    gamma = _array(seed + 1, (C,), dtype) if affine else None
    beta = _array(seed + 2, (C,), dtype) if affine else None
    on_gpu = (lambda a: None if a is None else backend.to_gpu(a))
    what = f"batch_norm {shape} affine={affine}"
    expected = reference.batch_norm_forward_training(x, gamma, beta, 1e-5)
    outputs = gpu.batch_norm_forward_training(on_gpu(x), on_gpu(gamma), on_gpu(beta), 1e-5)
    for name, actual, oracle in zip(("y", "mean", "var", "inv_std"), outputs, expected):
        assert actual.dtype == dtype, f"{what} {name}: dtype {actual.dtype}"
        assert_close(actual, oracle, dtype, f"{what} {name}")
    _, mean, _, inv_std = expected
    gy = _array(seed + 3, shape, dtype)
    grads = gpu.batch_norm_backward(on_gpu(gy), on_gpu(x), on_gpu(gamma), on_gpu(mean), on_gpu(inv_std))
    for name, actual, oracle in zip(("gx", "ggamma", "gbeta"), grads,
                                    reference.batch_norm_backward(gy, x, gamma, mean, inv_std)):
        assert actual.dtype == dtype, f"{what} {name}: dtype {actual.dtype}"
        assert_close(actual, oracle, dtype, f"{what} {name}")


@given(normalization_inputs(), st.integers(1, 6), DTYPES, st.integers(0, 2**16))
def test_lrn_equals_reference(shape, size, dtype, seed):
    alpha, beta, k = 0.3, 0.75, 2.0
    gpu = _gpu()
    x = _array(seed, shape, dtype) * 2
    what = f"lrn {shape} size={size}"
    y_ref, scale_ref = reference.lrn_forward(x, size, alpha, beta, k)
    y, scale = gpu.lrn_forward(backend.to_gpu(x), size, alpha, beta, k)
    assert_close(y, y_ref, dtype, what + " y")
    assert_close(scale, scale_ref, dtype, what + " scale")
    gy = _array(seed + 1, shape, dtype)
    gx = gpu.lrn_backward(backend.to_gpu(x), backend.to_gpu(y_ref), backend.to_gpu(scale_ref),
                          backend.to_gpu(gy), size, alpha, beta)
    assert_close(gx, reference.lrn_backward(x, y_ref, scale_ref, gy, size, alpha, beta), dtype, what + " backward")


def _to_float64(model):
    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                parameter.data = parameter.data.astype(np.float64)
        for name in module._buffers:
            value = getattr(module, name)
            if value is not None and value.dtype.kind == "f":
                object.__setattr__(module, name, value.astype(np.float64))
    return model


def _forward_backward(model, x, device):
    model = model.to(device)
    xt = tinycnn.tensor(x, requires_grad=True, device=device)
    y = model(xt)
    # A fixed random weighting of the outputs, so every logit's gradient path is exercised.
    weights = np.random.default_rng(1).standard_normal(y.shape)
    (y * tinycnn.tensor(weights, device=device)).sum().backward()
    grads = {name: backend.to_cpu(p.grad) for name, p in model.named_parameters() if p.grad is not None}
    return backend.to_cpu(y.data), backend.to_cpu(xt.grad), grads


@pytest.mark.parametrize("name, options, input_shape", [
    ("lenet5", dict(), (2, 1, 32, 32)),
    # 64x64 leaves 2x2 maps (8 values per channel) for the last batch norms: with 1x1 maps and a
    # batch of 2 they divide by a near-zero variance and amplify any round-off to 1e-7.
    ("resnet18", dict(num_classes=10), (2, 3, 64, 64)),
])
def test_network_forward_backward_same_on_gpu_and_cpu(name, options, input_shape):
    tinycnn.manual_seed(0)
    model = _to_float64(models.create(name, **options)).train()
    x = _array(0, input_shape, np.float64)
    y_cpu, gx_cpu, grads_cpu = _forward_backward(copy.deepcopy(model), x, "cpu")
    y_gpu, gx_gpu, grads_gpu = _forward_backward(copy.deepcopy(model), x, "gpu")
    assert grads_gpu.keys() == grads_cpu.keys()
    for what, expected, actual in [("output", y_cpu, y_gpu), ("input gradient", gx_cpu, gx_gpu)] + [
            (f"{parameter}.grad", grads_cpu[parameter], grads_gpu[parameter]) for parameter in grads_cpu]:
        # A whole network of differently ordered sums (cuBLAS against OpenBLAS, batch-norm
        # reductions): round-off measured against each array's scale, not each element's.
        np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max(),
                                   err_msg=f"{name} {what}")


def _gpu_tensor(seed, shape):
    return tinycnn.tensor(_array(seed, shape, np.float64), requires_grad=True, device="gpu")


@pytest.mark.parametrize("op, shapes", [
    (lambda x, W: F.conv2d(x, W, stride=2, padding=1, dilation=(1, 2)), [(2, 2, 6, 7), (3, 2, 3, 2)]),
    (lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True), [(1, 2, 6, 5)]),
    (lambda x: F.avg_pool2d(x, (2, 3), stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     [(2, 1, 5, 6)]),
    (lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), [(3, 2, 3, 3), (2,), (2,)]),
    (lambda x: F.local_response_norm(x, 4, alpha=0.5, beta=0.75, k=2.0), [(2, 5, 2, 2)]),
], ids=["conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "local_response_norm"])
def test_gradcheck_on_gpu(op, shapes):
    inputs = [_gpu_tensor(seed, shape) for seed, shape in enumerate(shapes)]
    assert tinycnn.gradcheck(op, inputs)
