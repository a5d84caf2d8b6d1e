"""The CUDA code of kernels/gpu.py checked without a GPU, through tests/cuda_harness.py.

Every kernel body in gpu.py is compiled here as C++ (for float and double) and gpu.py's primitives,
run with NumPy standing in for CuPy, are compared with the float64 reference on Hypothesis-drawn
cases by tests/test_kernel_backends.py (its `cuda_on_cpu` backend). This file checks what that
relies on: that every kernel compiles and is reached by some primitive, and that the harness
follows CuPy's rules for arguments (broadcasting, scalars, `raw`, the type T, reductions).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinycnn.kernels.gpu as gpu

import cuda_harness

pytestmark = pytest.mark.skipif(not cuda_harness.compiler_available(),
                                reason=f"needs the C++ compiler {cuda_harness.COMPILER}")

SOURCES = cuda_harness.kernel_sources(gpu)


def test_gpu_module_keeps_its_kernels_as_sources():
    assert len(SOURCES) >= 12, sorted(SOURCES)
    assert {"tinycnn_im2col", "tinycnn_col2im", "tinycnn_batch_norm_gx", "tinycnn_lrn_backward"} <= set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_kernel_body_compiles_as_cxx(name):
    kernel = cuda_harness.build(SOURCES[name])
    assert kernel.library.run_float and kernel.library.run_double


def test_every_kernel_is_reached_by_a_primitive():
    # Each primitive once, small: the kernels they build must be all of gpu.py's, so the
    # primitive-level comparisons in test_kernel_backends.py cover every CUDA body.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 5, 5)).astype(np.float32)
    W = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    with cuda_harness.gpu_module_on_cpu() as on_cpu:
        y = on_cpu.conv2d_forward(x, W, None, 1, 1, 1, 1, 1, 1, 1)
        on_cpu.conv2d_backward(y, x, W, 1, 1, 1, 1, 1, 1, 1)
        pooled, argmax = on_cpu.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
        on_cpu.max_pool2d_backward(pooled, argmax, 5, 5)
        pooled = on_cpu.avg_pool2d_forward(x, 2, 2, 2, 2, 1, 1, True, False)
        on_cpu.avg_pool2d_backward(pooled, 5, 5, 2, 2, 2, 2, 1, 1, True, False)
        _, mean, _, inv_std = on_cpu.batch_norm_forward_training(x, None, None, 1e-5)
        on_cpu.batch_norm_backward(x, x, None, mean, inv_std)
        y, scale = on_cpu.lrn_forward(x, 3, 0.3, 0.75, 2.0)
        on_cpu.lrn_backward(x, y, scale, y, 3, 0.3, 0.75)
        on_cpu.batch_norm_forward_inference(x, None, None, mean, inv_std)
        on_cpu.batch_norm_backward_inference(x, x, None, mean, inv_std)
        on_cpu.relu_backward(x, on_cpu.relu_forward(x))
        on_cpu.add_in_place(x.copy(), x)
        on_cpu.sgd_update(x.copy(), x, None, 0.1, 0.0, 0.0, 0.0, False, False, True)
        on_cpu.sgd_update(x.copy(), x, x.copy(), 0.1, 0.9, 0.0, 0.0, False, False, False)
        built = set(on_cpu._compiled)
    assert built == set(SOURCES)


def test_batch_norm_centres_x_before_scaling_in_float32():
    # The channel of test_kernel_backends' fixed example: values 1.6928 and 1.6935, eps 1e-5. The
    # NORMALIZE body centres in double; x * gain + (beta - gain * mean) in float32 was 4e-5 off.
    x = np.array([[1.6927739, -0.94787455], [1.6935081, 0.23526466]], np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    inv_std = 1 / np.sqrt(((x64 - mean) ** 2).mean(axis=0) + 1e-5)
    expected = (x64 - mean) * inv_std
    with cuda_harness.gpu_module_on_cpu() as on_cpu:
        y = on_cpu.batch_norm_forward_training(x, None, None, 1e-5)[0]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


# The harness itself: its ElementwiseKernel and ReductionKernel against NumPy on drawn shapes.

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def broadcast_pairs(draw):
    """Two shapes that broadcast: the second keeps some of the first's axes and sets others to 1."""
    shape = draw(shapes)
    other = tuple(size if draw(st.booleans()) else 1 for size in shape)
    return shape, other[draw(st.integers(0, len(other))):]


@given(broadcast_pairs(), st.sampled_from([np.float32, np.float64]), st.floats(-2, 2))
def test_harness_elementwise_broadcasts_and_takes_scalars(shapes_pair, dtype, scalar):
    kernel = cuda_harness.ElementwiseKernel("T x, T y, T s, int64 offset", "T z, T w",
                                            "z = x * y + s; w = (T)(i + offset)", "harness_check")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, shapes_pair[0]).astype(dtype), rng.uniform(-1, 1, shapes_pair[1]).astype(dtype)
    z, w = kernel(x, y, dtype(scalar), 3)
    np.testing.assert_allclose(z, x * y + dtype(scalar), rtol=1e-6)
    np.testing.assert_array_equal(w, np.arange(x.size).reshape(x.shape) + 3)  # i: the C-order element index
    assert z.dtype == w.dtype == dtype


def test_harness_reads_raw_arrays_in_c_order_and_checks_types():
    kernel = cuda_harness.ElementwiseKernel("raw T x, int64 W", "T y", "y = x[i / W * W + (W - 1 - i % W)]",
                                            "harness_mirror")
    x = np.arange(12.0).reshape(4, 3).T  # (3, 4), not C-contiguous
    np.testing.assert_array_equal(kernel(x, 4, np.empty((3, 4))), x[:, ::-1])
    with pytest.raises(TypeError, match="one dtype"):
        kernel(x.astype(np.float32), 4, np.empty((3, 4)))
    with pytest.raises(ValueError, match="size="):
        kernel(x, 4)  # nothing non-raw fixes the size
    raw_out = cuda_harness.ElementwiseKernel("raw T x", "raw T y", "y[i] = 2 * x[i]", "harness_raw_out")
    y = np.zeros(5)
    raw_out(np.arange(5.0), y, size=3)
    np.testing.assert_array_equal(y, [0, 2, 4, 0, 0])


def test_harness_reports_an_index_outside_a_raw_array():
    # On a GPU such a read returns whatever lies there; the harness names the kernel, array and index.
    shifted = cuda_harness.ElementwiseKernel("raw T x", "T y", "y = x[i + 1]", "harness_shifted")
    with pytest.raises(IndexError, match=r"harness_shifted: the kernel indexed x\[4\], outside its 4 elements"):
        shifted(np.arange(4.0), np.empty(4))
    np.testing.assert_array_equal(shifted(np.arange(5.0), np.empty(4)), [1, 2, 3, 4])  # in bounds: no error


@given(shapes, st.data(), st.sampled_from([np.float32, np.float64]))
def test_harness_reduction_sums_the_given_axes(shape, data, dtype):
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    kernel = cuda_harness.ReductionKernel("T x, float64 c", "float64 total", "((double)x - c) * ((double)x - c)",
                                          "a + b", "total = a", "0", "harness_reduce")
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(dtype)
    np.testing.assert_allclose(kernel(x, 0.25, axis=axes), ((x.astype(np.float64) - 0.25) ** 2).sum(axis=axes),
                               rtol=1e-12)


def test_harness_reports_two_threads_touching_one_raw_output_element():
    # Thread i adds into element i // 2: threads 0 and 1 both write element 0, a race on a GPU.
    racing = cuda_harness.ElementwiseKernel("raw T x", "raw T total", "total[i / 2] += x[i]", "harness_racing")
    with pytest.raises(RuntimeError, match=r"harness_racing: threads i=0 and i=1 both touch total\[0\]"):
        racing(np.ones(4), np.zeros(2), size=4)
    owned = cuda_harness.ElementwiseKernel("raw T x", "raw T total", "total[i] += x[2 * i] + x[2 * i + 1]",
                                           "harness_owned")
    np.testing.assert_array_equal(owned(np.ones(4), np.zeros(2), size=2), [2, 2])  # one thread per element: fine
