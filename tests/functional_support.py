"""Helpers shared by the tests of tinycnn.functional: running an op and its torch counterpart on
the same data and comparing outputs and gradients."""
import numpy as np
import torch
from hypothesis import HealthCheck, settings

import tinycnn
from support import assert_close

# The xp fixture only names the array module, so sharing it between Hypothesis examples is safe.
# Everything else (max_examples, deadline) still comes from the loaded profile.
with_xp_fixture = settings(
    suppress_health_check=list(settings().suppress_health_check) + [HealthCheck.function_scoped_fixture])


def leaf(array, xp=np, dtype=np.float64):
    return tinycnn.Tensor(xp.asarray(np.asarray(array, dtype=dtype)), requires_grad=True)


def compare_with_torch(ours, theirs, arrays, xp, dtype, what, seed=1):
    """Check ours(*tensors) against theirs(*torch_tensors) built from the same float `arrays`.

    Compares the outputs and, with fixed random weights w, the gradients of sum(w * y) for every
    input. `ours` receives tinycnn Tensors on `xp`'s device; `theirs` CPU torch tensors.
    Returns the tinycnn output.
    """
    xs = [leaf(a, xp, dtype) for a in arrays]
    ts = [torch.tensor(np.asarray(a, dtype=dtype), requires_grad=True) for a in arrays]
    y, ty = ours(*xs), theirs(*ts)
    assert y.dtype == np.dtype(dtype), f"{what}: output dtype {y.dtype}, expected {np.dtype(dtype)}"
    assert_close(y, ty, dtype, what)
    w = np.asarray(np.random.default_rng(seed).standard_normal(tuple(ty.shape)), dtype=dtype)
    (y * tinycnn.Tensor(xp.asarray(w))).sum().backward()
    (ty * torch.tensor(w)).sum().backward()
    for i, (x, t) in enumerate(zip(xs, ts)):
        assert x.grad is not None, f"{what}: no gradient reached input {i}"
        assert_close(x.grad, t.grad, dtype, f"{what}: gradient of input {i}")
    return y
