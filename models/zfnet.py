"""ZFNet: Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
Figure 3 (arXiv:1311.2901).

AlexNet with a smaller, denser first layer, found by looking at the filters: 7x7 stride-2 filters
instead of 11x11 stride 4, and a stride-2 second layer. The layer table below is osmr's imgclsmob
`zfnet` (62,357,608 parameters), whose sizes reproduce Figure 3 (224 -> 110 -> 55 -> 26 -> 13 -> 6):
conv1 pads by 1 and the max pools round up (ceil_mode), as in Caffe. Departures:

- the paper renormalises each first-layer filter whose RMS exceeds 0.1 back to 0.1 during
  training; that is a training-loop rule, not a layer, so it is not part of the network;
- the paper's "contrast normalisation across feature maps" after layers 1 and 2 is taken to be
  AlexNet's local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75, alpha not divided by
  n), placed after the ReLU and before the pool as in osmr's model; `lrn=False` removes it.
"""
from collections import OrderedDict

import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import register

__all__ = ["zfnet"]

# Figure 3: (name, filters, kernel, stride, padding, LRN after, max pool after).
CONVS = (
    ("conv1", 96, 7, 2, 1, True, True),
    ("conv2", 256, 5, 2, 0, True, True),
    ("conv3", 384, 3, 1, 1, False, False),
    ("conv4", 384, 3, 1, 1, False, False),
    ("conv5", 256, 3, 1, 1, False, True),
)
FC = (4096, 4096)


class ZFNet(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, lrn=True, dropout=0.5):
        super().__init__()
        layers = OrderedDict()
        channels = in_channels
        for name, filters, kernel, stride, padding, has_lrn, has_pool in CONVS:
            index = name[-1]
            layers[name] = nn.Conv2d(channels, filters, kernel, stride=stride, padding=padding)
            layers[f"relu{index}"] = nn.ReLU(inplace=True)
            if has_lrn and lrn:
                layers[f"norm{index}"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0,
                                                              alpha_divided_by_size=False)
            if has_pool:
                layers[f"pool{index}"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            channels = filters
        self.features = nn.Sequential(layers)
        hidden6, hidden7 = FC
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(channels * 6 * 6, hidden6)), ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(hidden6, hidden7)), ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(hidden7, num_classes)),
        ]))

    def forward(self, x):
        # N x 3 x 224 x 224
        x = self.features(x)
        # N x 256 x 6 x 6 (conv1 110x110, pool1 55x55, conv2 26x26, pool2 13x13, pool5 6x6)
        x = F.flatten(x, 1)
        # N x 9216
        x = self.classifier(x)
        # N x num_classes
        return x


@register("zfnet")
def zfnet(**kwargs):
    """ZFNet (osmr's layout of Figure 3), 62,357,608 parameters; input N x 3 x 224 x 224."""
    return ZFNet(**kwargs)
