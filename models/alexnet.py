"""AlexNet: Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NIPS 2012, section 3 and Figure 2.

Two variants:

- `alexnet_paper()`: the published network as BVLC Caffe's `bvlc_alexnet` realises it (60,965,224
  parameters): 227x227 input (the paper's "224" does not give 55x55 maps after an 11x11 stride-4
  convolution); conv2, conv4 and conv5 split into two groups (the paper's two GPUs: a map sees only
  the maps on its own GPU); local response normalisation after the ReLUs of conv1 and conv2;
  overlapping 3x3 stride-2 max pooling; dropout 0.5 before fc7 and fc8. The LRN is the paper's,
  b = a / (k + alpha * sum a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75, alpha NOT divided by n
  (`lrn="paper"`); `lrn="caffe"` gives bvlc_alexnet's k=1 with alpha divided by n. Initialisation
  is the paper's (section 5): weights N(0, 0.01), biases 1 in conv2, conv4, conv5 and the hidden fc
  layers (so the ReLUs start with positive inputs), 0 elsewhere; `paper_init=False` keeps PyTorch's
  default initialisation.
- `alexnet()`: torchvision's layout (61,100,840 parameters), from "One weird trick..." (Krizhevsky
  2014): 64-192-384-256-256 filters, no LRN, no groups, an adaptive 6x6 average pool so any input
  of at least 63x63 works; state_dict keys `features.0.weight` ... `classifier.6.bias`.

Both variants have all five convolutional layers of the paper's Figure 2 (three 3x3 convolutions,
conv3-conv5, after the pooled conv1 and conv2); short re-implementations that drop one of them are
not AlexNet.
"""
from collections import OrderedDict

import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import register

__all__ = ["alexnet", "alexnet_paper"]

# Figure 2 / Caffe: (name, filters, kernel, stride, padding, groups, LRN after, max pool after).
PAPER_CONVS = (
    ("conv1", 96, 11, 4, 0, 1, True, True),
    ("conv2", 256, 5, 1, 2, 2, True, True),
    ("conv3", 384, 3, 1, 1, 1, False, False),
    ("conv4", 384, 3, 1, 1, 2, False, False),
    ("conv5", 256, 3, 1, 1, 2, False, True),
)
PAPER_FC = (4096, 4096)
# The paper sets these biases to 1 (section 5).
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")

LRN_SETTINGS = {
    "paper": dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_divided_by_size=False),
    "caffe": dict(size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_divided_by_size=True),
}


class AlexNetPaper(nn.Module):
    """The 2012 network (see the module docstring); layer names follow Caffe (conv1 ... fc8)."""

    def __init__(self, num_classes=1000, in_channels=3, lrn="paper", paper_init=True, dropout=0.5):
        super().__init__()
        if lrn not in LRN_SETTINGS:
            raise ValueError(f"AlexNetPaper: lrn must be one of {sorted(LRN_SETTINGS)}, got {lrn!r}")
        layers = OrderedDict()
        channels = in_channels
        for name, filters, kernel, stride, padding, groups, has_lrn, has_pool in PAPER_CONVS:
            index = name[-1]
            layers[name] = nn.Conv2d(channels, filters, kernel, stride=stride, padding=padding, groups=groups)
            layers[f"relu{index}"] = nn.ReLU(inplace=True)
            if has_lrn:
                layers[f"norm{index}"] = nn.LocalResponseNorm(**LRN_SETTINGS[lrn])
            if has_pool:
                layers[f"pool{index}"] = nn.MaxPool2d(3, stride=2)
            channels = filters
        self.features = nn.Sequential(layers)
        hidden6, hidden7 = PAPER_FC
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(channels * 6 * 6, hidden6)), ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(hidden6, hidden7)), ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(hidden7, num_classes)),
        ]))
        if paper_init:
            for name, module in list(self.features.named_children()) + list(self.classifier.named_children()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(module.weight, 0.0, 0.01)
                    nn.init.constant_(module.bias, 1.0 if name in PAPER_BIAS_ONE else 0.0)

    def forward(self, x):
        # N x 3 x 227 x 227
        x = self.features(x)
        # N x 256 x 6 x 6 (conv1 55x55, pool1 27x27, pool2 13x13, pool5 6x6)
        x = F.flatten(x, 1)
        # N x 9216
        x = self.classifier(x)
        # N x num_classes
        return x


class AlexNet(nn.Module):
    """torchvision's AlexNet (see the module docstring)."""

    def __init__(self, num_classes=1000, in_channels=3, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        # N x 3 x 224 x 224
        x = self.features(x)
        # N x 256 x 6 x 6
        x = F.flatten(self.avgpool(x), 1)
        # N x 9216
        x = self.classifier(x)
        # N x num_classes
        return x


@register("alexnet_paper", input_shape=(3, 227, 227))
def alexnet_paper(**kwargs):
    """AlexNet as published (Caffe's bvlc_alexnet layout), 60,965,224 parameters; input N x 3 x 227 x 227."""
    return AlexNetPaper(**kwargs)


@register("alexnet")
def alexnet(**kwargs):
    """torchvision's AlexNet, 61,100,840 parameters; input N x 3 x 224 x 224."""
    return AlexNet(**kwargs)
