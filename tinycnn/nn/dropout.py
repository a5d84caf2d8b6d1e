"""Dropout: zero each element with probability p in training, scale the rest by 1 / (1 - p)."""
from tinycnn import functional as F
from tinycnn.nn.module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Active in train() mode only; in eval() mode it returns the input unchanged.

    `inplace` is accepted for torch compatibility and ignored (a new array is returned).
    Masks are drawn from tinycnn.random.generator(), so tinycnn.manual_seed reproduces them.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability p must be between 0 and 1, got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
