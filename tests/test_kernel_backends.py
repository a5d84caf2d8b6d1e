"""Every kernel backend against the float64 reference, and the reference against PyTorch.

One parametrised test per primitive runs each backend on drawn cases and compares it with
tinycnn.kernels.reference computed in float64 on the same values:

    reference     tinycnn.kernels.reference in the case's dtype (float32 or float64)
    numba         tinycnn.kernels.cpu
    cuda_on_cpu   tinycnn.kernels.gpu with its CUDA bodies compiled as C++ and NumPy standing in
                  for CuPy (tests/cuda_harness.py): the GPU code's index maths on any machine
    cupy          tinycnn.kernels.gpu on a CUDA device (skipped without CuPy and a GPU)

The reference is then checked against torch.nn.functional directly, so the oracle is not trusted on
its own word. Output shapes are computed here from PyTorch's documented formula, not with the
kernels' helpers. Gathers (im2col, max pooling) must equal the reference exactly; kernels that sum
within support.TOLERANCES of the case's dtype. The draws include strided and transposed inputs,
ties in max pooling, batch 1 and one channel, dilation, ceil_mode, count_include_pad, even LRN
sizes, and convolutions on the Numba backend's pixel-major path (ungrouped, 4 or more input
channels, outputs narrower than 16: kernels/cpu_conv.py).

Also here: gradchecks of every backend's backward against its own forward (central differences in
float64, 2x2 and 3x3 pooling windows among the draws), col2im as im2col's adjoint, empty batches
through kernels/gpu.py, and, on a GPU, whole networks and op gradchecks on CuPy against the CPU.
"""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import assume, example, given, strategies as st

import tinycnn
import tinycnn.functional
import tinycnn.kernels.cpu
import tinycnn.kernels.cpu_elementwise
import tinycnn.kernels.gpu  # imports without CuPy: its kernels are built on first use
import tinycnn.kernels.reference
import tinycnn.models
from tinycnn import backend as array_backend

import cuda_harness
from conftest import _gpu_params
from support import TOLERANCES, assert_close

reference = tinycnn.kernels.reference

CUDA_ON_CPU = pytest.param("cuda_on_cpu", marks=pytest.mark.skipif(
    not cuda_harness.compiler_available(), reason=f"needs the C++ compiler {cuda_harness.COMPILER}"))
CUPY = _gpu_params()  # "cupy", skipped without CuPy and a CUDA device
BACKENDS = ["reference", "numba", CUDA_ON_CPU, CUPY]
GPU_BACKENDS = [CUDA_ON_CPU, CUPY]  # kernels/gpu.py's code, on the CPU and on a device
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["contiguous", "strided", "transposed", "sliced"])


def run(backend, primitive, *args, **kwargs):
    """Call `primitive` of `backend` on NumPy arguments; arrays come back as NumPy arrays."""
    if backend == "reference":
        return getattr(tinycnn.kernels.reference, primitive)(*args, **kwargs)
    if backend == "numba":
        return getattr(tinycnn.kernels.cpu, primitive)(*args, **kwargs)
    if backend == "cuda_on_cpu":
        with cuda_harness.gpu_module_on_cpu() as gpu:
            return getattr(gpu, primitive)(*args, **kwargs)
    on_device = [_to_gpu_keeping_layout(a) if isinstance(a, np.ndarray) else a for a in args]
    result = getattr(tinycnn.kernels.gpu, primitive)(*on_device, **kwargs)
    if isinstance(result, tuple):
        return tuple(None if r is None else array_backend.to_cpu(r) for r in result)
    return array_backend.to_cpu(result)


def _to_gpu_keeping_layout(a):
    """A CuPy copy of a whose memory is laid out like a's: a C-contiguous copy of a transposed or
    strided array would not test the kernels' handling of those layouts."""
    if a.flags.c_contiguous or a.ndim == 0:
        return array_backend.to_gpu(a)
    if a.T.flags.c_contiguous:
        return array_backend.to_gpu(a.T).T
    return array_backend.to_gpu(np.repeat(a, 2, axis=-1))[..., ::2]  # every other element


def _array(seed, shape, dtype, layout="contiguous"):
    """Uniform [-1, 1) values of `shape`; 'strided', 'transposed' and 'sliced' are views whose
    memory is not C-ordered (every other element of a wider array; the transpose of the reversed
    shape; a slice along axis 1 of an array two wider there, whose rows x[n] are each contiguous,
    as a concatenation's backward hands out)."""
    rng = np.random.default_rng(seed)
    if layout == "sliced" and len(shape) >= 2:
        return rng.uniform(-1, 1, size=(shape[0], shape[1] + 2) + shape[2:]).astype(dtype)[:, 1:1 + shape[1]]
    if layout == "strided" and len(shape):
        return rng.uniform(-1, 1, size=shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    if layout == "transposed":
        return rng.uniform(-1, 1, size=shape[::-1]).astype(dtype).T
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


def _assert_same(actual, expected, dtype, what):
    """Exactly the float64 reference's values (a gather of dtype values), in `dtype`."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(actual, expected.astype(dtype), err_msg=what)


def _assert_close(actual, expected, dtype, what):
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    assert_close(actual, expected, dtype, what)


def output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """PyTorch's documented output length (torch.nn.MaxPool2d): floor or ceil of
    (size + 2 padding - dilation (kernel - 1) - 1) / stride + 1, where with ceil_mode the last
    window must start inside the input or its left padding."""
    exact = (size + 2 * padding - dilation * (kernel - 1) - 1) / stride
    out = int(np.ceil(exact) if ceil_mode else np.floor(exact)) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@st.composite
def windows(draw, pooling=False, dilation=True, kernels=(1, 4)):
    """(N, C, H, W) and a window (KH, KW, SH, SW, PH, PW, DH, DW) with at least one output.
    Pooling windows keep PyTorch's rule that padding is at most half the kernel."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(*kernels)), draw(st.integers(*kernels))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # Dilation up to 3, as far as the dilated window (at most 9 wide) fits the largest input.
    DH = draw(st.integers(1, min(3, 8 // max(1, KH - 1)))) if dilation else 1
    DW = draw(st.integers(1, min(3, 8 // max(1, KW - 1)))) if dilation else 1
    PH = draw(st.integers(0, KH // 2 if pooling else 3))
    PW = draw(st.integers(0, KW // 2 if pooling else 3))
    H = draw(st.integers(max(1, DH * (KH - 1) + 1 - 2 * PH), 9))
    W = draw(st.integers(max(1, DW * (KW - 1) + 1 - 2 * PW), 9))
    return (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(), DTYPES, LAYOUTS, st.integers(0, 2**16))
@example(((1, 1, 1, 1), (1, 1, 1, 1, 0, 0, 1, 1)), np.float32, "contiguous", 0)  # one pixel
@example(((1, 2, 5, 7), (3, 2, 2, 3, 3, 1, 2, 1)), np.float64, "contiguous", 1)  # padding wider than the window
def test_im2col(backend, shape_window, dtype, layout, seed):
    (N, C, H, W), window = shape_window
    KH, KW, SH, SW, PH, PW, DH, DW = window
    x = _array(seed, (N, C, H, W), dtype, layout)
    col = run(backend, "im2col", x, *window)
    OH, OW = output_size(H, KH, SH, PH, DH), output_size(W, KW, SW, PW, DW)
    assert col.shape == (N, C, KH, KW, OH, OW)
    _assert_same(col, reference.im2col(_f64(x), *window), dtype, f"im2col {(N, C, H, W)} {window} {layout}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_im2col_tap_that_only_sees_the_left_padding(backend):
    # Kernel width 3, dilation 2, padding 2 on a 1-pixel row: tap 0 lands at w = -2 for the only
    # output. Numba once zero-filled past the row there, over the next sample's column (seen as
    # sample 0 convolving to 0, depending on thread timing: hence many inputs).
    window = (1, 3, 1, 1, 0, 2, 1, 2)
    for seed in range(20):
        x = _array(seed, (2, 1, 1, 1), np.float32)
        _assert_same(run(backend, "im2col", x, *window), reference.im2col(_f64(x), *window), np.float32,
                     f"im2col seed {seed}")


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(), DTYPES, LAYOUTS, st.integers(0, 2**16))
@example(((1, 1, 7, 6), (3, 3, 1, 2, 1, 2, 2, 1)), np.float32, "contiguous", 0)  # overlapping dilated windows
def test_col2im(backend, shape_window, dtype, layout, seed):
    (N, C, H, W), window = shape_window
    KH, KW, SH, SW, PH, PW, DH, DW = window
    OH, OW = output_size(H, KH, SH, PH, DH), output_size(W, KW, SW, PW, DW)
    col = _array(seed, (N, C, KH, KW, OH, OW), dtype, layout)
    x = run(backend, "col2im", col, H, W, SH, SW, PH, PW, DH, DW)
    _assert_close(x, reference.col2im(_f64(col), H, W, SH, SW, PH, PW, DH, DW), dtype,
                  f"col2im {(N, C, H, W)} {window} {layout}")


@st.composite
def convolutions(draw):
    """A conv2d case: (x shape, W shape, (SH, SW, PH, PW, DH, DW), groups). Half the draws are on
    the pixel-major path of the Numba kernels (groups 1, 4 to 8 input channels, narrow outputs)."""
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW) = draw(windows())
    if draw(st.booleans()):  # pixel-major
        C, groups = draw(st.integers(4, 8)), 1
    else:
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if C % g == 0]))
    OC = groups * draw(st.integers(1, 3))
    return (N, C, H, W), (OC, C // groups, KH, KW), (SH, SW, PH, PW, DH, DW), groups


@pytest.mark.parametrize("backend", BACKENDS)
@given(convolutions(), DTYPES, LAYOUTS, st.booleans(), st.sampled_from([(True, True, True), (False, True, False),
                                                                        (True, False, False)]),
       st.integers(0, 2**16))
def test_conv2d(backend, convolution, dtype, layout, bias, needs_grad, seed):
    x_shape, w_shape, window, groups = convolution
    x = _array(seed, x_shape, dtype, layout)
    W = _array(seed + 1, w_shape, dtype, layout)
    b = _array(seed + 2, w_shape[:1], dtype) if bias else None
    what = f"conv2d {x_shape} {w_shape} {window} groups={groups} {layout}"
    y = run(backend, "conv2d_forward", x, W, b, *window, groups)
    SH, SW, PH, PW, DH, DW = window
    OH, OW = output_size(x_shape[2], w_shape[2], SH, PH, DH), output_size(x_shape[3], w_shape[3], SW, PW, DW)
    assert y.shape == (x_shape[0], w_shape[0], OH, OW), what
    _assert_close(y, reference.conv2d_forward(_f64(x), _f64(W), _f64(b), *window, groups), dtype, what)
    gy = _array(seed + 3, y.shape, dtype, layout)
    grads = run(backend, "conv2d_backward", gy, x, W, *window, groups, needs_grad=needs_grad)
    expected = reference.conv2d_backward(_f64(gy), _f64(x), _f64(W), *window, groups)
    for name, wanted, actual, wanted_array in zip(("gx", "gW", "gb"), needs_grad, grads, expected):
        if wanted:
            _assert_close(actual, wanted_array, dtype, f"{what} {name}")
        else:
            assert actual is None, f"{what} {name}: not asked for, got an array"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, window", [
    ((4, 16, 1, 1), (8, 16, 3, 3), (1, 1, 1, 1, 1, 1)),  # a ResNet's last stage on 32x32: only the centre tap
    ((4, 16, 2, 2), (8, 16, 3, 3), (2, 2, 1, 1, 1, 1)),  # stride 2: the first row and column are dead
    ((2, 3, 3, 2), (5, 3, 3, 3), (1, 1, 2, 1, 3, 1)),  # dilated rows: the top tap lands under the input
    ((2, 6, 3, 2), (5, 6, 3, 3), (1, 1, 2, 1, 3, 1)),  # the same, pixel-major
    ((2, 3, 1, 1), (2, 3, 3, 3), (1, 1, 3, 3, 3, 3)),  # every tap lands in the padding
    ((2, 4, 1, 1), (2, 4, 3, 3), (1, 1, 3, 3, 3, 3)),  # the same, pixel-major
    ((1, 4, 2, 20), (3, 4, 3, 3), (1, 1, 1, 1, 1, 1)),  # 4 channels but wide rows: channel-major
])
def test_conv2d_taps_that_only_see_padding(backend, x_shape, w_shape, window):
    x, W = _array(0, x_shape, np.float64), _array(1, w_shape, np.float64)
    y = run(backend, "conv2d_forward", x, W, W[:, 0, 0, 0], *window, 1)
    _assert_close(y, reference.conv2d_forward(x, W, W[:, 0, 0, 0], *window, 1), np.float64, "y")
    gy = _array(2, y.shape, np.float64)
    grads = run(backend, "conv2d_backward", gy, x, W, *window, 1)
    for actual, wanted, name in zip(grads, reference.conv2d_backward(gy, x, W, *window, 1), ("gx", "gW", "gb")):
        _assert_close(actual, wanted, np.float64, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, window, groups", [
    ((64, 20, 12, 12), (50, 20, 5, 5), (1, 1, 0, 0, 1, 1), 1),  # LeNet's second layer: pixel-major
    ((16, 1, 28, 28), (20, 1, 5, 5), (1, 1, 0, 0, 1, 1), 1),  # LeNet's first: the small weight product
    ((8, 64, 20, 20), (64, 64, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # wide rows: channel-major, one sample a chunk
    ((2, 64, 40, 40), (64, 64, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # one sample's columns in blocks of output rows
    ((2, 32, 80, 80), (16, 32, 3, 3), (2, 2, 1, 1, 1, 1), 1),  # the same at stride 2
    ((8, 256, 14, 14), (128, 256, 1, 1), (1, 1, 0, 0, 1, 1), 1),  # 1x1: a product per sample, several a chunk
    ((2, 512, 4, 4), (512, 512, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # narrow rows, but a big weight: channel-major
    ((2, 128, 28, 28), (32, 128, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # fewer output channels: dx as a convolution of gy
    ((1, 64, 92, 92), (128, 64, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # huge columns: blocks of rows despite a bigger weight
    ((16, 24, 20, 20), (48, 8, 3, 3), (1, 1, 2, 2, 2, 2), 3),  # grouped and dilated
    ((2, 128, 14, 14), (128, 4, 3, 3), (1, 1, 1, 1, 1, 1), 32),  # ResNeXt's groups: small products per group
    ((2, 128, 14, 14), (128, 64, 3, 3), (1, 1, 1, 1, 1, 1), 2),  # two groups, each a BLAS product
    ((32, 512, 1, 1), (256, 512, 3, 3), (1, 1, 1, 1, 1, 1), 1),  # dead taps cut, products split in two
])
def test_conv2d_at_real_layer_sizes(backend, x_shape, w_shape, window, groups):
    # Big enough for several chunks on every Numba thread, in float32 against the float64 reference.
    x, W, b = _array(0, x_shape, np.float32), _array(1, w_shape, np.float32), _array(2, w_shape[:1], np.float32)
    y = run(backend, "conv2d_forward", x, W, b, *window, groups)
    gy = _array(3, y.shape, np.float32)
    grads = run(backend, "conv2d_backward", gy, x, W, *window, groups)
    expected = (reference.conv2d_forward(_f64(x), _f64(W), _f64(b), *window, groups),) \
        + reference.conv2d_backward(_f64(gy), _f64(x), _f64(W), *window, groups)
    OC, C_group, KH, KW = w_shape
    terms = {"y": C_group * KH * KW, "gx": OC // groups * KH * KW, "gW": y.shape[0] * y.shape[2] * y.shape[3]}
    terms["gb"] = terms["gW"]
    for actual, wanted, name in zip((y,) + grads, expected, ("y", "gx", "gW", "gb")):
        assert actual.dtype == np.float32, name
        # Each value sums `terms` float32 products of numbers in [-1, 1]: allow 1e-6 per term.
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6 * terms[name], err_msg=name)


def test_numba_conv2d_gives_the_same_bits_on_any_thread_count():
    # Several chunks on several threads; gW and gb add the chunks' shares in a fixed order, so the
    # thread count must not change a bit of the result.
    from tinycnn.kernels import parallel
    cpu = tinycnn.kernels.cpu
    x, W, gy = _array(0, (32, 16, 12, 12), np.float32), _array(1, (24, 16, 3, 3), np.float32), \
        _array(2, (32, 24, 12, 12), np.float32)
    results = []
    previous = parallel.get_num_threads()
    try:
        for threads in (1, 2, 3):
            parallel.set_num_threads(threads)
            results.append((cpu.conv2d_forward(x, W, W[:, 0, 0, 0], 1, 1, 1, 1, 1, 1, 1),)
                           + cpu.conv2d_backward(gy, x, W, 1, 1, 1, 1, 1, 1, 1))
    finally:
        parallel.set_num_threads(previous)
    for other in results[1:]:
        for actual, expected in zip(other, results[0]):
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M, K, N", [(1, 3, 4), (7, 5, 3), (64, 800, 500), (500, 64, 800), (2, 2000, 1000),
                                     (500, 1, 800)])  # K = 1: an outer product
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul(backend, M, K, N, dtype):
    # Big products are split across the Numba threads; b transposed, as Linear passes its weight.
    a, b = _array(0, (M, K), dtype), _array(1, (N, K), dtype).T
    product = run(backend, "matmul", a, b)
    assert product.dtype == dtype and product.shape == (M, N)
    expected = _f64(a) @ _f64(b)
    # K float products of numbers in [-1, 1] per value: float32 round-off grows with K.
    atol = 1e-6 * K if dtype == np.float32 else 1e-12 * K
    np.testing.assert_allclose(product, expected, rtol=TOLERANCES[np.dtype(dtype)]["rtol"], atol=atol)


def _with_ties(x, dtype):
    """Few distinct values (-2 ... 2), so windows hold equal maxima."""
    return np.round(x * 2).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(pooling=True), st.booleans(), DTYPES, LAYOUTS, st.booleans(), st.integers(0, 2**16))
# ceil_mode: the rows keep a last partial window; the columns drop one that would start in the padding
@example(((1, 1, 6, 5), (3, 2, 3, 2, 1, 1, 1, 1)), True, np.float32, "contiguous", False, 0)
@example(((1, 1, 1, 1), (1, 2, 1, 1, 0, 1, 1, 2)), False, np.float32, "contiguous", False, 0)  # padding only
@example(((2, 3, 6, 6), (2, 2, 2, 2, 0, 0, 1, 1)), False, np.float32, "strided", True, 3)  # 2x2 with ties
@example(((2, 3, 7, 7), (3, 3, 2, 2, 1, 1, 1, 1)), True, np.float64, "transposed", True, 4)  # 3x3 with ties
def test_max_pool2d(backend, shape_window, ceil_mode, dtype, layout, ties, seed):
    (N, C, H, W), window = shape_window
    KH, KW, SH, SW, PH, PW, DH, DW = window
    x = _array(seed, (N, C, H, W), dtype, layout)
    if ties:
        x = _with_ties(x, dtype)
    y, argmax = run(backend, "max_pool2d_forward", x, *window, ceil_mode)
    y_ref, argmax_ref = reference.max_pool2d_forward(_f64(x), *window, ceil_mode)
    what = f"max_pool2d {(N, C, H, W)} {window} ceil_mode={ceil_mode} {layout}"
    OH, OW = output_size(H, KH, SH, PH, DH, ceil_mode), output_size(W, KW, SW, PW, DW, ceil_mode)
    assert y.shape == (N, C, OH, OW), what
    _assert_same(y, y_ref, dtype, what)
    np.testing.assert_array_equal(argmax, argmax_ref, err_msg=what + " argmax (the first maximum wins)")
    assert argmax.dtype == np.int64, what
    gy = _array(seed + 1, y.shape, dtype, layout)
    if argmax_ref.min() < 0 or argmax_ref.max() >= H * W:
        # A dilated window of padding only has no winner in the input: its backward must refuse,
        # not write outside the gradient (F.max_pool2d rejects such windows up front).
        with pytest.raises(ValueError, match="max_pool2d_backward: expected argmax indices"):
            run(backend, "max_pool2d_backward", gy, argmax, H, W)
        return
    # One pixel may win several overlapping windows; its gradients add up.
    gx = run(backend, "max_pool2d_backward", gy, argmax, H, W)
    _assert_close(gx, reference.max_pool2d_backward(_f64(gy), argmax_ref, H, W), dtype, what + " backward")


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2d_propagates_nan_as_the_reference(backend):
    x = _array(0, (1, 2, 5, 5), np.float64)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 3, 4] = np.nan
    y, argmax = run(backend, "max_pool2d_forward", x, 3, 3, 2, 2, 1, 1, 1, 1, True)
    y_ref, argmax_ref = reference.max_pool2d_forward(x, 3, 3, 2, 2, 1, 1, 1, 1, True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(pooling=True, dilation=False), st.booleans(), st.booleans(), DTYPES, LAYOUTS, st.integers(0, 2**16))
@example(((1, 1, 5, 4), (3, 2, 2, 3, 1, 1, 1, 1)), True, False, np.float32, "contiguous", 0)  # partial windows
@example(((2, 2, 6, 6), (2, 2, 2, 2, 0, 0, 1, 1)), False, True, np.float32, "strided", 1)  # the unrolled 2x2
@example(((2, 2, 7, 7), (3, 3, 2, 2, 1, 1, 1, 1)), True, False, np.float64, "transposed", 2)  # the unrolled 3x3
def test_avg_pool2d(backend, shape_window, ceil_mode, count_include_pad, dtype, layout, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, _, _) = shape_window
    options = (KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad)
    x = _array(seed, (N, C, H, W), dtype, layout)
    what = f"avg_pool2d {(N, C, H, W)} {options} {layout}"
    y = run(backend, "avg_pool2d_forward", x, *options)
    assert y.shape == (N, C, output_size(H, KH, SH, PH, 1, ceil_mode), output_size(W, KW, SW, PW, 1, ceil_mode)), what
    _assert_close(y, reference.avg_pool2d_forward(_f64(x), *options), dtype, what)
    gy = _array(seed + 1, y.shape, dtype, layout)
    gx = run(backend, "avg_pool2d_backward", gy, H, W, *options)
    _assert_close(gx, reference.avg_pool2d_backward(_f64(gy), H, W, *options), dtype, what + " backward")


@st.composite
def normalization_shapes(draw):
    """(N, C, ...) with 0, 1 or 2 trailing axes: batch norm and LRN see them as one."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    trailing = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    return (N, C, *trailing)


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.booleans(), DTYPES, LAYOUTS, st.integers(0, 2**16))
# A channel whose mean is large beside its spread (x = 1.6928, 1.6935): folding the mean into one
# multiply-add, x * gain + (beta - gain * mean), cancels two large float32 terms and lands 4e-5 off.
@example((1, 2), False, np.float32, "contiguous", 86)
def test_batch_norm(backend, shape, affine, dtype, layout, seed):
    if shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (2,) + shape[1:]  # one value per channel has no variance to normalise by
    x = _array(seed, shape, dtype, layout) * 3 + 1
    C = shape[1]
    gamma = _array(seed + 1, (C,), dtype) if affine else None
    beta = _array(seed + 2, (C,), dtype) if affine else None
    what = f"batch_norm {shape} affine={affine} {layout}"
    outputs = run(backend, "batch_norm_forward_training", x, gamma, beta, 1e-5)
    expected = reference.batch_norm_forward_training(_f64(x), _f64(gamma), _f64(beta), 1e-5)
    assert outputs[0].shape == shape and all(a.shape == (C,) for a in outputs[1:]), what
    for name, actual, oracle in zip(("y", "mean", "var", "inv_std"), outputs, expected):
        _assert_close(actual, oracle, dtype, f"{what} {name}")
    _, mean, _, inv_std = expected
    mean, inv_std = mean.astype(dtype), inv_std.astype(dtype)
    gy = _array(seed + 3, shape, dtype, layout)
    grads = run(backend, "batch_norm_backward", gy, x, gamma, mean, inv_std)
    expected = reference.batch_norm_backward(_f64(gy), _f64(x), _f64(gamma), _f64(mean), _f64(inv_std))
    for name, actual, oracle in zip(("gx", "ggamma", "gbeta"), grads, expected):
        _assert_close(actual, oracle, dtype, f"{what} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.booleans(), DTYPES, LAYOUTS, st.integers(0, 2**16))
@example((1, 2), False, np.float32, "contiguous", 86)  # a mean large beside the spread, as above
def test_batch_norm_inference(backend, shape, affine, dtype, layout, seed):
    # Evaluation mode: the statistics are given (the running ones), one value per channel is fine;
    # forward and backward.
    x = _array(seed, shape, dtype, layout) * 3 + 1
    C = shape[1]
    gamma = _array(seed + 1, (C,), dtype) if affine else None
    beta = _array(seed + 2, (C,), dtype) if affine else None
    mean = _array(seed + 3, (C,), dtype) + 1
    inv_std = (_array(seed + 4, (C,), dtype) + 2).astype(dtype)  # in [1, 3)
    what = f"batch_norm_forward_inference {shape} affine={affine} {layout}"
    y = run(backend, "batch_norm_forward_inference", x, gamma, beta, mean, inv_std)
    expected = reference.batch_norm_forward_inference(_f64(x), _f64(gamma), _f64(beta), _f64(mean), _f64(inv_std))
    assert y.shape == shape, what
    _assert_close(y, expected, dtype, what)
    gy = _array(seed + 5, shape, dtype, layout)
    grads = run(backend, "batch_norm_backward_inference", gy, x, gamma, mean, inv_std)
    expected = reference.batch_norm_backward_inference(_f64(gy), _f64(x), _f64(gamma), _f64(mean), _f64(inv_std))
    assert grads[0].shape == shape and grads[1].shape == grads[2].shape == (C,), what
    for name, actual, oracle in zip(("gx", "ggamma", "gbeta"), grads, expected):
        _assert_close(actual, oracle, dtype, f"{what} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple), DTYPES, LAYOUTS, st.integers(0, 2**16))
@example((2, 3), np.float32, "contiguous", 0)
def test_relu(backend, shape, dtype, layout, seed):
    # A gather: exactly the reference's values. Exact zeros, -0.0 and NaN are planted where there
    # is room: ReLU's kink, and NaN must pass through forward as np.maximum lets it.
    x = _array(seed, shape, dtype, layout)
    flat = x.reshape(-1) if x.flags.c_contiguous else None
    if flat is not None and flat.size >= 3:
        flat[:3] = [0.0, -0.0, np.nan]
    what = f"relu {shape} {layout}"
    y = run(backend, "relu_forward", x)
    assert y.dtype == dtype and y.shape == shape, what
    np.testing.assert_array_equal(y, reference.relu_forward(_f64(x)).astype(dtype), err_msg=what)
    gy = _array(seed + 1, shape, dtype, layout)
    y = reference.relu_forward(x)
    gx = run(backend, "relu_backward", gy, y)
    assert gx.dtype == dtype and gx.shape == shape, what
    _assert_same(gx, reference.relu_backward(_f64(gy), _f64(y)), dtype, f"{what} gx")


def run_into(backend, primitive, *args, out):
    """run() with out=: the primitive must write its result into `out` (a NumPy array, possibly one
    of args: in place) and return that very array. On CuPy it runs on device copies laid out like
    the NumPy arrays (out the same device array as the argument it was), copied back into out."""
    if backend != "cupy":
        result = run(backend, primitive, *args, out=out)
        assert result is out, f"{primitive}: returned a new array, not out"
        return out
    on_device = [_to_gpu_keeping_layout(a) if isinstance(a, np.ndarray) else a for a in args]
    device_out = next((d for a, d in zip(args, on_device) if a is out), None)
    if device_out is None:
        device_out = _to_gpu_keeping_layout(out)
    result = getattr(tinycnn.kernels.gpu, primitive)(*on_device, out=device_out)
    assert result is device_out, f"{primitive}: returned a new array, not out"
    out[...] = array_backend.to_cpu(device_out)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple), DTYPES, LAYOUTS, LAYOUTS,
       st.integers(0, 2**16))
@example((2, 3), np.float32, "contiguous", "contiguous", 0)
@example((2, 3), np.float32, "strided", "strided", 0)
def test_relu_forward_into_out(backend, shape, dtype, x_layout, out_layout, seed):
    # out=x is ReLU in place (nn.ReLU(inplace=True) under no_grad); a strided or transposed x must
    # be written through its own strides, not into a contiguous copy that is then lost. A separate
    # out of another layout gets the result and leaves x as it was.
    x = _array(seed, shape, dtype, x_layout)
    expected = reference.relu_forward(_f64(x)).astype(dtype)
    what = f"relu_forward out= {shape} {x_layout} -> {out_layout}"
    before = x.copy()
    out = _array(seed + 1, shape, dtype, out_layout)
    run_into(backend, "relu_forward", x, out=out)
    np.testing.assert_array_equal(out, expected, err_msg=what)
    np.testing.assert_array_equal(x, before, err_msg=f"{what}: x changed")
    run_into(backend, "relu_forward", x, out=x)
    np.testing.assert_array_equal(x, expected, err_msg=f"{what}, in place")


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple), st.data(), DTYPES, LAYOUTS, LAYOUTS,
       st.integers(0, 2**16))
@example((2, 3, 4), None, np.float32, "contiguous", "contiguous", 0)
@example((3, 2, 5, 7), None, np.float32, "contiguous", "sliced", 0)
def test_add_in_place(backend, shape, data, dtype, y_layout, x_layout, seed):
    # y += x: a residual add (x of y's shape) or an x broadcast to y's shape (fewer axes, or 1 in
    # some), of any layout. One rounding of an exact sum: exactly the float64 reference's, rounded.
    x_shape = shape
    if data is not None:
        dropped = data.draw(st.integers(0, len(shape)), label="leading axes x lacks")
        x_shape = tuple(1 if data.draw(st.booleans(), label=f"axis {i} of x is 1") else side
                        for i, side in enumerate(shape[dropped:]))
    y, x = _array(seed, shape, dtype, y_layout), _array(seed + 1, x_shape, dtype, x_layout)
    expected = reference.add_in_place(_f64(y), _f64(x)).astype(dtype)
    x_before = x.copy()
    what = f"add_in_place {shape} {y_layout} += {x_shape} {x_layout}"
    result = run(backend, "add_in_place", y, x)
    if backend != "cupy":  # run() hands a CuPy result back as a new NumPy array
        assert result is y, f"{what}: returned a new array, not y"
    _assert_same(result, expected, dtype, what)
    np.testing.assert_array_equal(x, x_before, err_msg=f"{what}: x changed")


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_in_place_with_overlapping_operands(backend):
    # x is y (add(a, a)), and x a shifted view of y's memory: every x is read before y is written,
    # as NumPy's `y += x` does (read after write would carry the sums along).
    base = _array(0, (40,), np.float64)
    y = base.copy()
    np.testing.assert_array_equal(run(backend, "add_in_place", y, y), 2 * base)
    memory = base.copy()
    np.testing.assert_array_equal(run(backend, "add_in_place", memory[1:], memory[:-1]), base[1:] + base[:-1])


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.integers(1, 4), st.integers(0, 3), st.integers(1, 4), st.data(), LAYOUTS, st.booleans(),
       st.integers(0, 2**16))
def test_concatenate(backend, ndim, axis_draw, count, data, layout, mixed_dtypes, seed):
    # A copy: exactly torch.cat's values (dtypes promoted as NumPy and torch do), whatever the
    # inputs' layouts; sizes along the axis include 0.
    axis = axis_draw % ndim
    shape = data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    xs = []
    for k in range(count):
        own = list(shape)
        own[axis] = data.draw(st.integers(0, 5))
        dtype = np.float32 if (mixed_dtypes and k % 2) else np.float64
        xs.append(_array(seed + k, tuple(own), dtype, layout))
    y = run(backend, "concatenate", xs, axis)
    expected = torch.cat([torch.from_numpy(np.ascontiguousarray(x)) for x in xs], dim=axis).numpy()
    assert y.dtype == expected.dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis, layout", [(1, "contiguous"), (2, "strided"), (0, "transposed")])
def test_concatenate_split_over_parallel_chunks(backend, axis, layout):
    # DenseNet's join at 28x28 (axis 1), with a float32 input among float64 ones: big enough for
    # the Numba kernel's threaded path (CONCATENATE_THREADED), many chunks each spanning inputs.
    sizes = [2] + [1] * 9  # along the axis, relative: DenseNet's 64 + 9 x 32 channels at axis 1
    shapes = {0: [(n, 64, 56, 56) for n in sizes], 1: [(8, 32 * n, 28, 28) for n in sizes],
              2: [(8, 128, 4 * n, 56) for n in sizes]}[axis]
    xs = [_array(k, shape, np.float32 if k == 3 else np.float64, layout) for k, shape in enumerate(shapes)]
    y = run(backend, "concatenate", xs, axis)
    assert y.size >= tinycnn.kernels.cpu_elementwise.CONCATENATE_THREADED
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_and_relu_split_over_parallel_chunks(backend):
    # Big enough that the Numba kernels split the work into several chunks (kernels/parallel.py):
    # batch norm's channels [start, stop) with start > 0, ReLU's elements likewise. The drawn cases
    # above are small enough to run as one chunk from 0, where an index missing its `start` passes.
    shape, dtype = (4, 96, 32, 32), np.float32
    x, gy = _array(0, shape, dtype) * 3 + 1, _array(1, shape, dtype)
    gamma, beta = _array(2, (96,), dtype), _array(3, (96,), dtype)
    outputs = run(backend, "batch_norm_forward_training", x, gamma, beta, 1e-5)
    expected = reference.batch_norm_forward_training(_f64(x), _f64(gamma), _f64(beta), 1e-5)
    for name, actual, oracle in zip(("y", "mean", "var", "inv_std"), outputs, expected):
        _assert_close(actual, oracle, dtype, f"batch_norm {name}")
    mean, inv_std = expected[1].astype(dtype), expected[3].astype(dtype)
    for primitive in ("batch_norm_backward", "batch_norm_backward_inference"):
        grads = run(backend, primitive, gy, x, gamma, mean, inv_std)
        oracle = getattr(reference, primitive)(_f64(gy), _f64(x), _f64(gamma), _f64(mean), _f64(inv_std))
        for name, actual, value in zip(("gx", "ggamma", "gbeta"), grads, oracle):
            _assert_close(actual, value, dtype, f"{primitive} {name}")
    y = run(backend, "batch_norm_forward_inference", x, gamma, beta, mean, inv_std)
    _assert_close(y, reference.batch_norm_forward_inference(_f64(x), _f64(gamma), _f64(beta), _f64(mean),
                                                             _f64(inv_std)), dtype, "batch_norm_forward_inference")
    y = run(backend, "relu_forward", gy)
    np.testing.assert_array_equal(y, reference.relu_forward(gy), err_msg="relu_forward")
    in_place = gy.copy()
    np.testing.assert_array_equal(run_into(backend, "relu_forward", in_place, out=in_place), y,
                                  err_msg="relu_forward in place")
    _assert_same(run(backend, "add_in_place", gy.copy(), x), reference.add_in_place(_f64(gy), _f64(x)), dtype,
                 "add_in_place")
    _assert_same(run(backend, "relu_backward", x - 1, y), reference.relu_backward(_f64(x - 1), _f64(y)), dtype,
                 "relu_backward")


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.integers(1, 6), DTYPES, LAYOUTS, st.integers(0, 2**16))
def test_lrn(backend, shape, size, dtype, layout, seed):
    # Even sizes make the window lopsided ([c - size//2, c + (size-1)//2]) and the backward
    # window its mirror image, which a symmetric implementation would get wrong.
    alpha, beta, k = 0.3, 0.75, 2.0
    x = _array(seed, shape, dtype, layout) * 2
    what = f"lrn {shape} size={size} {layout}"
    y, scale = run(backend, "lrn_forward", x, size, alpha, beta, k)
    y_ref, scale_ref = reference.lrn_forward(_f64(x), size, alpha, beta, k)
    _assert_close(y, y_ref, dtype, what + " y")
    _assert_close(scale, scale_ref, dtype, what + " scale")
    gy = _array(seed + 1, shape, dtype, layout)
    y_in, scale_in = y_ref.astype(dtype), scale_ref.astype(dtype)
    gx = run(backend, "lrn_backward", x, y_in, scale_in, gy, size, alpha, beta)
    _assert_close(gx, reference.lrn_backward(_f64(x), _f64(y_in), _f64(scale_in), _f64(gy), size, alpha, beta),
                  dtype, what + " backward")


# Gradchecks of every backend's backward against its own forward, by central differences in float64
# along a random direction v: <gx, v> = (f(x + eps v) - f(x - eps v)) . gy / (2 eps).

def _directional_check(forward, backward_gx, x, seed, eps=1e-6):
    v = _array(seed + 7, x.shape, np.float64)
    y = forward(x)
    gy = _array(seed + 8, y.shape, np.float64)
    numeric = (np.sum(forward(x + eps * v) * gy) - np.sum(forward(x - eps * v) * gy)) / (2 * eps)
    analytic = np.sum(backward_gx(gy) * v)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(pooling=True, kernels=(2, 3)), st.booleans(), st.integers(0, 2**16))
@example(((2, 2, 6, 6), (2, 2, 2, 2, 0, 0, 1, 1)), False, 0)
@example(((2, 2, 7, 7), (3, 3, 2, 2, 1, 1, 1, 1)), True, 1)
def test_max_pool2d_gradcheck(backend, shape_window, ceil_mode, seed):
    (N, C, H, W), window = shape_window
    # Distinct values 1e-3 apart at least, so a 1e-6 step never changes a window's winner.
    x = np.random.default_rng(seed).permutation(N * C * H * W).reshape(N, C, H, W) * 1e-3
    _, argmax = run(backend, "max_pool2d_forward", x, *window, ceil_mode)
    assume(argmax.min() >= 0 and argmax.max() < H * W)  # no window of padding only
    _directional_check(lambda a: run(backend, "max_pool2d_forward", a, *window, ceil_mode)[0],
                       lambda gy: run(backend, "max_pool2d_backward", gy, argmax, H, W), x, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(pooling=True, dilation=False, kernels=(2, 3)), st.booleans(), st.booleans(), st.integers(0, 2**16))
@example(((2, 2, 6, 6), (2, 2, 2, 2, 0, 0, 1, 1)), False, True, 0)
@example(((2, 2, 7, 7), (3, 3, 2, 2, 1, 1, 1, 1)), True, False, 1)
def test_avg_pool2d_gradcheck(backend, shape_window, ceil_mode, count_include_pad, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, _, _) = shape_window
    options = (KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad)
    _directional_check(lambda a: run(backend, "avg_pool2d_forward", a, *options),
                       lambda gy: run(backend, "avg_pool2d_backward", gy, H, W, *options),
                       _array(seed, (N, C, H, W), np.float64), seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(convolutions(), st.integers(0, 2**16))
def test_conv2d_gradcheck(backend, convolution, seed):
    x_shape, w_shape, window, groups = convolution
    x, W, b = _array(seed, x_shape, np.float64), _array(seed + 1, w_shape, np.float64), \
        _array(seed + 2, w_shape[:1], np.float64)
    y = run(backend, "conv2d_forward", x, W, b, *window, groups)
    _directional_check(lambda a: run(backend, "conv2d_forward", a, W, b, *window, groups),
                       lambda gy: run(backend, "conv2d_backward", gy, x, W, *window, groups)[0], x, seed)
    _directional_check(lambda a: run(backend, "conv2d_forward", x, a, b, *window, groups),
                       lambda gy: run(backend, "conv2d_backward", gy, x, W, *window, groups)[1], W, seed)
    _directional_check(lambda a: run(backend, "conv2d_forward", x, W, a, *window, groups),
                       lambda gy: run(backend, "conv2d_backward", gy, x, W, *window, groups)[2], b, seed)
    assert y.dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.integers(0, 2**16))
def test_batch_norm_gradcheck(backend, shape, seed):
    if shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (2,) + shape[1:]
    C = shape[1]
    x, gamma, beta = _array(seed, shape, np.float64), _array(seed + 1, (C,), np.float64), \
        _array(seed + 2, (C,), np.float64)

    def backward(gy, which):
        _, mean, _, inv_std = run(backend, "batch_norm_forward_training", x, gamma, beta, 1e-5)
        return run(backend, "batch_norm_backward", gy, x, gamma, mean, inv_std)[which]

    _directional_check(lambda a: run(backend, "batch_norm_forward_training", a, gamma, beta, 1e-5)[0],
                       lambda gy: backward(gy, 0), x, seed)
    _directional_check(lambda a: run(backend, "batch_norm_forward_training", x, a, beta, 1e-5)[0],
                       lambda gy: backward(gy, 1), gamma, seed)
    _directional_check(lambda a: run(backend, "batch_norm_forward_training", x, gamma, a, 1e-5)[0],
                       lambda gy: backward(gy, 2), beta, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.integers(0, 2**16))
def test_batch_norm_inference_gradcheck(backend, shape, seed):
    C = shape[1]
    x, gamma, beta = _array(seed, shape, np.float64), _array(seed + 1, (C,), np.float64), \
        _array(seed + 2, (C,), np.float64)
    mean, inv_std = _array(seed + 3, (C,), np.float64), _array(seed + 4, (C,), np.float64) + 2

    def backward(gy, which):
        return run(backend, "batch_norm_backward_inference", gy, x, gamma, mean, inv_std)[which]

    _directional_check(lambda a: run(backend, "batch_norm_forward_inference", a, gamma, beta, mean, inv_std),
                       lambda gy: backward(gy, 0), x, seed)
    _directional_check(lambda a: run(backend, "batch_norm_forward_inference", x, a, beta, mean, inv_std),
                       lambda gy: backward(gy, 1), gamma, seed)
    _directional_check(lambda a: run(backend, "batch_norm_forward_inference", x, gamma, a, mean, inv_std),
                       lambda gy: backward(gy, 2), beta, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.integers(0, 2**16))
def test_relu_gradcheck(backend, shape, seed):
    x = _array(seed, shape, np.float64)
    x[np.abs(x) < 1e-3] = 0.5  # no value within a step of the kink, where no derivative exists
    y = run(backend, "relu_forward", x)
    _directional_check(lambda a: run(backend, "relu_forward", a),
                       lambda gy: run(backend, "relu_backward", gy, y), x, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(normalization_shapes(), st.integers(1, 6), st.integers(0, 2**16))
def test_lrn_gradcheck(backend, shape, size, seed):
    alpha, beta, k = 0.3, 0.75, 2.0
    x = _array(seed, shape, np.float64) * 2
    y, scale = run(backend, "lrn_forward", x, size, alpha, beta, k)
    _directional_check(lambda a: run(backend, "lrn_forward", a, size, alpha, beta, k)[0],
                       lambda gy: run(backend, "lrn_backward", x, y, scale, gy, size, alpha, beta), x, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@given(windows(), st.integers(0, 2**16))
def test_col2im_is_the_adjoint_of_im2col(backend, shape_window, seed):
    # <im2col(x), c> = <x, col2im(c)> for every x and c: col2im is exactly im2col's transpose.
    (N, C, H, W), window = shape_window
    KH, KW, SH, SW, PH, PW, DH, DW = window
    x = _array(seed, (N, C, H, W), np.float64)
    col = run(backend, "im2col", x, *window)
    c = _array(seed + 1, col.shape, np.float64)
    np.testing.assert_allclose(np.sum(col * c), np.sum(x * run(backend, "col2im", c, H, W, SH, SW, PH, PW, DH, DW)),
                               rtol=1e-12, atol=1e-12)


def _empty_batch_conv2d(backend):
    x, W = np.zeros((0, 3, 5, 5), np.float32), _array(0, (4, 3, 3, 3), np.float32)
    y = run(backend, "conv2d_forward", x, W, None, 1, 1, 1, 1, 1, 1, 1)
    assert y.shape == (0, 4, 5, 5)
    gx, gW, gb = run(backend, "conv2d_backward", y, x, W, 1, 1, 1, 1, 1, 1, 1)
    assert gx.shape == x.shape and gW.shape == W.shape and gb.shape == (4,) and not gW.any() and not gb.any()


def _empty_batch_columns(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    assert run(backend, "im2col", x, 3, 3, 1, 1, 1, 1, 1, 1).shape == (0, 3, 3, 3, 5, 5)
    assert run(backend, "col2im", np.zeros((0, 3, 3, 3, 5, 5), np.float32), 5, 5, 1, 1, 1, 1, 1, 1).shape == x.shape


def _empty_batch_max_pool2d(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    y, argmax = run(backend, "max_pool2d_forward", x, 2, 2, 2, 2, 0, 0, 1, 1, False)
    assert y.shape == argmax.shape == (0, 3, 2, 2)
    assert run(backend, "max_pool2d_backward", y, argmax, 5, 5).shape == x.shape


def _empty_batch_avg_pool2d(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    y = run(backend, "avg_pool2d_forward", x, 2, 2, 2, 2, 0, 0, False, True)
    assert y.shape == (0, 3, 2, 2)
    assert run(backend, "avg_pool2d_backward", y, 5, 5, 2, 2, 2, 2, 0, 0, False, True).shape == x.shape


def _empty_batch_lrn(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    y, scale = run(backend, "lrn_forward", x, 3, 0.3, 0.75, 2.0)
    assert y.shape == scale.shape == x.shape
    assert run(backend, "lrn_backward", x, y, scale, y, 3, 0.3, 0.75).shape == x.shape


def _empty_batch_batch_norm(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    with warnings.catch_warnings():  # the mean of no values: NumPy warns, and says NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        y, mean, var, inv_std = run(backend, "batch_norm_forward_training", x, None, None, 1e-5)
        assert y.shape == x.shape and mean.shape == var.shape == inv_std.shape == (3,)
        assert np.isnan(mean).all() and np.isnan(var).all()
        gx, ggamma, gbeta = run(backend, "batch_norm_backward", x, x, None, mean, inv_std)
    assert gx.shape == x.shape and ggamma.shape == gbeta.shape == (3,) and not gbeta.any()


def _empty_batch_batch_norm_inference(backend):
    x, statistics = np.zeros((0, 3, 5, 5), np.float32), np.ones(3, np.float32)
    assert run(backend, "batch_norm_forward_inference", x, None, None, statistics, statistics).shape == x.shape
    gx, ggamma, gbeta = run(backend, "batch_norm_backward_inference", x, x, None, statistics, statistics)
    assert gx.shape == x.shape and ggamma.shape == gbeta.shape == (3,) and not ggamma.any() and not gbeta.any()


def _empty_batch_relu(backend):
    x = np.zeros((0, 3, 5, 5), np.float32)
    assert run(backend, "relu_forward", x).shape == run(backend, "relu_backward", x, x).shape == x.shape


EMPTY_BATCH_CHECKS = {
    "columns": _empty_batch_columns, "conv2d": _empty_batch_conv2d, "max_pool2d": _empty_batch_max_pool2d,
    "avg_pool2d": _empty_batch_avg_pool2d, "lrn": _empty_batch_lrn, "batch_norm": _empty_batch_batch_norm,
    "batch_norm_inference": _empty_batch_batch_norm_inference, "relu": _empty_batch_relu,
}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("primitives", EMPTY_BATCH_CHECKS)
def test_gpu_kernels_take_an_empty_batch(backend, primitives):
    # N = 0 (a filtered batch, an empty last batch): empty results of the right shapes, and for
    # batch norm statistics of no values (NaN), as the reference gives (the reference and Numba
    # are checked against PyTorch on empty batches in tests/test_kernels_empty.py).
    EMPTY_BATCH_CHECKS[primitives](backend)


# The reference against PyTorch (torch.nn.functional, float64), forward and the gradients its
# autograd computes: the oracle itself checked by an independent implementation.

def _torch(a, requires_grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


@given(windows(), st.integers(0, 2**16))
def test_reference_im2col_col2im_equal_torch_unfold_fold(shape_window, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW) = shape_window
    options = dict(kernel_size=(KH, KW), dilation=(DH, DW), padding=(PH, PW), stride=(SH, SW))
    x = _array(seed, (N, C, H, W), np.float64)
    col = reference.im2col(x, KH, KW, SH, SW, PH, PW, DH, DW)
    OH, OW = col.shape[4:]
    # unfold: (N, C*KH*KW, OH*OW), the columns in the same (c, i, j) order.
    np.testing.assert_array_equal(col.reshape(N, C * KH * KW, OH * OW), torch_F.unfold(_torch(x), **options).numpy())
    gcol = _array(seed + 1, col.shape, np.float64)
    expected = torch_F.fold(_torch(gcol.reshape(N, C * KH * KW, OH * OW)), output_size=(H, W), **options)
    assert_close(reference.col2im(gcol, H, W, SH, SW, PH, PW, DH, DW), expected, np.float64, "col2im")


@given(convolutions(), st.booleans(), st.integers(0, 2**16))
def test_reference_conv2d_equals_torch(convolution, bias, seed):
    x_shape, w_shape, (SH, SW, PH, PW, DH, DW), groups = convolution
    x, W = _array(seed, x_shape, np.float64), _array(seed + 1, w_shape, np.float64)
    b = _array(seed + 2, w_shape[:1], np.float64) if bias else None
    xt, Wt = _torch(x, True), _torch(W, True)
    bt = None if b is None else _torch(b, True)
    yt = torch_F.conv2d(xt, Wt, bt, stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW), groups=groups)
    window = (SH, SW, PH, PW, DH, DW)
    assert_close(reference.conv2d_forward(x, W, b, *window, groups), yt, np.float64, "conv2d y")
    gy = _array(seed + 3, tuple(yt.shape), np.float64)
    yt.backward(_torch(gy))
    gx, gW, gb = reference.conv2d_backward(gy, x, W, *window, groups)
    assert_close(gx, xt.grad, np.float64, "conv2d gx")
    assert_close(gW, Wt.grad, np.float64, "conv2d gW")
    assert_close(gb, gy.sum(axis=(0, 2, 3)) if bt is None else bt.grad, np.float64, "conv2d gb")


@given(windows(pooling=True), st.booleans(), st.booleans(), st.integers(0, 2**16))
@example(((1, 1, 4, 4), (2, 2, 1, 1, 0, 0, 1, 1)), False, True, 0)  # overlapping windows sharing tied maxima
def test_reference_max_pool2d_equals_torch(shape_window, ceil_mode, ties, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, DH, DW) = shape_window
    x = _array(seed, (N, C, H, W), np.float64)
    if ties:  # torch keeps the first maximum in window order too: the indices must agree
        x = _with_ties(x, np.float64)
    y, argmax = reference.max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, DH, DW, ceil_mode)
    assume(argmax.min() >= 0 and argmax.max() < H * W)  # torch rejects windows of padding only
    xt = _torch(x, True)
    yt, indices = torch_F.max_pool2d(xt, (KH, KW), (SH, SW), (PH, PW), (DH, DW), ceil_mode=ceil_mode,
                                     return_indices=True)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(argmax, indices.numpy(), err_msg="which index wins")
    gy = _array(seed + 1, y.shape, np.float64)
    yt.backward(_torch(gy))
    assert_close(reference.max_pool2d_backward(gy, argmax, H, W), xt.grad, np.float64, "max_pool2d gx")


@given(windows(pooling=True, dilation=False), st.booleans(), st.booleans(), st.integers(0, 2**16))
@example(((1, 1, 5, 4), (3, 2, 2, 3, 1, 1, 1, 1)), True, False, 0)  # partial windows, real pixels counted
@example(((1, 1, 5, 4), (3, 2, 2, 3, 1, 1, 1, 1)), True, True, 0)  # ... and the padding too
def test_reference_avg_pool2d_equals_torch(shape_window, ceil_mode, count_include_pad, seed):
    (N, C, H, W), (KH, KW, SH, SW, PH, PW, _, _) = shape_window
    x = _array(seed, (N, C, H, W), np.float64)
    options = (KH, KW, SH, SW, PH, PW, ceil_mode, count_include_pad)
    xt = _torch(x, True)
    yt = torch_F.avg_pool2d(xt, (KH, KW), (SH, SW), (PH, PW), ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad)
    assert_close(reference.avg_pool2d_forward(x, *options), yt, np.float64, "avg_pool2d y")
    gy = _array(seed + 1, tuple(yt.shape), np.float64)
    yt.backward(_torch(gy))
    assert_close(reference.avg_pool2d_backward(gy, H, W, *options), xt.grad, np.float64, "avg_pool2d gx")


@given(normalization_shapes(), st.booleans(), st.integers(0, 2**16))
def test_reference_batch_norm_equals_torch(shape, affine, seed):
    if shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (2,) + shape[1:]  # torch refuses one value per channel in training
    C = shape[1]
    x = _array(seed, shape, np.float64) * 3 + 1
    gamma = _array(seed + 1, (C,), np.float64) if affine else None
    beta = _array(seed + 2, (C,), np.float64) if affine else None
    # gamma None counts as 1 and beta None as 0; their gradients are returned all the same.
    xt = _torch(x, True)
    gamma_t = _torch(np.ones(C) if gamma is None else gamma, True)
    beta_t = _torch(np.zeros(C) if beta is None else beta, True)
    yt = torch_F.batch_norm(xt, None, None, gamma_t, beta_t, training=True, eps=1e-5)
    y, mean, var, inv_std = reference.batch_norm_forward_training(x, gamma, beta, 1e-5)
    axes = (0,) + tuple(range(2, len(shape)))
    var_t, mean_t = torch.var_mean(_torch(x), dim=axes, unbiased=False)
    assert_close(y, yt, np.float64, "batch_norm y")
    assert_close(mean, mean_t, np.float64, "batch_norm mean")
    assert_close(var, var_t, np.float64, "batch_norm var (biased)")
    assert_close(inv_std, 1 / torch.sqrt(var_t + 1e-5), np.float64, "batch_norm inv_std")
    gy = _array(seed + 3, shape, np.float64)
    yt.backward(_torch(gy))
    gx, ggamma, gbeta = reference.batch_norm_backward(gy, x, gamma, mean, inv_std)
    # Through a near-zero variance the gradient is a difference of large terms: tolerances of
    # float64 scaled by the largest value.
    for name, actual, expected in (("gx", gx, xt.grad), ("ggamma", ggamma, gamma_t.grad),
                                   ("gbeta", gbeta, beta_t.grad)):
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-9, atol=1e-11 * max(1, np.abs(gx).max()),
                                   err_msg=f"batch_norm {name}")


@given(normalization_shapes(), st.booleans(), st.integers(0, 2**16))
def test_reference_batch_norm_inference_equals_torch(shape, affine, seed):
    C = shape[1]
    x = _array(seed, shape, np.float64) * 3 + 1
    gamma = _array(seed + 1, (C,), np.float64) if affine else None
    beta = _array(seed + 2, (C,), np.float64) if affine else None
    running_mean, running_var = _array(seed + 3, (C,), np.float64), _array(seed + 4, (C,), np.float64) + 1.5
    xt = _torch(x, True)
    gamma_t = _torch(np.ones(C) if gamma is None else gamma, True)
    beta_t = _torch(np.zeros(C) if beta is None else beta, True)
    yt = torch_F.batch_norm(xt, _torch(running_mean), _torch(running_var), gamma_t, beta_t, training=False, eps=1e-5)
    inv_std = 1 / np.sqrt(running_var + 1e-5)
    assert_close(reference.batch_norm_forward_inference(x, gamma, beta, running_mean, inv_std), yt, np.float64,
                 "batch_norm_forward_inference y")
    gy = _array(seed + 5, shape, np.float64)
    yt.backward(_torch(gy))
    grads = reference.batch_norm_backward_inference(gy, x, gamma, running_mean, inv_std)
    for name, actual, expected in zip(("gx", "ggamma", "gbeta"), grads, (xt.grad, gamma_t.grad, beta_t.grad)):
        assert_close(actual, expected, np.float64, f"batch_norm_backward_inference {name}")


@given(normalization_shapes(), st.integers(0, 2**16))
def test_reference_relu_equals_torch(shape, seed):
    x = _array(seed, shape, np.float64)
    x.reshape(-1)[0] = 0.0  # the kink: gradient 0 there, as PyTorch
    xt = _torch(x, True)
    yt = torch.relu(xt)
    y = reference.relu_forward(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    gy = _array(seed + 1, shape, np.float64)
    yt.backward(_torch(gy))
    np.testing.assert_array_equal(reference.relu_backward(gy, y), xt.grad.numpy())


@given(normalization_shapes().filter(lambda shape: len(shape) >= 3), st.integers(1, 6),
       st.sampled_from([(1e-4, 0.75, 1.0), (0.3, 0.75, 2.0), (1.0, 0.5, 1.5)]), st.integers(0, 2**16))
def test_reference_lrn_equals_torch(shape, size, alpha_beta_k, seed):
    # torch.nn.functional.local_response_norm divides alpha by size (an average of the squares,
    # its zero padding counted) over channels [c - size//2, c + (size-1)//2]; the reference takes
    # the coefficient of each square, so it gets alpha / size.
    alpha, beta, k = alpha_beta_k
    x = _array(seed, shape, np.float64) * 2
    xt = _torch(x, True)
    yt = torch_F.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k)
    y, scale = reference.lrn_forward(x, size, alpha / size, beta, k)
    assert_close(y, yt, np.float64, "lrn y")
    gy = _array(seed + 1, shape, np.float64)
    yt.backward(_torch(gy))
    assert_close(reference.lrn_backward(x, y, scale, gy, size, alpha / size, beta), xt.grad, np.float64, "lrn gx")


@pytest.mark.gpu
@pytest.mark.skipif(not array_backend.gpu_available(), reason="needs CuPy and a CUDA device")
def test_dispatch_routes_cupy_arrays_to_the_gpu_kernels():
    # "numpy" chooses among the CPU implementations; a CuPy array still runs the CuPy kernels
    # (kernels="numba" refuses it: tests/test_dispatch.py).
    x = array_backend.cupy.zeros((1, 1, 3, 3))
    for kernels in ("auto", "numpy"):
        with tinycnn.config.using(kernels=kernels):
            for name in tinycnn.kernels.PRIMITIVES:
                assert tinycnn.kernels.implementation(name, x) is tinycnn.kernels.gpu, (kernels, name)


# Whole networks through tinycnn.functional, which reaches the kernels only through the dispatch.

def test_conv_pool_network_same_through_numba_and_reference():
    x, W = _array(0, (2, 1, 9, 9), np.float64), _array(1, (3, 1, 3, 3), np.float64)
    results = {}
    for kernels in ("numpy", "numba"):
        with tinycnn.config.using(kernels=kernels):
            xt, Wt = tinycnn.tensor(x, requires_grad=True), tinycnn.tensor(W, requires_grad=True)
            h = tinycnn.functional.max_pool2d(tinycnn.functional.conv2d(xt, Wt, padding=1, stride=2), 2,
                                              ceil_mode=True)
            loss = (tinycnn.functional.avg_pool2d(h, 2, padding=1) * 1.5).sum()
            loss.backward()
            results[kernels] = (loss.numpy(), xt.grad, Wt.grad)
    for name, numba_value, numpy_value in zip(("loss", "gx", "gW"), results["numba"], results["numpy"]):
        assert_close(numba_value, numpy_value, np.float64, name)


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
    grads = {name: array_backend.to_cpu(p.grad) for name, p in model.named_parameters() if p.grad is not None}
    return array_backend.to_cpu(y.data), array_backend.to_cpu(xt.grad), grads


@pytest.mark.gpu
@pytest.mark.skipif(not array_backend.gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("name, options, input_shape", [
    ("lenet5", dict(), (2, 1, 32, 32)),
    # 64x64 leaves 2x2 maps (8 values per channel) for the last batch norms: with 1x1 maps and a
    # batch of 2 they divide by a near-zero variance and amplify any round-off to 1e-7.
    ("resnet18", dict(num_classes=10), (2, 3, 64, 64)),
])
def test_network_forward_backward_same_on_gpu_and_cpu(name, options, input_shape):
    tinycnn.manual_seed(0)
    model = _to_float64(tinycnn.models.create(name, **options)).train()
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


@pytest.mark.gpu
@pytest.mark.skipif(not array_backend.gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("op, shapes", [
    (lambda x, W: tinycnn.functional.conv2d(x, W, stride=2, padding=1, dilation=(1, 2)), [(2, 2, 6, 7), (3, 2, 3, 2)]),
    (lambda x: tinycnn.functional.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True), [(1, 2, 6, 5)]),
    (lambda x: tinycnn.functional.avg_pool2d(x, (2, 3), stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     [(2, 1, 5, 6)]),
    (lambda x, g, b: tinycnn.functional.batch_norm(x, None, None, g, b, training=True), [(3, 2, 3, 3), (2,), (2,)]),
    (lambda x: tinycnn.functional.local_response_norm(x, 4, alpha=0.5, beta=0.75, k=2.0), [(2, 5, 2, 2)]),
], ids=["conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "local_response_norm"])
def test_gradcheck_through_the_ops_on_gpu(op, shapes):
    inputs = [tinycnn.tensor(_array(seed, shape, np.float64), requires_grad=True, device="gpu")
              for seed, shape in enumerate(shapes)]
    assert tinycnn.gradcheck(op, inputs)


SGD_OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([0.1, 0.01, 1e-3]),
    "momentum": st.sampled_from([0.0, 0.9, 0.5]),
    "dampening": st.sampled_from([0.0, 0.3]),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "nesterov": st.booleans(),
    "maximize": st.booleans(),
})


def _torch_sgd_step(param, grad, buffer, options):
    """torch.optim.SGD's step on copies of (param, grad), from momentum buffer `buffer` (None: the
    first step); returns (param, buffer) as NumPy arrays (buffer None without momentum)."""
    p = torch.nn.Parameter(torch.from_numpy(np.array(param)))
    p.grad = torch.from_numpy(np.array(grad))
    optimizer = torch.optim.SGD([p], foreach=False, **options)
    if buffer is not None:
        optimizer.state[p]["momentum_buffer"] = torch.from_numpy(np.array(buffer))
    optimizer.step()
    torch_buffer = optimizer.state[p].get("momentum_buffer")
    return p.detach().numpy(), None if torch_buffer is None else torch_buffer.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple), SGD_OPTIONS, st.booleans(), DTYPES, LAYOUTS,
       st.integers(0, 2**16))
@example((3, 4), dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False), False,
         np.float32, "contiguous", 0)
def test_sgd_update(backend, shape, options, first_step, dtype, layout, seed):
    # One step of SGD, in place, against torch.optim.SGD's (two rounded operations or more: within
    # the dtype's tolerance), and the Numba kernel equal to the reference to the bit (same
    # operations in the same order).
    if options["nesterov"] and (options["momentum"] == 0 or options["dampening"] != 0):
        options = dict(options, nesterov=False)  # torch refuses Nesterov without momentum or with dampening
    has_momentum = options["momentum"] != 0
    param, grad = _array(seed, shape, dtype, layout), _array(seed + 1, shape, dtype, layout)
    buffer = _array(seed + 2, shape, dtype) if has_momentum else None
    expected_param, expected_buffer = _torch_sgd_step(param, grad, None if first_step else buffer, options)
    arguments = [options[key] for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")]
    what = f"sgd_update {shape} {layout} {options} first_step={first_step}"
    reference_result = reference.sgd_update(param.copy(), grad, None if buffer is None else buffer.copy(), *arguments,
                                            first_step)
    grad_before = grad.copy()
    updated_param, updated_buffer = run(backend, "sgd_update", param, grad, buffer, *arguments, first_step)
    if backend != "cupy":  # in place: the very arrays come back
        assert updated_param is param and updated_buffer is buffer, what
    _assert_close(updated_param, expected_param, dtype, f"{what} param")
    np.testing.assert_array_equal(grad, grad_before, err_msg=f"{what}: grad changed")
    if has_momentum:
        _assert_close(updated_buffer, expected_buffer, dtype, f"{what} buffer")
    else:
        assert updated_buffer is None, what
    if backend in ("numba", "cuda_on_cpu"):
        np.testing.assert_array_equal(updated_param, reference_result[0], err_msg=f"{what}: param not the reference's")
