"""tinycnn: a from-scratch CNN framework whose every step can be read.

    import tinycnn
    import tinycnn.functional as F
    from tinycnn import nn, optim
"""
from tinycnn import _threading  # noqa: F401 - first: it notes which libraries were loaded before tinycnn
from tinycnn import config
from tinycnn.autograd import Function, Parameter, Tensor, tensor
from tinycnn import arithmetic  # noqa: F401 - attaches operators and methods to Tensor
from tinycnn.config import enable_grad, no_grad
from tinycnn.gradcheck import GradcheckError, gradcheck
from tinycnn.random import get_rng_state, manual_seed, set_rng_state
from tinycnn import backend, functional, nn, optim  # noqa: E402
from tinycnn.summary import summary
from tinycnn.graph import draw_graph
from tinycnn.explain import explain
from tinycnn.trace import trace

__version__ = "0.1.0"

__all__ = [
    "Function", "GradcheckError", "Parameter", "Tensor", "backend", "config", "enable_grad",
    "functional", "get_rng_state", "gradcheck", "manual_seed", "nn", "no_grad", "optim",
    "set_rng_state", "summary", "tensor", "draw_graph", "explain", "trace",
]
