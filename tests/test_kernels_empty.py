"""An empty batch (N = 0) through every kernel primitive of the NumPy reference and the Numba
backend: each output has the shape and dtype PyTorch gives for the same call, and every gradient
that sums over the batch (a weight's, a bias's, batch norm's scale and shift) is zero, as PyTorch's
is. Each case is run on a layer where it matters which code path is taken (conv2d's pixel-major
and channel-major columns, groups, 2x2 and 3x3 pooling windows)."""
import contextlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

from tinycnn.kernels import cpu, reference

BACKENDS = {"reference": reference, "numba": cpu}
DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def kernels(request):
    return BACKENDS[request.param]


@pytest.fixture(params=list(DTYPES), ids=["float32", "float64"])
def dtype(request):
    return request.param


def _assert_like(actual, expected, what):
    """actual (NumPy) has expected's (torch) shape and dtype, and equal values (zeros where the
    gradient sums over the empty batch)."""
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, torch {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, torch {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def _empty(shape, dtype):
    return np.zeros((0,) + shape, dtype=dtype), torch.zeros((0,) + shape, dtype=DTYPES[dtype], requires_grad=True)


def _grads(output, inputs):
    """torch's gradients of output.sum() for inputs (an empty output gives zero-filled ones)."""
    return torch.autograd.grad(output.sum(), inputs, allow_unused=True)


def test_matmul(kernels, dtype):
    a, b = np.zeros((0, 5), dtype), np.ones((5, 3), dtype)
    _assert_like(kernels.matmul(a, b), torch.from_numpy(a) @ torch.from_numpy(b), "a (0, K) @ b")
    # The weight gradient of a linear layer at N = 0: (out, 0) @ (0, in), all zeros.
    g, x = np.zeros((3, 0), dtype), np.zeros((0, 5), dtype)
    _assert_like(kernels.matmul(g, x), torch.from_numpy(g) @ torch.from_numpy(x), "(M, 0) @ (0, N)")


@pytest.mark.parametrize("window", [(3, 3, 1, 1, 1, 1, 1, 1), (2, 3, 2, 1, 0, 1, 1, 2)])
def test_im2col_and_col2im(kernels, dtype, window):
    KH, KW, SH, SW, PH, PW, DH, DW = window
    x, torch_x = _empty((3, 8, 8), dtype)
    col = kernels.im2col(x, *window)
    unfolded = torch_F.unfold(torch_x, (KH, KW), (DH, DW), (PH, PW), (SH, SW))  # (0, C*KH*KW, OH*OW)
    OH, OW = col.shape[4:]
    assert OH * OW == unfolded.shape[2]
    _assert_like(col.reshape(0, 3 * KH * KW, OH * OW), unfolded, "im2col")
    gx = kernels.col2im(np.zeros(col.shape, dtype), 8, 8, SH, SW, PH, PW, DH, DW)
    _assert_like(gx, torch_F.fold(unfolded, (8, 8), (KH, KW), (DH, DW), (PH, PW), (SH, SW)), "col2im")


@pytest.mark.parametrize("channels, out_channels, size, stride, padding, dilation, groups, bias", [
    (6, 16, 14, 1, 0, 1, 1, True),   # LeNet-5's second layer: pixel-major columns
    (3, 8, 32, 2, 1, 1, 1, False),   # channel-major columns, no bias
    (8, 8, 20, 1, 2, 2, 4, True),    # grouped and dilated
])
def test_conv2d_forward_and_backward(kernels, dtype, channels, out_channels, size, stride, padding, dilation, groups,
                                     bias):
    x, torch_x = _empty((channels, size, size), dtype)
    W = np.random.default_rng(0).standard_normal((out_channels, channels // groups, 5, 5)).astype(dtype)
    b = np.ones(out_channels, dtype) if bias else None
    torch_W = torch.tensor(W, requires_grad=True)
    torch_b = torch.tensor(b, requires_grad=True) if bias else None
    window = (stride, stride, padding, padding, dilation, dilation, groups)
    y = kernels.conv2d_forward(x, W, b, *window)
    torch_y = torch_F.conv2d(torch_x, torch_W, torch_b, stride, padding, dilation, groups)
    _assert_like(y, torch_y, "conv2d y")
    gx, gW, gb = kernels.conv2d_backward(np.zeros(y.shape, dtype), x, W, *window)
    torch_gx, torch_gW, torch_gb = _grads(torch_y, [torch_x, torch_W, torch_b if bias else torch_W])
    _assert_like(gx, torch_gx, "conv2d gx")
    _assert_like(gW, torch_gW, "conv2d gW")
    _assert_like(gb, torch_gb if bias else torch.zeros(out_channels, dtype=DTYPES[dtype]), "conv2d gb")
    # Only the input's gradient, as a frozen layer asks.
    gx, gW, gb = kernels.conv2d_backward(np.zeros(y.shape, dtype), x, W, *window, needs_grad=(True, False, False))
    _assert_like(gx, torch_gx, "conv2d gx alone")
    assert gW is None and gb is None


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [(2, 2, 0, False), (3, 2, 1, True)])
def test_max_pool2d(kernels, dtype, kernel, stride, padding, ceil_mode):
    x, torch_x = _empty((3, 9, 9), dtype)
    y, argmax = kernels.max_pool2d_forward(x, kernel, kernel, stride, stride, padding, padding, 1, 1, ceil_mode)
    torch_y, torch_argmax = torch_F.max_pool2d(torch_x, kernel, stride, padding, 1, ceil_mode, return_indices=True)
    _assert_like(y, torch_y, "max_pool2d y")
    _assert_like(argmax, torch_argmax, "max_pool2d argmax")
    gx = kernels.max_pool2d_backward(np.zeros(y.shape, dtype), argmax, 9, 9)
    _assert_like(gx, _grads(torch_y, [torch_x])[0], "max_pool2d gx")


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad", [
    (2, 2, 0, False, True), (3, 2, 1, True, False)])
def test_avg_pool2d(kernels, dtype, kernel, stride, padding, ceil_mode, count_include_pad):
    x, torch_x = _empty((3, 9, 9), dtype)
    window = (kernel, kernel, stride, stride, padding, padding, ceil_mode, count_include_pad)
    y = kernels.avg_pool2d_forward(x, *window)
    torch_y = torch_F.avg_pool2d(torch_x, kernel, stride, padding, ceil_mode, count_include_pad)
    _assert_like(y, torch_y, "avg_pool2d y")
    gx = kernels.avg_pool2d_backward(np.zeros(y.shape, dtype), 9, 9, *window)
    _assert_like(gx, _grads(torch_y, [torch_x])[0], "avg_pool2d gx")


@pytest.mark.parametrize("shape", [(4, 5, 5), (4,)], ids=["images", "features"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(kernels, dtype, shape, affine):
    x, torch_x = _empty(shape, dtype)
    C = shape[0]
    gamma = np.full(C, 2, dtype) if affine else None
    beta = np.ones(C, dtype) if affine else None
    torch_gamma = torch.tensor(gamma, requires_grad=True) if affine else None
    torch_beta = torch.tensor(beta, requires_grad=True) if affine else None
    with _no_empty_mean_warnings():
        y, mean, var, inv_std = kernels.batch_norm_forward_training(x, gamma, beta, 1e-5)
    torch_y = torch_F.batch_norm(torch_x, torch.zeros(C, dtype=DTYPES[dtype]), torch.ones(C, dtype=DTYPES[dtype]),
                                 torch_gamma, torch_beta, training=True)
    _assert_like(y, torch_y, "batch_norm y")
    # PyTorch keeps no statistics of an empty batch; ours are NaN, the mean of no values.
    for name, statistic in (("mean", mean), ("var", var), ("inv_std", inv_std)):
        assert statistic.shape == (C,) and statistic.dtype == dtype and np.isnan(statistic).all(), name
    with _no_empty_mean_warnings():
        gx, ggamma, gbeta = kernels.batch_norm_backward(np.zeros(y.shape, dtype), x, gamma, mean, inv_std)
    if affine:
        torch_gx, torch_ggamma, torch_gbeta = _grads(torch_y, [torch_x, torch_gamma, torch_beta])
    else:
        torch_gx = _grads(torch_y, [torch_x])[0]
        torch_ggamma = torch_gbeta = torch.zeros(C, dtype=DTYPES[dtype])
    _assert_like(gx, torch_gx, "batch_norm gx")
    _assert_like(ggamma, torch_ggamma, "batch_norm ggamma")
    _assert_like(gbeta, torch_gbeta, "batch_norm gbeta")


@contextlib.contextmanager
def _no_empty_mean_warnings():
    """The reference's statistics of an empty batch make NumPy warn of the mean of an empty slice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.mark.parametrize("size", [5, 4])
def test_lrn(kernels, dtype, size):
    x, torch_x = _empty((7, 3, 3), dtype)
    alpha, beta, k = 1e-4, 0.75, 2.0
    y, scale = kernels.lrn_forward(x, size, alpha / size, beta, k)  # PyTorch's alpha is divided by size
    torch_y = torch_F.local_response_norm(torch_x, size, alpha, beta, k)
    _assert_like(y, torch_y, "lrn y")
    _assert_like(scale, torch_y, "lrn scale")  # the same shape as y
    gx = kernels.lrn_backward(x, y, scale, np.zeros(y.shape, dtype), size, alpha / size, beta)
    _assert_like(gx, _grads(torch_y, [torch_x])[0], "lrn gx")


@pytest.mark.parametrize("window, groups", [((1, 1, 1, 1, 1, 1), 1), ((2, 2, 0, 0, 1, 1), 2)])
def test_fused_inference_kernels(kernels, dtype, window, groups):
    # conv -> BatchNorm -> (+ residual) -> ReLU, and concat -> BatchNorm -> ReLU, of inference
    x, torch_x = _empty((4, 6, 6), dtype)
    W = np.ones((6, 4 // groups, 3, 3), dtype)
    statistics = [np.full(6, v, dtype) for v in (2, 1, 0.5, 3)]  # gamma, beta, mean, inv_std
    SH, SW, PH, PW, DH, DW = window
    torch_y = torch_F.conv2d(torch_x, torch.from_numpy(W), stride=(SH, SW), padding=(PH, PW), groups=groups)
    residual = np.zeros((0,) + tuple(torch_y.shape[1:]), dtype)
    for r in (None, residual):
        y = kernels.conv2d_batch_norm_relu_inference(x, W, None, *window, groups, *statistics, r, True)
        _assert_like(y, torch_y, "conv2d_batch_norm_relu_inference y")
    xs = [np.zeros((0, 2, 3, 3), dtype), np.zeros((0, 4, 3, 3), dtype)]
    _assert_like(kernels.concat_batch_norm_relu_inference(xs, *statistics, True),
                 torch.zeros((0, 6, 3, 3), dtype=DTYPES[dtype]), "concat_batch_norm_relu_inference y")


@pytest.mark.parametrize("relu, residual", [(True, False), (True, True), (False, True)])
def test_batch_norm_relu_training(kernels, dtype, relu, residual):
    # training's BatchNorm -> add -> ReLU: an empty output, NaN statistics (as batch_norm's), zero
    # parameter gradients and an empty residual gradient
    x, torch_x = _empty((4, 5, 5), dtype)
    gamma, beta = np.full(4, 2, dtype), np.ones(4, dtype)
    r = np.zeros(x.shape, dtype) if residual else None
    with _no_empty_mean_warnings():
        y, mean, var, inv_std = kernels.batch_norm_relu_forward_training(x, gamma, beta, 1e-5, r, relu)
        gx, ggamma, gbeta, gr = kernels.batch_norm_relu_backward(np.zeros(y.shape, dtype), y, x, gamma, mean,
                                                                 inv_std, relu, residual)
    _assert_like(y, torch_x, "batch_norm_relu y")
    assert np.isnan(mean).all() and mean.shape == (4,)
    _assert_like(gx, torch_x, "batch_norm_relu gx")
    _assert_like(ggamma, torch.zeros(4, dtype=DTYPES[dtype]), "batch_norm_relu ggamma")
    _assert_like(gbeta, torch.zeros(4, dtype=DTYPES[dtype]), "batch_norm_relu gbeta")
    assert (gr is None) != residual and (gr is None or gr.shape == x.shape)


def test_concatenate(kernels, dtype):
    xs = [np.zeros((0, 2, 3, 3), dtype), np.zeros((0, 4, 3, 3), dtype)]
    _assert_like(kernels.concatenate(xs, 1), torch.cat([torch.from_numpy(x) for x in xs], dim=1), "concatenate")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update(kernels, dtype, momentum):
    # A parameter with no elements (a layer of zero channels): nothing to update, no error.
    param, grad = np.zeros((0, 3), dtype), np.zeros((0, 3), dtype)
    buffer = np.zeros((0, 3), dtype) if momentum else None
    updated, updated_buffer = kernels.sgd_update(param, grad, buffer, 0.1, momentum, 0.0, 0.01, False, False, True)
    torch_param = torch.nn.Parameter(torch.zeros((0, 3), dtype=DTYPES[dtype]))
    torch_param.grad = torch.zeros((0, 3), dtype=DTYPES[dtype])
    torch.optim.SGD([torch_param], lr=0.1, momentum=momentum, weight_decay=0.01).step()
    _assert_like(updated, torch_param, "sgd_update param")
    assert updated is param and updated_buffer is buffer
