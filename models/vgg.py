"""VGG: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, Table 1 (configurations A, B, D, E = VGG-11, 13, 16, 19).

Every convolution is 3x3, stride 1, padding 1 (a stack of two sees 5x5, of three 7x7, with fewer
weights and more nonlinearities); a 2x2 stride-2 max pool ends each of the five stages; then three
fully connected layers 4096-4096-1000 with dropout 0.5 after the first two.

The layout is torchvision's (`models/vgg.py`): state_dict keys `features.<i>.weight` and
`classifier.{0,3,6}.weight`, so its weights load. Departures from the paper, as torchvision:
- an adaptive 7x7 average pool before the classifier (a no-op at 224x224) lets other input sizes
  through; the paper evaluates larger images by turning the fc layers into convolutions instead;
- `vgg*_bn` add BatchNorm after every convolution (the paper predates BatchNorm);
- initialisation is torchvision's (Kaiming normal for convolutions, N(0, 0.01) for fc layers), not
  the paper's pre-training of deeper nets from configuration A.
Configuration C (1x1 convolutions in stages 3-5) and A-LRN are not provided. The source
documents' VGG-16 snippet gives the first convolution of the second stage a (3, 2) kernel; every
convolution of the paper's configurations A, B, D and E is 3x3.
"""
import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import register

__all__ = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# Table 1: output channels of each 3x3 convolution, "M" for a 2x2 max pool.
CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}
DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}


def make_layers(config, in_channels=3, batch_norm=False):
    layers = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, config, num_classes=1000, in_channels=3, batch_norm=False, dropout=0.5):
        super().__init__()
        self.features = make_layers(config, in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        # N x 3 x 224 x 224
        x = self.features(x)
        # N x 512 x 7 x 7 (each stage halves the side: 112, 56, 28, 14, 7)
        x = F.flatten(self.avgpool(x), 1)
        # N x 25088
        x = self.classifier(x)
        # N x num_classes
        return x


def _vgg(depth, batch_norm, **kwargs):
    return VGG(CONFIGS[DEPTHS[depth]], batch_norm=batch_norm, **kwargs)


@register("vgg11")
def vgg11(**kwargs):
    """VGG-11 (configuration A), 132,863,336 parameters."""
    return _vgg(11, False, **kwargs)


@register("vgg13")
def vgg13(**kwargs):
    """VGG-13 (configuration B), 133,047,848 parameters."""
    return _vgg(13, False, **kwargs)


@register("vgg16")
def vgg16(**kwargs):
    """VGG-16 (configuration D), 138,357,544 parameters."""
    return _vgg(16, False, **kwargs)


@register("vgg19")
def vgg19(**kwargs):
    """VGG-19 (configuration E), 143,667,240 parameters."""
    return _vgg(19, False, **kwargs)


@register("vgg11_bn")
def vgg11_bn(**kwargs):
    """VGG-11 with BatchNorm (torchvision), 132,868,840 parameters."""
    return _vgg(11, True, **kwargs)


@register("vgg13_bn")
def vgg13_bn(**kwargs):
    """VGG-13 with BatchNorm (torchvision), 133,053,736 parameters."""
    return _vgg(13, True, **kwargs)


@register("vgg16_bn")
def vgg16_bn(**kwargs):
    """VGG-16 with BatchNorm (torchvision), 138,365,992 parameters."""
    return _vgg(16, True, **kwargs)


@register("vgg19_bn")
def vgg19_bn(**kwargs):
    """VGG-19 with BatchNorm (torchvision), 143,678,248 parameters."""
    return _vgg(19, True, **kwargs)
