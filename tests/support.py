"""Shared test helpers: tolerances (stated once, here), Hypothesis settings, array comparisons."""
import numpy as np

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
