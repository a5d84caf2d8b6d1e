"""Inception-v4, Inception-ResNet-v1 and Inception-ResNet-v2: Szegedy, Ioffe, Vanhoucke and Alemi,
"Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning", AAAI 2017
(arXiv:1602.07261), Figures 3-18.

- `inception_v4()`: the pure Inception network of Figures 3-9 (stem, 4 x Inception-A,
  Reduction-A, 7 x Inception-B, Reduction-B, 3 x Inception-C); 42,679,816 parameters. Layout and
  state_dict keys of timm's `inception_v4` (`features.<i>.conv.weight`, `features.<i>.bn.*`,
  `last_linear.*`), ported from the released TensorFlow model.
- `inception_resnet_v2()`: Figures 3 and 16-18 with residual Inception blocks whose branch output
  is scaled before it is added (section 3.3: 0.17, 0.10, 0.20, which keeps very deep residual
  Inceptions from dying early in training); 55,843,464 parameters; timm's layout and keys
  (`conv2d_1a`, `mixed_5b`, `repeat`, `repeat_1`, `repeat_2`, `block8`, `conv2d_7b`, `classif`).
- `inception_resnet_v1()`: Figures 10-15 (the cheaper residual network with the stem of Figure 14);
  23,995,624 parameters with osmr imgclsmob's FaceNet-style head. No canonical ImageNet weights
  exist for it, so module names follow the v2 layout above.

Departures, as the released models and timm (or osmr for v1):
- every convolution is conv (no bias) + BatchNorm (eps 1e-3, TensorFlow's) + ReLU; the residual
  "up" 1x1 convolution has a bias and no BatchNorm (Figures 10-13, 16-18 show it linear);
- Inception-ResNet-v2 has 10 x A, 20 x B and 9 x C blocks plus a last C block with scale 1.0 and no
  ReLU (the paper's Figure 15 says 5 x A, 10 x B, 5 x C); Inception-ResNet-v2's stem is the
  released model's (Figure 3's stem has branches; the release uses 3x3/2 32, 3x3 32, 3x3 64, max
  pool, 1x1 80, 3x3 192, max pool, then a "Mixed_5b" Inception-A block to 320 maps);
- Inception-ResNet-v1 has 5 x A, 10 x B and 5 x C plus a last C with scale 1.0 and no ReLU, and a
  FaceNet-style head after global average pooling: dropout, fc 1792 -> 512 without bias,
  BatchNorm1d, fc 512 -> num_classes (osmr's and FaceNet's; the paper has dropout and one fc);
- the average pools inside the blocks ignore the padding in their divisor (count_include_pad=False);
- the final pool is a global average (the paper's 8x8 average pool at 299x299).
Input 299x299; anything from 75x75 up works.
"""
import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import ConvBNReLU, register

__all__ = ["inception_resnet_v1", "inception_resnet_v2", "inception_v4"]

# Blocks of each network: (block, repeats, residual scale).
INCEPTION_V4_LAYOUT = (("InceptionA", 4), ("ReductionA", 1), ("InceptionB", 7), ("ReductionB", 1), ("InceptionC", 3))
INCEPTION_RESNET_V2_LAYOUT = (("Block35", 10, 0.17), ("Block17", 20, 0.10), ("Block8", 9, 0.20))
INCEPTION_RESNET_V1_LAYOUT = (("BlockA", 5, 0.17), ("BlockB", 10, 0.10), ("BlockC", 5, 0.20))


def conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """timm's BasicConv2d / ConvNormAct: conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding, eps=1e-3)


def avg_pool_3x3():
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Mixed3a(nn.Module):
    """Stem (Figure 3): max pool 3x3/2 | conv 3x3/2 96."""

    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = conv(64, 96, 3, stride=2)

    def forward(self, x):
        return F.concat([self.maxpool(x), self.conv(x)], axis=1)  # N x 160 x 73 x 73


class Mixed4a(nn.Module):
    """Stem (Figure 3): 1x1 64 -> 3x3 96 | 1x1 64 -> 1x7 64 -> 7x1 64 -> 3x3 96."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(conv(160, 64, 1), conv(64, 96, 3))
        self.branch1 = nn.Sequential(conv(160, 64, 1), conv(64, 64, (1, 7), padding=(0, 3)),
                                     conv(64, 64, (7, 1), padding=(3, 0)), conv(64, 96, 3))

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x)], axis=1)  # N x 192 x 71 x 71


class Mixed5a(nn.Module):
    """Stem (Figure 3): conv 3x3/2 192 | max pool 3x3/2."""

    def __init__(self):
        super().__init__()
        self.conv = conv(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.conv(x), self.maxpool(x)], axis=1)  # N x 384 x 35 x 35


class InceptionA(nn.Module):
    """35x35 block (Figure 4): 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg -> 1x1 96."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(384, 96, 1)
        self.branch1 = nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(384, 96, 1))

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)  # N x 384


class ReductionA(nn.Module):
    """35x35 -> 17x17 (Figure 7, k=192, l=224, m=256, n=384): 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m | max pool."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(conv(384, 192, 1), conv(192, 224, 3, padding=1), conv(224, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)  # N x 1024 x 17 x 17


class InceptionB(nn.Module):
    """17x17 block (Figure 5): 1x1 384 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg -> 1x1 128."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(1024, 384, 1)
        self.branch1 = nn.Sequential(conv(1024, 192, 1), conv(192, 224, (1, 7), padding=(0, 3)),
                                     conv(224, 256, (7, 1), padding=(3, 0)))
        self.branch2 = nn.Sequential(conv(1024, 192, 1), conv(192, 192, (7, 1), padding=(3, 0)),
                                     conv(192, 224, (1, 7), padding=(0, 3)), conv(224, 224, (7, 1), padding=(3, 0)),
                                     conv(224, 256, (1, 7), padding=(0, 3)))
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(1024, 128, 1))

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)  # N x 1024


class ReductionB(nn.Module):
    """17x17 -> 8x8 (Figure 8): 1x1 192 -> 3x3/2 192 | 1x1 256 -> 1x7 -> 7x1 320 -> 3x3/2 320 | max pool."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(conv(1024, 192, 1), conv(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(conv(1024, 256, 1), conv(256, 256, (1, 7), padding=(0, 3)),
                                     conv(256, 320, (7, 1), padding=(3, 0)), conv(320, 320, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)  # N x 1536 x 8 x 8


class InceptionC(nn.Module):
    """8x8 block (Figure 6): the 3x3 branches split into parallel 1x3 and 3x1 at their ends."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(1536, 256, 1)
        self.branch1_0 = conv(1536, 384, 1)
        self.branch1_1a = conv(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = conv(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = conv(1536, 384, 1)
        self.branch2_1 = conv(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = conv(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = conv(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = conv(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(1536, 256, 1))

    def forward(self, x):
        x0 = self.branch0(x)
        x1 = self.branch1_0(x)
        x1 = F.concat([self.branch1_1a(x1), self.branch1_1b(x1)], axis=1)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        x2 = F.concat([self.branch2_3a(x2), self.branch2_3b(x2)], axis=1)
        return F.concat([x0, x1, x2, self.branch3(x)], axis=1)  # N x 1536 x 8 x 8


V4_BLOCKS = {"InceptionA": InceptionA, "ReductionA": ReductionA, "InceptionB": InceptionB,
             "ReductionB": ReductionB, "InceptionC": InceptionC}


class InceptionV4(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, dropout=0.0):
        super().__init__()
        features = [conv(in_channels, 32, 3, stride=2), conv(32, 32, 3), conv(32, 64, 3, padding=1),
                    Mixed3a(), Mixed4a(), Mixed5a()]
        for name, repeats in INCEPTION_V4_LAYOUT:
            features += [V4_BLOCKS[name]() for _ in range(repeats)]
        self.features = nn.Sequential(*features)
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        # timm's head_drop: the paper keeps 80% of the units; timm's default drop_rate is 0.
        self.head_drop = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1536, num_classes)

    def forward(self, x):
        # N x 3 x 299 x 299
        x = self.features(x)
        # N x 1536 x 8 x 8 (stem 35x35x384, Reduction-A 17x17x1024, Reduction-B 8x8x1536)
        x = F.flatten(self.global_pool(x), 1)
        # N x 1536
        x = self.last_linear(self.head_drop(x))
        # N x num_classes
        return x


class ResidualInceptionBlock(nn.Module):
    """relu(x + scale * up(concat(branches(x)))): the branches' output is projected back to the
    input's depth by a linear 1x1 convolution ("up", with bias), scaled, and added."""

    def __init__(self, scale, activate=True):
        super().__init__()
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if activate else None

    def branches(self, x):
        raise NotImplementedError(type(self).__name__)

    def forward(self, x):
        out = self.conv2d(F.concat(self.branches(x), axis=1))
        out = F.add(out * self.scale, x, inplace=True)  # into the fresh product; x is left as it was
        return self.relu(out) if self.relu is not None else out


class Mixed5b(nn.Module):
    """Inception-ResNet-v2's last stem block (the released model's "Mixed_5b"): 192 -> 320 maps."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(192, 96, 1)
        self.branch1 = nn.Sequential(conv(192, 48, 1), conv(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(conv(192, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(avg_pool_3x3(), conv(192, 64, 1))

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)  # N x 320


class Block35(ResidualInceptionBlock):
    """Inception-ResNet-v2 A block, 35x35x320 (Figure 16)."""

    def __init__(self, scale=1.0):
        super().__init__(scale)
        self.branch0 = conv(320, 32, 1)
        self.branch1 = nn.Sequential(conv(320, 32, 1), conv(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(conv(320, 32, 1), conv(32, 48, 3, padding=1), conv(48, 64, 3, padding=1))
        self.conv2d = nn.Conv2d(128, 320, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Mixed6a(nn.Module):
    """Inception-ResNet-v2 Reduction-A (Figure 7, k=256, l=256, m=384, n=384): 35x35x320 -> 17x17x1088."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(conv(320, 256, 1), conv(256, 256, 3, padding=1), conv(256, 384, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)


class Block17(ResidualInceptionBlock):
    """Inception-ResNet-v2 B block, 17x17x1088 (Figure 17)."""

    def __init__(self, scale=1.0):
        super().__init__(scale)
        self.branch0 = conv(1088, 192, 1)
        self.branch1 = nn.Sequential(conv(1088, 128, 1), conv(128, 160, (1, 7), padding=(0, 3)),
                                     conv(160, 192, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(384, 1088, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class Mixed7a(nn.Module):
    """Inception-ResNet-v2 Reduction-B (Figure 18): 17x17x1088 -> 8x8x2080."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(conv(1088, 256, 1), conv(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, padding=1), conv(288, 320, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)


class Block8(ResidualInceptionBlock):
    """Inception-ResNet-v2 C block, 8x8x2080 (Figure 19); the last one has no ReLU."""

    def __init__(self, scale=1.0, no_relu=False):
        super().__init__(scale, activate=not no_relu)
        self.branch0 = conv(2080, 192, 1)
        self.branch1 = nn.Sequential(conv(2080, 192, 1), conv(192, 224, (1, 3), padding=(0, 1)),
                                     conv(224, 256, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(448, 2080, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, dropout=0.0):
        super().__init__()
        (_, n35, scale35), (_, n17, scale17), (_, n8, scale8) = INCEPTION_RESNET_V2_LAYOUT
        self.conv2d_1a = conv(in_channels, 32, 3, stride=2)
        self.conv2d_2a = conv(32, 32, 3)
        self.conv2d_2b = conv(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv(64, 80, 1)
        self.conv2d_4a = conv(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*[Block35(scale35) for _ in range(n35)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17(scale17) for _ in range(n17)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8(scale8) for _ in range(n8)])
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = conv(2080, 1536, 1)
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.head_drop = nn.Dropout(dropout)
        self.classif = nn.Linear(1536, num_classes)

    def forward(self, x):
        # N x 3 x 299 x 299
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        # N x 64 x 147 x 147
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        # N x 192 x 71 x 71
        x = self.mixed_5b(self.maxpool_5a(x))
        # N x 320 x 35 x 35
        x = self.mixed_6a(self.repeat(x))
        # N x 1088 x 17 x 17
        x = self.mixed_7a(self.repeat_1(x))
        # N x 2080 x 8 x 8
        x = self.conv2d_7b(self.block8(self.repeat_2(x)))
        # N x 1536 x 8 x 8
        x = F.flatten(self.global_pool(x), 1)
        # N x 1536
        x = self.classif(self.head_drop(x))
        # N x num_classes
        return x


class BlockA(ResidualInceptionBlock):
    """Inception-ResNet-v1 A block, 35x35x256 (Figure 10)."""

    def __init__(self, scale=1.0):
        super().__init__(scale)
        self.branch0 = conv(256, 32, 1)
        self.branch1 = nn.Sequential(conv(256, 32, 1), conv(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(conv(256, 32, 1), conv(32, 32, 3, padding=1), conv(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class ReductionAv1(nn.Module):
    """Inception-ResNet-v1 Reduction-A (Figure 7, k=192, l=192, m=256, n=384): 35x35x256 -> 17x17x896."""

    def __init__(self):
        super().__init__()
        self.branch0 = conv(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(conv(256, 192, 1), conv(192, 192, 3, padding=1), conv(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)


class BlockB(ResidualInceptionBlock):
    """Inception-ResNet-v1 B block, 17x17x896 (Figure 11)."""

    def __init__(self, scale=1.0):
        super().__init__(scale)
        self.branch0 = conv(896, 128, 1)
        self.branch1 = nn.Sequential(conv(896, 128, 1), conv(128, 128, (1, 7), padding=(0, 3)),
                                     conv(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class ReductionBv1(nn.Module):
    """Inception-ResNet-v1 Reduction-B (Figure 12): 17x17x896 -> 8x8x1792."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(conv(896, 256, 1), conv(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(conv(896, 256, 1), conv(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(conv(896, 256, 1), conv(256, 256, 3, padding=1), conv(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return F.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)


class BlockC(ResidualInceptionBlock):
    """Inception-ResNet-v1 C block, 8x8x1792 (Figure 13); the last one has no ReLU."""

    def __init__(self, scale=1.0, no_relu=False):
        super().__init__(scale, activate=not no_relu)
        self.branch0 = conv(1792, 192, 1)
        self.branch1 = nn.Sequential(conv(1792, 192, 1), conv(192, 192, (1, 3), padding=(0, 1)),
                                     conv(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class InceptionResNetV1(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, dropout=0.2, embedding_size=512):
        super().__init__()
        (_, na, scale_a), (_, nb, scale_b), (_, nc, scale_c) = INCEPTION_RESNET_V1_LAYOUT
        # The stem of Figure 14.
        self.conv2d_1a = conv(in_channels, 32, 3, stride=2)
        self.conv2d_2a = conv(32, 32, 3)
        self.conv2d_2b = conv(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv(64, 80, 1)
        self.conv2d_4a = conv(80, 192, 3)
        self.conv2d_4b = conv(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*[BlockA(scale_a) for _ in range(na)])
        self.mixed_6a = ReductionAv1()
        self.repeat_1 = nn.Sequential(*[BlockB(scale_b) for _ in range(nb)])
        self.mixed_7a = ReductionBv1()
        self.repeat_2 = nn.Sequential(*[BlockC(scale_c) for _ in range(nc)])
        self.block8 = BlockC(no_relu=True)
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.head_drop = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=1e-3)
        self.logits = nn.Linear(embedding_size, num_classes)

    def forward(self, x):
        # N x 3 x 299 x 299
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        # N x 64 x 147 x 147
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        # N x 256 x 35 x 35
        x = self.mixed_6a(self.repeat(x))
        # N x 896 x 17 x 17
        x = self.mixed_7a(self.repeat_1(x))
        # N x 1792 x 8 x 8
        x = self.block8(self.repeat_2(x))
        # N x 1792 x 8 x 8
        x = F.flatten(self.global_pool(x), 1)
        # N x 1792
        x = self.last_bn(self.last_linear(self.head_drop(x)))
        # N x 512 (the face-embedding bottleneck)
        x = self.logits(x)
        # N x num_classes
        return x


@register("inception_v4", input_shape=(3, 299, 299))
def inception_v4(**kwargs):
    """Inception-v4 (timm), 42,679,816 parameters; input N x 3 x 299 x 299."""
    return InceptionV4(**kwargs)


@register("inception_resnet_v2", input_shape=(3, 299, 299))
def inception_resnet_v2(**kwargs):
    """Inception-ResNet-v2 (timm), 55,843,464 parameters; input N x 3 x 299 x 299."""
    return InceptionResNetV2(**kwargs)


@register("inception_resnet_v1", input_shape=(3, 299, 299))
def inception_resnet_v1(**kwargs):
    """Inception-ResNet-v1 with a FaceNet-style head (osmr), 23,995,624 parameters; input N x 3 x 299 x 299."""
    return InceptionResNetV1(**kwargs)
