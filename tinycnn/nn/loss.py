"""Loss layers: CrossEntropyLoss and MSELoss, thin wrappers over the functional losses."""
from tinycnn import backend
from tinycnn import functional as F
from tinycnn.autograd import Tensor
from tinycnn.nn.module import Module

__all__ = ["CrossEntropyLoss", "MSELoss", "NLLLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(layer, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{layer}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _class_weight(weight):
    # A buffer, as in torch, so it follows .to('gpu') and appears in state_dict when given.
    if weight is None:
        return None
    array = weight.data if isinstance(weight, Tensor) else weight
    return backend.get_array_module(array).asarray(array)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy between logits (N, C) and class indices (N,); see F.cross_entropy.

    weight (C,) rescales each class's loss; label_smoothing mixes the one-hot target with the
    uniform distribution.
    """

    def __init__(self, weight=None, reduction="mean", label_smoothing=0.0):
        super().__init__()
        _check_reduction("CrossEntropyLoss", reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", _class_weight(weight))
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class NLLLoss(Module):
    """Negative log-likelihood of log-probabilities (N, C) at class indices (N,); see F.nll_loss."""

    def __init__(self, weight=None, reduction="mean"):
        super().__init__()
        _check_reduction("NLLLoss", reduction)
        self.register_buffer("weight", _class_weight(weight))
        self.reduction = reduction

    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, reduction=self.reduction)


class MSELoss(Module):
    """Mean (or sum) of squared differences; see F.mse_loss."""

    def __init__(self, reduction="mean"):
        super().__init__()
        _check_reduction("MSELoss", reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)
