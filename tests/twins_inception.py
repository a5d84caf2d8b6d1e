"""PyTorch twins of the zoo's Inception networks that torchvision and timm do not ship, written from
the papers: GoogLeNet as published (Szegedy et al. 2015, Table 1 and section 5), BN-Inception
(Ioffe and Szegedy 2015, Figure 5 and section 4.2) and Inception-ResNet-v1 (Szegedy et al. 2017,
Figures 7 and 10-14, Table 1).

Module names make `state_dict()` keys equal tinycnn's. Where a paper is silent the twin follows the
zoo's documented reading, named in each class's docstring.
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

# Table 1 of Szegedy et al. 2015: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
GOOGLENET_BLOCKS = OrderedDict([
    ("inception3a", (192, 64, 96, 128, 16, 32, 32)), ("inception3b", (256, 128, 128, 192, 32, 96, 64)),
    ("inception4a", (480, 192, 96, 208, 16, 48, 64)), ("inception4b", (512, 160, 112, 224, 24, 64, 64)),
    ("inception4c", (512, 128, 128, 256, 24, 64, 64)), ("inception4d", (512, 112, 144, 288, 32, 64, 64)),
    ("inception4e", (528, 256, 160, 320, 32, 128, 128)),
    ("inception5a", (832, 256, 160, 320, 32, 128, 128)), ("inception5b", (832, 384, 192, 384, 48, 128, 128)),
])


class ConvReLU(nn.Module):
    """A convolution with bias, then a ReLU (GoogLeNet: "All the convolutions, including those
    inside the Inception modules, use rectified linear activation")."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)

    def forward(self, x):
        return F.relu(self.conv(x))


class GoogLeNetInception(nn.Module):
    """Figure 2(b): 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = ConvReLU(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvReLU(in_channels, ch3x3red, 1), ConvReLU(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvReLU(in_channels, ch5x5red, 1), ConvReLU(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvReLU(in_channels, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
    """Section 5: 5x5/3 average pool (4x4 maps on 14x14), 1x1 conv of 128 with ReLU, fc 1024 with
    ReLU, dropout 0.7, linear classifier."""

    def __init__(self, in_channels, classes):
        super().__init__()
        self.conv = ConvReLU(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, classes)
        self.dropout = nn.Dropout(0.7)

    def forward(self, x):
        x = self.conv(F.avg_pool2d(x, 5, 3)).flatten(1)  # N x 2048
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class GoogLeNetPaper(nn.Module):
    """Table 1: conv 7x7/2 64, max pool 3x3/2, conv 1x1 64 and 3x3 192, max pool 3x3/2, 3a-3b, max
    pool, 4a-4e, max pool, 5a-5b, 7x7 average pool, dropout 40%, linear. Local response
    normalisation after the first pool and after the 3x3 conv (Figure 3), with the constants of
    BVLC Caffe's bvlc_googlenet (the zoo's documented choice: size 5, alpha 1e-4 divided by the
    size, beta 0.75, k 1); max pools round up (ceil mode: Table 1's 112 -> 56 -> 28 -> 14 -> 7).
    Training mode returns (logits, (aux1 on 4a, aux2 on 4d))."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = ConvReLU(3, 64, 7, 2, 3)
        self.conv2 = ConvReLU(64, 64, 1)
        self.conv3 = ConvReLU(64, 192, 3, padding=1)
        for name, widths in GOOGLENET_BLOCKS.items():
            setattr(self, name, GoogLeNetInception(*widths))
        self.aux1 = GoogLeNetAux(512, classes)
        self.aux2 = GoogLeNetAux(528, classes)
        self.fc = nn.Linear(1024, classes)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.dropout = nn.Dropout(0.4)

    def forward(self, x):
        def pool(t):
            return F.max_pool2d(t, 3, 2, ceil_mode=True)
        x = self.lrn(pool(self.conv1(x)))                 # N x 64 x 56 x 56
        x = pool(self.lrn(self.conv3(self.conv2(x))))     # N x 192 x 28 x 28
        x = pool(self.inception3b(self.inception3a(x)))   # N x 480 x 14 x 14
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.training else None
        x = pool(self.inception4e(x))                     # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))         # N x 1024 x 7 x 7
        x = self.fc(self.dropout(F.avg_pool2d(x, 7, 1).flatten(1)))
        return (x, (aux1, aux2)) if self.training else x


class ConvBNReLU(nn.Module):
    """conv (no bias: BatchNorm's shift replaces it, BN paper section 3.2) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


# Figure 5 of Ioffe & Szegedy 2015: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3,
# pool ("avg" or "max"), pool proj (0: pass through), stride. #1x1 = 0: no 1x1 branch.
BN_INCEPTION_BLOCKS = OrderedDict([
    ("inception3a", (192, 64, 64, 64, 64, 96, "avg", 32, 1)),
    ("inception3b", (256, 64, 64, 96, 64, 96, "avg", 64, 1)),
    ("inception3c", (320, 0, 128, 160, 64, 96, "max", 0, 2)),
    ("inception4a", (576, 224, 64, 96, 96, 128, "avg", 128, 1)),
    ("inception4b", (576, 192, 96, 128, 96, 128, "avg", 128, 1)),
    ("inception4c", (576, 160, 128, 160, 128, 160, "avg", 128, 1)),
    ("inception4d", (608, 96, 128, 192, 160, 192, "avg", 128, 1)),
    ("inception4e", (608, 0, 128, 192, 192, 256, "max", 0, 2)),
    ("inception5a", (1056, 352, 192, 320, 160, 224, "avg", 128, 1)),
    ("inception5b", (1024, 352, 192, 320, 192, 224, "max", 128, 1)),
])


class BNInceptionBlock(nn.Module):
    """GoogLeNet's module with the 5x5 replaced by two 3x3 (section 4.2). In a stride-2 block the
    last conv of each 3x3 branch has stride 2 (padded by 1) and the max pool (3x3/2, rounding up)
    passes its maps through unprojected; otherwise the pool is 3x3/1 padded by 1, then a 1x1
    projection."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, dbl_red, dbl, pool, pool_proj, stride):
        super().__init__()
        if ch1x1:
            self.branch1 = ConvBNReLU(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_channels, ch3x3red, 1),
                                     ConvBNReLU(ch3x3red, ch3x3, 3, stride, 1))
        self.branch3 = nn.Sequential(ConvBNReLU(in_channels, dbl_red, 1), ConvBNReLU(dbl_red, dbl, 3, 1, 1),
                                     ConvBNReLU(dbl, dbl, 3, stride, 1))
        if stride == 2:
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True))
        else:
            pool_layer = nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, 1, 1)
            self.branch4 = nn.Sequential(pool_layer, ConvBNReLU(in_channels, pool_proj, 1))
        self.has_1x1 = bool(ch1x1)

    def forward(self, x):
        branches = [self.branch1(x)] if self.has_1x1 else []
        return torch.cat(branches + [self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class BNInception(nn.Module):
    """Figure 5: conv 7x7/2 64, max pool 3x3/2, conv 1x1 64 then 3x3 192, max pool 3x3/2, the ten
    blocks above, 7x7 average pool, linear. Max pools round up (ceil mode, the zoo's documented
    reading, giving Figure 5's 56/28/14/7 grids)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv1 = ConvBNReLU(3, 64, 7, 2, 3)
        self.stem.conv2 = ConvBNReLU(64, 64, 1)
        self.stem.conv3 = ConvBNReLU(64, 192, 3, 1, 1)
        self.blocks = nn.Sequential(OrderedDict(
            (name, BNInceptionBlock(*widths)) for name, widths in BN_INCEPTION_BLOCKS.items()))
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        def pool(t):
            return F.max_pool2d(t, 3, 2, ceil_mode=True)
        x = pool(self.stem.conv1(x))                     # N x 64 x 56 x 56
        x = pool(self.stem.conv3(self.stem.conv2(x)))    # N x 192 x 28 x 28
        x = self.blocks(x)                               # N x 1024 x 7 x 7
        return self.fc(F.avg_pool2d(x, 7, 1).flatten(1))


def tf_conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """The Inception-v4 paper's convolutions, as the released models: BatchNorm eps 1e-3."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride, padding, eps=1e-3)


class ResidualBlock(nn.Module):
    """Figures 10, 11, 13: branches concatenated, a linear 1x1 conv (with bias) back to the input
    width, scaled (section 3.3) and added to the input, then ReLU (none in the last block)."""

    def __init__(self, branches, concat_channels, channels, scale, relu=True):
        super().__init__()
        for name, branch in branches.items():
            setattr(self, name, branch)
        self.branch_names = list(branches)
        self.conv2d = nn.Conv2d(concat_channels, channels, 1)
        self.scale, self.relu = scale, relu

    def forward(self, x):
        mixed = torch.cat([getattr(self, name)(x) for name in self.branch_names], 1)
        out = x + self.scale * self.conv2d(mixed)
        return F.relu(out) if self.relu else out


def block35(scale=0.17):
    """Figure 10, Inception-ResNet-A on the 35x35 grid (256 maps)."""
    return ResidualBlock({"branch0": tf_conv(256, 32, 1),
                          "branch1": nn.Sequential(tf_conv(256, 32, 1), tf_conv(32, 32, 3, padding=1)),
                          "branch2": nn.Sequential(tf_conv(256, 32, 1), tf_conv(32, 32, 3, padding=1),
                                                   tf_conv(32, 32, 3, padding=1))}, 96, 256, scale)


def block17(scale=0.10):
    """Figure 11, Inception-ResNet-B on the 17x17 grid (896 maps)."""
    return ResidualBlock({"branch0": tf_conv(896, 128, 1),
                          "branch1": nn.Sequential(tf_conv(896, 128, 1), tf_conv(128, 128, (1, 7), padding=(0, 3)),
                                                   tf_conv(128, 128, (7, 1), padding=(3, 0)))}, 256, 896, scale)


def block8(scale=0.20, relu=True):
    """Figure 13, Inception-ResNet-C on the 8x8 grid (1792 maps)."""
    return ResidualBlock({"branch0": tf_conv(1792, 192, 1),
                          "branch1": nn.Sequential(tf_conv(1792, 192, 1), tf_conv(192, 192, (1, 3), padding=(0, 1)),
                                                   tf_conv(192, 192, (3, 1), padding=(1, 0)))}, 384, 1792, scale, relu)


class Reduction(nn.Module):
    """Figures 7 and 12: strided branches and a 3x3/2 max pool, concatenated."""

    def __init__(self, branches):
        super().__init__()
        for name, branch in branches.items():
            setattr(self, name, branch)
        self.branch_names = list(branches)

    def forward(self, x):
        return torch.cat([getattr(self, name)(x) for name in self.branch_names], 1)


class InceptionResNetV1(nn.Module):
    """Figure 15 with the stem of Figure 14; 5 x A (scale 0.17), Reduction-A with k, l, m, n =
    192, 192, 256, 384 (Table 1), 10 x B (0.10), Reduction-B, 5 x C (0.20). Departures the zoo
    documents, as the released FaceNet/osmr models: a sixth C block with scale 1.0 and no ReLU,
    and after global average pooling dropout, fc 1792 -> 512 without bias, BatchNorm1d, fc."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv2d_1a = tf_conv(3, 32, 3, 2)
        self.conv2d_2a = tf_conv(32, 32, 3)
        self.conv2d_2b = tf_conv(32, 64, 3, padding=1)
        self.conv2d_3b = tf_conv(64, 80, 1)
        self.conv2d_4a = tf_conv(80, 192, 3)
        self.conv2d_4b = tf_conv(192, 256, 3, 2)
        self.repeat = nn.Sequential(*[block35() for _ in range(5)])
        self.mixed_6a = Reduction({
            "branch0": tf_conv(256, 384, 3, 2),
            "branch1": nn.Sequential(tf_conv(256, 192, 1), tf_conv(192, 192, 3, padding=1), tf_conv(192, 256, 3, 2)),
            "branch2": nn.MaxPool2d(3, 2)})
        self.repeat_1 = nn.Sequential(*[block17() for _ in range(10)])
        self.mixed_7a = Reduction({
            "branch0": nn.Sequential(tf_conv(896, 256, 1), tf_conv(256, 384, 3, 2)),
            "branch1": nn.Sequential(tf_conv(896, 256, 1), tf_conv(256, 256, 3, 2)),
            "branch2": nn.Sequential(tf_conv(896, 256, 1), tf_conv(256, 256, 3, padding=1), tf_conv(256, 256, 3, 2)),
            "branch3": nn.MaxPool2d(3, 2)})
        self.repeat_2 = nn.Sequential(*[block8() for _ in range(5)])
        self.block8 = block8(scale=1.0, relu=False)
        self.dropout = nn.Dropout(0.2)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=1e-3)
        self.logits = nn.Linear(512, classes)

    def forward(self, x):
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))  # N x 64 x 147 x 147
        x = F.max_pool2d(x, 3, 2)                              # N x 64 x 73 x 73
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))  # N x 256 x 35 x 35
        x = self.mixed_6a(self.repeat(x))                      # N x 896 x 17 x 17
        x = self.mixed_7a(self.repeat_1(x))                    # N x 1792 x 8 x 8
        x = self.block8(self.repeat_2(x))
        x = self.dropout(x.mean(dim=(2, 3)))
        return self.logits(self.last_bn(self.last_linear(x)))
