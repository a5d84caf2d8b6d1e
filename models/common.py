"""What every model module shares: the registry of factories and the output of multi-head networks.

A factory registers itself under a name with `@register("resnet50")`, and with the input it is
specified for when that is not 3 x 224 x 224 (`@register("lenet", input_shape=(1, 28, 28))`);
`tinycnn.models.create(name)`, `list()` and `default_input_shape(name)` read the registry.
"""
from collections import namedtuple

import numpy

from tinycnn import nn

_FACTORIES = {}
_INPUT_SHAPES = {}


def register(name, input_shape=(3, 224, 224)):
    """Decorator: make `factory` available as tinycnn.models.create(name); `input_shape` (C, H, W)
    is the input the network is specified for (what `tinycnn summary NAME` uses by default)."""
    def decorator(factory):
        if name in _FACTORIES:
            raise ValueError(f"models.register: the name {name!r} is taken by {_FACTORIES[name].__module__}")
        _FACTORIES[name] = factory
        _INPUT_SHAPES[name] = tuple(input_shape)
        return factory
    return decorator


# The output of GoogLeNet and Inception v3 in training mode: the main logits and a tuple with the
# logits of each auxiliary classifier (nearest the input first). In eval mode, or when built with
# aux_logits=False, those networks return the logits tensor alone. A trainer adds
# `model.aux_loss_weight * loss(aux)` for each aux head to the main loss.
ModelOutputs = namedtuple("ModelOutputs", ["logits", "aux_logits"])


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, named conv/bn as torchvision's and timm's BasicConv2d,
    so state_dict keys read `...conv.weight`, `...bn.running_mean`. In inference the three run as
    one kernel call (nn.conv_bn_relu)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return nn.conv_bn_relu(self.conv, self.bn, self.relu, x)


def imagenet_to_tf_input(x):
    """Map ImageNet-normalised input, (x - mean) / std, to the (x - 0.5) / 0.5 that torchvision's
    GoogLeNet and Inception v3 weights (ported from TensorFlow) expect: x * std / 0.5 + (mean - 0.5) / 0.5."""
    mean = numpy.array([0.485, 0.456, 0.406], dtype=x.dtype)
    std = numpy.array([0.229, 0.224, 0.225], dtype=x.dtype)
    return x * (std / 0.5).reshape(1, 3, 1, 1) + ((mean - 0.5) / 0.5).reshape(1, 3, 1, 1)
