import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tinycnn import backend

# Two Hypothesis profiles: "ci" keeps the suite within minutes on 2 cores; "thorough" draws hundreds
# of examples per op, for a run by hand: HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _gpu_params():
    marks = [pytest.mark.gpu]
    if not backend.gpu_available():
        marks.append(pytest.mark.skip(reason="needs CuPy and a CUDA device"))
    return pytest.param("cupy", marks=marks)


@pytest.fixture(params=["numpy", _gpu_params()])
def xp(request):
    """The array module to run a test on: NumPy always, CuPy where a GPU is present."""
    if request.param == "numpy":
        return np
    return backend.cupy


@pytest.fixture
def rng():
    return np.random.default_rng(0)
