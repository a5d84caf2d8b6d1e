"""PyTorch twins of the zoo's CIFAR networks and DenseNet-264, written from the papers.

- CIFAR ResNet-20/32/44/56/110 and their plain counterparts: He et al. 2016, section 4.2;
- CIFAR DenseNet-BC (L=100, k=12): Huang et al. 2017, section 3 and 4, from torchvision's own
  dense layer and transition (they are the paper's BN-ReLU-1x1-BN-ReLU-3x3 and BN-ReLU-1x1-pool);
- DenseNet-264: Table 1 (blocks 6-12-64-48, k=32), built with torchvision's DenseNet class.

Module names make `state_dict()` keys equal tinycnn's (torchvision's names where they exist).
"""
from collections import OrderedDict

from torch import nn
from torch.nn import functional as F

from torchvision_models import torchvision_models


class CifarBasicBlock(nn.Module):
    """Two 3x3 convolutions, BatchNorm after each, ReLU after the first and after the addition
    (section 3.2 and Fig. 2; BN right after each convolution and before activation, section 3.4).
    Option A shortcut (section 4.2): identity, and where the maps halve and the channels double,
    take every second pixel and pad the new channels with zeros (no parameters). `residual=False`
    drops the shortcut: the "plain" baseline of Fig. 6."""

    def __init__(self, in_channels, channels, stride, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride, self.extra_channels, self.residual = stride, channels - in_channels, residual

    def shortcut(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # zeros after the existing channels

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """Section 4.2: 3x3 conv of 16 maps; 3 stages of n blocks on 32/16/8 maps with 16/32/64
    filters (stride 2 in the first conv of stages 2 and 3); global average pool; 10-way fc.
    Depth 6n + 2."""

    def __init__(self, n, residual=True, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_channels = 16
        for stage, (channels, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for index in range(n):
                blocks.append(CifarBasicBlock(in_channels, channels, stride if index == 0 else 1, residual))
                in_channels = channels
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        x = self.layer3(self.layer2(self.layer1(x)))  # N x 64 x 8 x 8
        return self.fc(x.mean(dim=(2, 3)))


class DenseNetBC100(nn.Module):
    """Section 4 (CIFAR): before the first dense block a 3x3 convolution with 2k output maps; three
    dense blocks of (L - 4) / 6 = 16 bottleneck layers (1x1 conv of 4k maps, 3x3 conv of k, each
    after BN-ReLU, section 3 "Bottleneck layers"); transitions BN-ReLU-1x1 conv to theta * m maps
    (theta = 0.5, "Compression") and 2x2 average pool; after the last block BN-ReLU, global average
    pooling and the classifier."""

    def __init__(self, growth_rate=12, depth=100, classes=10):
        super().__init__()
        densenet = torchvision_models().densenet
        layers_per_block = (depth - 4) // 6
        channels = 2 * growth_rate
        features = OrderedDict(conv0=nn.Conv2d(3, channels, 3, padding=1, bias=False))
        for block in range(1, 4):
            features[f"denseblock{block}"] = densenet._DenseBlock(
                layers_per_block, channels, bn_size=4, growth_rate=growth_rate, drop_rate=0.0)
            channels += layers_per_block * growth_rate
            if block < 3:
                features[f"transition{block}"] = densenet._Transition(channels, channels // 2)
                channels //= 2
        features["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(features)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.features(x))  # N x 342 x 8 x 8
        return self.classifier(x.mean(dim=(2, 3)))


def densenet264(classes=1000):
    """Table 1's DenseNet-264: k = 32, 64 stem maps, dense blocks of 6, 12, 64 and 48 layers."""
    return torchvision_models().DenseNet(growth_rate=32, block_config=(6, 12, 64, 48),
                                         num_init_features=64, num_classes=classes)
