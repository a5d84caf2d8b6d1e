"""Inception v2 (BN-Inception): Ioffe and Szegedy, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167), section 4.2 and
Figure 5.

GoogLeNet with BatchNorm before every ReLU, and the changes of section 4.2: each 5x5 convolution
becomes two 3x3 convolutions ("double 3x3"); the 28x28 grid gets a third block (3c); blocks 3c and
4e shrink the grid themselves (stride-2 3x3 convolutions beside a stride-2 max pool whose maps pass
through unprojected); the pool branch averages or takes the maximum as the table says; local
response normalisation, dropout and the auxiliary classifiers of GoogLeNet are gone (dropout and
LRN are removed in section 4.2.1; Figure 5 shows no auxiliary heads).

Departures, where Figure 5 is silent or inconsistent:
- convolutions have no bias (BatchNorm's shift replaces it, section 3.2); BatchNorm eps 1e-5;
- max pools round up (Caffe's ceil mode, as GoogLeNet), giving the table's 56/28/14/7 grids;
- the printed output depths of 4d (576) and 4e (1024) disagree with the printed branch widths; the
  widths are followed (4d gives 96 + 192 + 192 + 128 = 608 maps and 4e 192 + 256 + 608 = 1056), as
  in the Caffe model used by later work (Xiong et al.'s BN-Inception);
- stride-2 3x3 convolutions pad by 1, so 28x28 becomes 14x14 as in the table.
There is no pretrained layout to match, so module names follow the paper's rows.
"""
from collections import OrderedDict

import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import ConvBNReLU, register

__all__ = ["inception_v2"]

# Figure 5's inception rows: (name, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3,
# pool type, pool proj, stride). #1x1 = 0 means no 1x1 branch; pool proj = 0 means the pooled maps
# pass through.
INCEPTION_TABLE = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


def conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding)


class InceptionBN(nn.Module):
    """1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool (-> 1x1), concatenated; stride 2 shrinks the grid."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, dbl3x3red, dbl3x3, pool_type, pool_proj, stride=1):
        super().__init__()
        self.branch1 = conv(in_channels, ch1x1, 1) if ch1x1 else None
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, stride, 1))
        self.branch3 = nn.Sequential(conv(in_channels, dbl3x3red, 1), conv(dbl3x3red, dbl3x3, 3, 1, 1),
                                     conv(dbl3x3, dbl3x3, 3, stride, 1))
        if pool_type == "avg":
            pool = nn.AvgPool2d(3, stride=stride, padding=1, ceil_mode=True)
        else:
            pool = nn.MaxPool2d(3, stride=stride, padding=1 if stride == 1 else 0, ceil_mode=True)
        self.branch4 = nn.Sequential(pool, conv(in_channels, pool_proj, 1)) if pool_proj else pool
        self.out_channels = ch1x1 + ch3x3 + dbl3x3 + (pool_proj or in_channels)

    def forward(self, x):
        branches = [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.branch1 is not None:
            branches.insert(0, self.branch1(x))
        return F.concat(branches, axis=1)  # N x out_channels x H/stride x W/stride


class InceptionV2(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv1", conv(in_channels, 64, 7, stride=2, padding=3)),
            ("maxpool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("conv2", conv(64, 64, 1)),
            ("conv3", conv(64, 192, 3, padding=1)),
            ("maxpool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        channels = 192
        blocks = OrderedDict()
        for name, *row in INCEPTION_TABLE:
            blocks[f"inception{name}"] = InceptionBN(channels, *row)
            channels = blocks[f"inception{name}"].out_channels
        self.blocks = nn.Sequential(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        # N x 3 x 224 x 224
        x = self.stem(x)
        # N x 192 x 28 x 28
        x = self.blocks(x)
        # N x 1024 x 7 x 7 (3a-3b 28x28 -> 3c 14x14 (576) -> 4a-4d -> 4e 7x7 (1056) -> 5a-5b)
        x = F.flatten(self.avgpool(x), 1)
        # N x 1024
        x = self.fc(x)
        # N x num_classes
        return x


@register("inception_v2")
def inception_v2(**kwargs):
    """BN-Inception (Figure 5 of Ioffe & Szegedy 2015); input N x 3 x 224 x 224."""
    return InceptionV2(**kwargs)
