"""Shared test helpers: tolerances (stated once, here), Hypothesis settings, array comparisons."""
import numpy as np
from hypothesis import strategies as st

import tinycnn

# Forward and backward comparisons against PyTorch and the other oracles. float32 allows for a
# different summation order in the matrix products; float64 for round-off only.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
}


def assert_close(actual, expected, dtype=None, what=""):
    """Compare arrays (tinycnn Tensors, torch tensors or arrays) with the tolerance of `dtype`."""
    actual = to_numpy(actual)
    expected = to_numpy(expected)
    dtype = np.dtype(dtype or actual.dtype)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOLERANCES[dtype])


def to_numpy(value):
    if isinstance(value, tinycnn.Tensor):
        return value.numpy()
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return tinycnn.backend.to_cpu(value)


def random_array(rng, shape, dtype=np.float64, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def conv_layers(max_kernel, max_side, max_batch):
    """A Hypothesis strategy for (N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW): an ungrouped
    convolution with at least one output along each axis (the input at least as tall and wide as
    the dilated kernel, once padded), kernel sides up to max_kernel, planes up to max_side, batches
    up to max_batch, 1 to 6 channels in and out, strides 1-3, padding 0-3, dilation 1-2."""

    @st.composite
    def layers(draw):
        KH, KW = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
        SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        PH, PW = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        DH, DW = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        H = draw(st.integers(max(1, DH * (KH - 1) + 1 - 2 * PH), max_side))
        W = draw(st.integers(max(1, DW * (KW - 1) + 1 - 2 * PW), max_side))
        N, C, OC = draw(st.integers(1, max_batch)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
        return N, C, OC, H, W, KH, KW, SH, SW, PH, PW, DH, DW

    return layers()


def inference_statistics(seed, C, dtype):
    """gamma, beta, mean and inv_std of an evaluation-mode BatchNorm of C channels, as
    tests/test_fused.py draws them: gains near 1.5, inverse deviations of variances in (0.5, 2.5)."""
    rng = np.random.default_rng(seed)
    gamma, beta, mean = rng.uniform(-1, 1, C) + 1.5, rng.uniform(-1, 1, C), rng.uniform(-1, 1, C)
    inv_std = 1 / np.sqrt(rng.uniform(-1, 1, C) + 1.5 + 1e-5)
    return tuple(a.astype(dtype) for a in (gamma, beta, mean, inv_std))


def unfused_batch_norm_relu(y, gamma, beta, mean, inv_std, residual, relu):
    """BatchNorm in evaluation mode, the residual's addition (None for none) and the ReLU (when
    relu) by their own Numba kernels, one after the other: what a fused kernel must match bit for bit."""
    from tinycnn.kernels import cpu  # here, not at the top: most test files import support without the Numba kernels

    y = cpu.batch_norm_forward_inference(y, gamma, beta, mean, inv_std)
    if residual is not None:
        y = cpu.add_in_place(y, residual)
    return cpu.relu_forward(y) if relu else y


def numpy_blas_name():
    """The BLAS NumPy was built against ('scipy-openblas' for NumPy's own wheels, which
    kernels/cpu_blas.py calls by address)."""
    import numpy
    return numpy.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name")
