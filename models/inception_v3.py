"""Inception v3: Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, "Rethinking the Inception Architecture
for Computer Vision", CVPR 2016 (arXiv:1512.00567), Table 1 and Figures 5-7.

The paper's design rules made concrete: factorise a 5x5 convolution into two 3x3 (Figure 5,
InceptionA here), an n x n into 1 x n then n x 1 (Figure 6, InceptionC with n = 7), expand the
coarsest grid with parallel 1x3 and 3x1 branches (Figure 7, InceptionE), and shrink the grid with
stride-2 convolutions running beside a stride-2 pool (Figure 10, InceptionB and InceptionD) instead
of pooling first. One auxiliary classifier on the 17x17 grid acts as a regulariser.

The layout is torchvision's `models/inception.py` (27,161,264 parameters with the aux head,
23,834,568 without), with its state_dict keys (`Conv2d_1a_3x3.conv.weight`, `Mixed_6e.branch7x7_2.bn.
running_mean`, `AuxLogits.fc.weight`, ...), so its (TensorFlow-ported) weights load. Departures from
the paper, as torchvision:
- every convolution is conv (no bias) + BatchNorm (eps 1e-3) + ReLU, also in the aux head (the
  paper's "BN-auxiliary" of section 7 normalises only the aux fc layer);
- the stem follows the released TensorFlow model (3x3/2 32, 3x3 32, 3x3 64 padded, pool, 1x1 80,
  3x3 192, pool) where Table 1 lists a 3x3 conv 80 and 3x3/2 192 conv where the model pools;
- the 35x35 blocks have a 5x5 branch (1x1 48 -> 5x5 64) beside the factorised double 3x3;
- average pools inside the blocks count the zero padding in their divisor (count_include_pad);
- input 299x299 as Table 1; in eval mode, or with aux_logits=False, anything from 75x75 works, but
  in training mode the aux head's 5x5/3 pool and 5x5 conv need the 17x17 grid of a 299x299 input.
- `transform_input=True` (torchvision sets it for the pretrained weights) maps ImageNet-normalised
  input to the [-1, 1] scaling of the TensorFlow weights.

In training mode with the aux head the network returns `ModelOutputs(logits, aux_logits=(aux,))`;
`aux_loss_weight = 0.4` is the weight of PyTorch's fine-tuning tutorial (the paper states none). In
eval mode it returns the logits.
"""
import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import ConvBNReLU, ModelOutputs, imagenet_to_tf_input, register

__all__ = ["inception_v3"]

# The network's grid stages, as in Table 1 (input 299): (block name, block type, in channels,
# argument): pool_features for A, channels_7x7 for C.
BLOCKS = (
    ("Mixed_5b", "A", 192, 32),
    ("Mixed_5c", "A", 256, 64),
    ("Mixed_5d", "A", 288, 64),
    ("Mixed_6a", "B", 288, None),
    ("Mixed_6b", "C", 768, 128),
    ("Mixed_6c", "C", 768, 160),
    ("Mixed_6d", "C", 768, 160),
    ("Mixed_6e", "C", 768, 192),
    ("Mixed_7a", "D", 768, None),
    ("Mixed_7b", "E", 1280, None),
    ("Mixed_7c", "E", 2048, None),
)


def conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding, eps=1e-3)


class InceptionA(nn.Module):
    """35x35 block (Figure 5): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = conv(in_channels, 64, 1)
        self.branch5x5_1 = conv(in_channels, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.branch_pool = conv(in_channels, pool_features, 1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return F.concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=1)  # N x (224 + pool) x H x W


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Figure 10): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = conv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, 3, stride=2)
        return F.concat([branch3x3, branch3x3dbl, branch_pool], axis=1)  # N x (480 + C) x H/2 x W/2


class InceptionC(nn.Module):
    """17x17 block (Figure 6, n = 7): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | pool -> 1x1."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = conv(in_channels, 192, 1)
        self.branch7x7_1 = conv(in_channels, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(in_channels, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv(in_channels, 192, 1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return F.concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=1)  # N x 768 x H x W


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = conv(in_channels, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(in_channels, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, 3, stride=2)
        return F.concat([branch3x3, branch7x7x3, branch_pool], axis=1)  # N x (512 + C) x H/2 x W/2


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Figure 7): the 3x3 branches end in parallel 1x3 and 3x1."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = conv(in_channels, 320, 1)
        self.branch3x3_1 = conv(in_channels, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(in_channels, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv(in_channels, 192, 1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = F.concat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], axis=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = F.concat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], axis=1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return F.concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=1)  # N x 2048 x H x W


class InceptionAux(nn.Module):
    """Aux classifier on the 17x17 grid: avg pool 5x5/3, 1x1 conv 128, 5x5 conv 768, fc."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv0 = conv(in_channels, 128, 1)
        self.conv1 = conv(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x):
        # N x 768 x 17 x 17
        x = self.conv0(F.avg_pool2d(x, 5, stride=3))
        # N x 128 x 5 x 5
        x = self.conv1(x)
        # N x 768 x 1 x 1
        x = F.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        # N x 768
        return self.fc(x)


BLOCK_TYPES = {"A": InceptionA, "B": InceptionB, "C": InceptionC, "D": InceptionD, "E": InceptionE}


class Inception3(nn.Module):
    aux_loss_weight = 0.4

    def __init__(self, num_classes=1000, in_channels=3, aux_logits=True, transform_input=False, dropout=0.5):
        super().__init__()
        if transform_input and in_channels != 3:
            raise ValueError(f"Inception3: transform_input needs 3 input channels, got {in_channels}")
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = conv(in_channels, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        for name, kind, channels, argument in BLOCKS:
            block = BLOCK_TYPES[kind]
            setattr(self, name, block(channels, argument) if argument is not None else block(channels))
            if name == "Mixed_6e":
                # Registered here so the state_dict lists AuxLogits between Mixed_6e and Mixed_7a,
                # in torchvision's order.
                self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.1, a=-2, b=2)
        if aux_logits:
            # torchvision's smaller scales for the aux head's 5x5 conv and fc.
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, mean=0.0, std=0.001, a=-2, b=2)

    def forward(self, x):
        if self.transform_input:
            x = imagenet_to_tf_input(x)
        # N x 3 x 299 x 299
        x = self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))
        # N x 32 x 147 x 147
        x = self.maxpool1(self.Conv2d_2b_3x3(x))
        # N x 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        # N x 192 x 71 x 71
        x = self.maxpool2(x)
        # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        # N x 288 x 35 x 35
        x = self.Mixed_6a(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        # N x 768 x 17 x 17
        use_aux = self.AuxLogits is not None and self.training
        aux = self.AuxLogits(x) if use_aux else None
        x = self.Mixed_7a(x)
        # N x 1280 x 8 x 8
        x = self.Mixed_7c(self.Mixed_7b(x))
        # N x 2048 x 8 x 8
        x = F.flatten(self.dropout(self.avgpool(x)), 1)
        # N x 2048
        x = self.fc(x)
        # N x num_classes
        if use_aux:
            return ModelOutputs(x, (aux,))
        return x


@register("inception_v3", input_shape=(3, 299, 299))
def inception_v3(**kwargs):
    """Inception v3 (torchvision), 27,161,264 parameters with the aux head (23,834,568 with
    aux_logits=False); input N x 3 x 299 x 299."""
    return Inception3(**kwargs)
