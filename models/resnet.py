"""ResNet: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), Table 1 (ImageNet) and section 4.2 (CIFAR-10); ResNeXt: Xie et al.,
"Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017, Table 1.

The ImageNet networks follow torchvision's `models/resnet.py` down to the state_dict keys
(`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`), so its weights load. Departures
from the paper, each named:

- torchvision is "ResNet v1.5": a bottleneck that halves the resolution puts the stride on its
  3x3 convolution; the paper put it on the first 1x1 (which then skips 3 of 4 pixels).
  `stride_in_1x1=True` restores the paper's placement (same parameters, different activations).
- The projection shortcut (the paper's option B) is used only where the shape changes, as in
  torchvision and the paper's ImageNet models; it is a 1x1 convolution followed by BatchNorm.
- `zero_init_residual=True` starts each residual branch's last BatchNorm at 0 (Goyal et al. 2017),
  an option torchvision offers; the default initialisation is torchvision's (Kaiming normal,
  fan_out, for convolutions).

The CIFAR networks (`resnet20` ... `resnet110`, depth 6n + 2) follow section 4.2: a 3x3 conv of
16 maps, three stages of n basic blocks on 32x32, 16x16, 8x8 maps with 16, 32, 64 filters, global
average pooling and a 10-way fc. Their shortcut is the paper's option A (identity; where the shape
changes, subsample by 2 and pad the new channels with zeros, no parameters) by default and option B
(1x1 projection + BatchNorm) with `shortcut="B"`. `plain20` ... `plain110` are the same stacks
without shortcuts (the paper's "plain" baselines of Fig. 6).
"""
import tinycnn.functional as F
from tinycnn import backend, nn
from tinycnn.autograd import Tensor
from tinycnn.models.common import register

__all__ = ["plain20", "plain32", "plain44", "plain56", "plain110", "resnet18", "resnet20", "resnet32", "resnet34",
           "resnet44", "resnet50", "resnet56", "resnet101", "resnet110", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d"]

# Table 1: blocks per stage (conv2_x .. conv5_x) and the block type.
IMAGENET_CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)

# Section 4.2: n blocks per stage for depth 6n + 2, stages of 16, 32, 64 filters.
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_PLANES = (16, 32, 64)


def conv3x3(in_channels, out_channels, stride=1, groups=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class Downsample(nn.Sequential):
    """The shortcut of a block that changes the shape: 1x1 conv (strided) -> BatchNorm2d, as
    torchvision's `downsample` (keys downsample.0, downsample.1); the two are one kernel call in
    inference (nn.conv_bn_relu)."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return nn.conv_bn_relu(self[0], self[1], None, x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    groups, base_width and stride_in_1x1 exist so both block types take the same arguments; a
    basic block has one stride to place and no bottleneck width.
    """

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, downsample=None, groups=1, base_width=64,
                 stride_in_1x1=False):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock: only groups=1 and base_width=64 are defined, got {groups}, {base_width}")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = nn.conv_bn_relu(self.conv1, self.bn1, self.relu, x)  # relu(bn1(conv1(x))), one call in inference
        # relu(bn2(conv2(out)) + identity)
        return nn.conv_bn_relu(self.conv2, self.bn2, self.relu, out, residual=identity)


class Bottleneck(nn.Module):
    """1x1 (reduce to width) -> 3x3 (width, grouped for ResNeXt) -> 1x1 (expand to 4 * planes)."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, downsample=None, groups=1, base_width=64,
                 stride_in_1x1=False):
        super().__init__()
        # ResNeXt's cardinality C and bottleneck width d: C groups of d channels (32x4d: width 128
        # in the first stage); plain ResNet has C = 1, d = 64, so width = planes.
        width = int(planes * (base_width / 64.0)) * groups
        # v1.5 (torchvision) strides in the 3x3; the paper (v1) strides in the first 1x1.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = nn.conv_bn_relu(self.conv1, self.bn1, self.relu, x)  # relu(bn1(conv1(x))), one call in inference
        out = nn.conv_bn_relu(self.conv2, self.bn2, self.relu, out)
        # relu(bn3(conv3(out)) + identity)
        return nn.conv_bn_relu(self.conv3, self.bn3, self.relu, out, residual=identity)


class ResNet(nn.Module):
    """torchvision's ResNet / ResNeXt: stem, four stages (layer1..layer4), global pool, fc."""

    def __init__(self, block, layers, num_classes=1000, in_channels=3, groups=1, width_per_group=64,
                 zero_init_residual=False, stride_in_1x1=False):
        super().__init__()
        self.groups = groups
        self.base_width = width_per_group
        self.stride_in_1x1 = stride_in_1x1
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for index, (planes, blocks, stride) in enumerate(zip(STAGE_PLANES, layers, STAGE_STRIDES)):
            setattr(self, f"layer{index + 1}", self._make_layer(block, planes, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                last_bn = module.bn3 if isinstance(module, Bottleneck) else (
                    module.bn2 if isinstance(module, BasicBlock) else None)
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Downsample(self.inplanes, planes * block.expansion, stride)
        options = dict(groups=self.groups, base_width=self.base_width, stride_in_1x1=self.stride_in_1x1)
        layers = [block(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        # N x 3 x 224 x 224
        x = nn.conv_bn_relu(self.conv1, self.bn1, self.relu, x)  # relu(bn1(conv1(x))), one call in inference
        # N x 64 x 112 x 112
        x = self.maxpool(x)
        # N x 64 x 56 x 56
        x = self.layer1(x)
        # N x 64 x 56 x 56 (N x 256 x 56 x 56 with bottlenecks)
        x = self.layer2(x)
        # N x 128 x 28 x 28 (512)
        x = self.layer3(x)
        # N x 256 x 14 x 14 (1024)
        x = self.layer4(x)
        # N x 512 x 7 x 7 (2048)
        x = F.flatten(self.avgpool(x), 1)
        # N x 512 (2048)
        x = self.fc(x)
        # N x num_classes
        return x


class ZeroPadShortcut(nn.Module):
    """Option A: keep every other pixel and append zero channels, x -> [x[:, :, ::2, ::2], 0].
    No parameters; the zero channels receive no gradient."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]  # N x C_in x H/2 x W/2
        N, C, H, W = x.shape
        xp = backend.get_array_module(x.data)
        zeros = Tensor(xp.zeros((N, self.extra_channels, H, W), dtype=x.dtype))
        return F.concat([x, zeros], axis=1)  # N x C_out x H/2 x W/2


class CifarBasicBlock(nn.Module):
    """Section 4.2's block: two 3x3 convolutions with BatchNorm; shortcut "A", "B" or None (plain)."""

    def __init__(self, in_channels, planes, stride=1, shortcut="A"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.has_shortcut = shortcut is not None
        if shortcut is None or (stride == 1 and in_channels == planes):
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_channels, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(conv1x1(in_channels, planes, stride), nn.BatchNorm2d(planes))
        else:
            raise ValueError(f"CifarBasicBlock: shortcut must be 'A', 'B' or None, got {shortcut!r}")

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.has_shortcut:
            out = F.add(out, self.shortcut(x), inplace=True)
        return self.relu(out)


class CifarResNet(nn.Module):
    """The 6n + 2 layer CIFAR-10 ResNet of section 4.2 (plain when shortcut=None)."""

    def __init__(self, depth, num_classes=10, in_channels=3, shortcut="A"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, CIFAR_PLANES[0])
        self.bn1 = nn.BatchNorm2d(CIFAR_PLANES[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = CIFAR_PLANES[0]
        for index, planes in enumerate(CIFAR_PLANES):
            stride = 1 if index == 0 else 2
            blocks = [CifarBasicBlock(in_planes, planes, stride, shortcut)]
            blocks += [CifarBasicBlock(planes, planes, 1, shortcut) for _ in range(1, n)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(CIFAR_PLANES[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        # N x 3 x 32 x 32
        x = self.relu(self.bn1(self.conv1(x)))
        # N x 16 x 32 x 32
        x = self.layer1(x)
        # N x 16 x 32 x 32
        x = self.layer2(x)
        # N x 32 x 16 x 16
        x = self.layer3(x)
        # N x 64 x 8 x 8
        x = F.flatten(self.avgpool(x), 1)
        # N x 64
        x = self.fc(x)
        # N x num_classes
        return x


def _resnet(depth, **kwargs):
    kind, layers = IMAGENET_CONFIGS[depth]
    return ResNet(BasicBlock if kind == "basic" else Bottleneck, layers, **kwargs)


@register("resnet18")
def resnet18(**kwargs):
    """ResNet-18 (torchvision), 11,689,512 parameters at 1000 classes."""
    return _resnet(18, **kwargs)


@register("resnet34")
def resnet34(**kwargs):
    """ResNet-34 (torchvision), 21,797,672 parameters."""
    return _resnet(34, **kwargs)


@register("resnet50")
def resnet50(**kwargs):
    """ResNet-50 v1.5 (torchvision), 25,557,032 parameters; stride_in_1x1=True for the paper's v1."""
    return _resnet(50, **kwargs)


@register("resnet101")
def resnet101(**kwargs):
    """ResNet-101 v1.5 (torchvision), 44,549,160 parameters."""
    return _resnet(101, **kwargs)


@register("resnet152")
def resnet152(**kwargs):
    """ResNet-152 v1.5 (torchvision), 60,192,808 parameters."""
    return _resnet(152, **kwargs)


@register("resnext50_32x4d")
def resnext50_32x4d(**kwargs):
    """ResNeXt-50 32x4d (torchvision), 25,028,904 parameters: 32 groups of 4 channels in stage 1."""
    return ResNet(Bottleneck, IMAGENET_CONFIGS[50][1], groups=32, width_per_group=4, **kwargs)


@register("resnext101_32x8d")
def resnext101_32x8d(**kwargs):
    """ResNeXt-101 32x8d (torchvision), 88,791,336 parameters."""
    return ResNet(Bottleneck, IMAGENET_CONFIGS[101][1], groups=32, width_per_group=8, **kwargs)


# The CIFAR-10 networks of section 4.2: depth 6n + 2 for n = 3, 5, 7, 9, 18, each with shortcuts
# (ResNet) and without (the plain net of Fig. 6). One factory per name, written out, so each can
# be found and read; the input is N x 3 x 32 x 32 (in_channels=1 for 28 x 28 MNIST digits).


@register("resnet20", (3, 32, 32))
def resnet20(num_classes=10, in_channels=3, shortcut="A"):
    """CIFAR ResNet-20 (section 4.2), shortcut option 'A' (default) or 'B'."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("plain20", (3, 32, 32))
def plain20(num_classes=10, in_channels=3):
    """CIFAR plain-20: ResNet-20's layers without shortcuts (Fig. 6)."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels, shortcut=None)


@register("resnet32", (3, 32, 32))
def resnet32(num_classes=10, in_channels=3, shortcut="A"):
    """CIFAR ResNet-32 (section 4.2), shortcut option 'A' (default) or 'B'."""
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("plain32", (3, 32, 32))
def plain32(num_classes=10, in_channels=3):
    """CIFAR plain-32: ResNet-32's layers without shortcuts (Fig. 6)."""
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels, shortcut=None)


@register("resnet44", (3, 32, 32))
def resnet44(num_classes=10, in_channels=3, shortcut="A"):
    """CIFAR ResNet-44 (section 4.2), shortcut option 'A' (default) or 'B'."""
    return CifarResNet(44, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("plain44", (3, 32, 32))
def plain44(num_classes=10, in_channels=3):
    """CIFAR plain-44: ResNet-44's layers without shortcuts (Fig. 6)."""
    return CifarResNet(44, num_classes=num_classes, in_channels=in_channels, shortcut=None)


@register("resnet56", (3, 32, 32))
def resnet56(num_classes=10, in_channels=3, shortcut="A"):
    """CIFAR ResNet-56 (section 4.2), shortcut option 'A' (default) or 'B'."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("plain56", (3, 32, 32))
def plain56(num_classes=10, in_channels=3):
    """CIFAR plain-56: ResNet-56's layers without shortcuts (Fig. 6)."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels, shortcut=None)


@register("resnet110", (3, 32, 32))
def resnet110(num_classes=10, in_channels=3, shortcut="A"):
    """CIFAR ResNet-110 (section 4.2), shortcut option 'A' (default) or 'B'."""
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("plain110", (3, 32, 32))
def plain110(num_classes=10, in_channels=3):
    """CIFAR plain-110: ResNet-110's layers without shortcuts (Fig. 6)."""
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels, shortcut=None)
