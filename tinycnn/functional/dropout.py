"""Inverted dropout: zero each unit with probability p in training and scale the survivors by
1 / (1 - p), so the expected activation is unchanged and evaluation needs no rescaling."""
from tinycnn import backend, random
from tinycnn.autograd import Function, as_tensor
from tinycnn.explain import Example, Explanation
from tinycnn.functional._checks import check_floating

__all__ = ["dropout"]


class Dropout(Function):
    explanation = Explanation(
        forward="y = x * mask, mask_i = 1 / (1 - p) with probability 1 - p, else 0 (drawn once per call)",
        backward="""
1. The mask is a constant drawn in forward: y_i = mask_i x_i is linear in x_i.
2. dy_i/dx_i = mask_i, so gx = gy * mask: dropped units pass no gradient, kept ones pass it scaled
   by 1 / (1 - p), exactly as their values were.""",
        saved="mask, new memory of x's shape and dtype: the one random draw, kept so backward uses the same mask.")
    examples = {"dropout": Example(shape=(2, 3, 4, 4), options={"p": 0.5})}

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        check_floating("dropout", input=x)
        # The mask is drawn on the host from tinycnn's one seeded Generator, then copied to the GPU
        # for CuPy input: one random stream, so a seed reproduces a run on either device (at the
        # cost of a host-to-device copy of the mask).
        keep = random.generator().random(x.shape) >= self.p
        scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0  # p = 1 drops everything
        mask = keep.astype(x.dtype) * x.dtype.type(scale)
        if backend.is_gpu_array(x):
            mask = backend.to_gpu(mask)
        self.mask = mask
        return x * mask

    def backward(self, gy):
        # y = x * mask with a constant mask (0 or 1/(1-p)): dy/dx = mask.
        return gy * self.mask


def dropout(input, p=0.5, training=True, inplace=False):
    """torch.nn.functional.dropout: in training, zero each element with probability p and scale the
    rest by 1/(1-p); the identity when not training or p == 0. The mask comes from
    tinycnn.random.generator(), so tinycnn.manual_seed makes it reproducible. tinycnn never works in
    place (`inplace` is accepted for compatibility)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p must lie in [0, 1], got {p}")
    if not training or p == 0:
        return as_tensor(input)
    return Dropout(p)(input)
