"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", CVPR 2015
(arXiv:1409.4842), Table 1 and section 5.

An Inception block runs four branches side by side on the same input and concatenates their maps:
a 1x1 convolution; a 1x1 "reduce" then a 3x3; a 1x1 reduce then a 5x5; a 3x3 max pool (stride 1)
then a 1x1 "pool proj". The 1x1 reductions keep the 3x3 and 5x5 convolutions cheap. Two auxiliary
classifiers on the outputs of 4a and 4d add 0.3 x their loss during training and are dropped at
inference (section 5).

Two variants:

- `googlenet_paper()`: the publication as BVLC Caffe's `bvlc_googlenet` realises it (6,998,552
  parameters without the auxiliary heads, 13,378,280 with them): convolutions with biases and
  ReLUs, no BatchNorm, real 5x5 convolutions, local response normalisation after pool1 and after
  conv2's 3x3 (Caffe's constants: size 5, alpha 1e-4 divided by the size, beta 0.75, k 1; the paper
  names LRN in Figure 3 without constants), max pools rounding up (Caffe's ceil mode, which gives
  Table 1's 56/28/14/7 sizes), 7x7 average pool, dropout 0.4. Aux heads: 5x5/3 average pool,
  1x1 conv 128, fc 1024, dropout 0.7, fc.
- `googlenet()`: torchvision's layout (6,624,904 parameters, 13,004,888 with aux heads), whose
  state_dict keys (`conv1.conv.weight`, `inception3a.branch2.1.bn.running_var`, `aux1.fc2.bias`,
  ...) match so its weights load. It departs from the paper: every convolution is conv (no bias)
  + BatchNorm (eps 1e-3) + ReLU; there is no LRN; the "5x5" branch is a 3x3 convolution (a bug
  kept for weight compatibility, torchvision issue #906); the last max pool is 2x2; dropout 0.2;
  the aux heads use an adaptive 4x4 average pool; and `transform_input=True` (set by torchvision
  for its pretrained weights) maps ImageNet-normalised input to the [-1, 1] scaling those weights
  were trained with.

Both return, in training mode with aux heads, `ModelOutputs(logits, aux_logits=(aux1, aux2))` and
carry `aux_loss_weight = 0.3`; the loss is loss(logits) + 0.3 * (loss(aux1) + loss(aux2)). In eval
mode, or built with `aux_logits=False`, they return the logits tensor.

`paper_table_summary()` recomputes Table 1's "params" and "ops" columns on `googlenet_paper` (see
its docstring for the three rows where the printed figures differ). As in the paper (Szegedy et
al., section 5 and Figure 2(b)), the fourth branch of an Inception module is a 3x3 max pool
followed by the 1x1 "pool proj" convolution, the third branch a 1x1 reduction followed by a real
5x5 convolution, and each branch has its own width from Table 1.
"""
from collections import OrderedDict, namedtuple

import tinycnn.functional as F
from tinycnn import nn
from tinycnn.summary import summary
from tinycnn.models.common import ConvBNReLU, ModelOutputs, imagenet_to_tf_input, register

__all__ = ["googlenet", "googlenet_paper"]

# Table 1's inception rows, in the paper's column order:
# (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION_TABLE = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)
# A max pool (3x3/2) follows these blocks.
POOL_AFTER = ("3b", "4e")

# Table 1 as printed: (row, output size, "params" in K = 1024 weights, "ops" in millions of
# multiply-adds), and the modules of googlenet_paper that make up each row.
PaperRow = namedtuple("PaperRow", ["row", "output_size", "params_k", "ops_m", "modules"])
PAPER_TABLE = (
    PaperRow("conv 7x7/2", "112x112x64", 2.7, 34, ("conv1",)),
    PaperRow("conv 1x1 + 3x3", "56x56x192", 112, 360, ("conv2", "conv3")),
    PaperRow("inception (3a)", "28x28x256", 159, 128, ("inception3a",)),
    PaperRow("inception (3b)", "28x28x480", 380, 304, ("inception3b",)),
    PaperRow("inception (4a)", "14x14x512", 364, 73, ("inception4a",)),
    PaperRow("inception (4b)", "14x14x512", 437, 88, ("inception4b",)),
    PaperRow("inception (4c)", "14x14x512", 463, 100, ("inception4c",)),
    PaperRow("inception (4d)", "14x14x528", 580, 119, ("inception4d",)),
    PaperRow("inception (4e)", "14x14x832", 840, 170, ("inception4e",)),
    PaperRow("inception (5a)", "7x7x832", 1072, 54, ("inception5a",)),
    PaperRow("inception (5b)", "7x7x1024", 1388, 71, ("inception5b",)),
    PaperRow("linear", "1x1x1000", 1000, 1, ("fc",)),
)
# A computed figure "agrees" with the printed one within this relative difference; every row but
# three agrees within 2%, and those three differ by 5% or more.
PAPER_TOLERANCE = 0.03

TableRow = namedtuple("TableRow", ["row", "weights", "macs", "paper_params_k", "paper_ops_m", "agrees"])


def conv_relu(in_channels, out_channels, kernel_size, padding=0, stride=1):
    """The paper's (Caffe's) convolution: with bias, followed by ReLU."""
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)),
        ("relu", nn.ReLU(inplace=True)),
    ]))


def conv_bn_relu(in_channels, out_channels, kernel_size, padding=0, stride=1):
    """torchvision's BasicConv2d: conv without bias, BatchNorm with eps 1e-3, ReLU."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding, eps=1e-3)


class Inception(nn.Module):
    """Four branches concatenated along the channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | pool -> 1x1.

    `conv` builds a convolution unit (conv_relu or conv_bn_relu); `kernel_5x5` is 5 in the paper
    and 3 in torchvision's layout.
    """

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, conv=conv_relu,
                 kernel_5x5=5):
        super().__init__()
        self.branch1 = conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv(in_channels, ch5x5red, 1),
                                     conv(ch5x5red, ch5x5, kernel_5x5, padding=kernel_5x5 // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return F.concat(branches, axis=1)  # N x (ch1x1 + ch3x3 + ch5x5 + pool_proj) x H x W


class InceptionAux(nn.Module):
    """Auxiliary classifier: average pool to 4x4, 1x1 conv 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, in_channels, num_classes, conv=conv_relu, pool=None, dropout=0.7):
        super().__init__()
        # The paper pools 5x5 with stride 3 (14x14 -> 4x4); torchvision pools adaptively to 4x4.
        self.pool = pool if pool is not None else nn.AvgPool2d(5, stride=3)
        self.conv = conv(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        # N x 512 x 14 x 14 (aux1) or N x 528 x 14 x 14 (aux2)
        x = self.conv(self.pool(x))
        # N x 128 x 4 x 4
        x = F.relu(self.fc1(F.flatten(x, 1)), inplace=True)
        # N x 1024
        x = self.fc2(self.dropout(x))
        # N x num_classes
        return x


class GoogLeNet(nn.Module):
    """Both variants; `variant` is "paper" or "torchvision" (see the module docstring)."""

    aux_loss_weight = 0.3

    def __init__(self, num_classes=1000, in_channels=3, aux_logits=True, variant="paper", transform_input=False,
                 dropout=None, dropout_aux=0.7):
        super().__init__()
        if variant not in ("paper", "torchvision"):
            raise ValueError(f"GoogLeNet: variant must be 'paper' or 'torchvision', got {variant!r}")
        if transform_input and in_channels != 3:
            raise ValueError(f"GoogLeNet: transform_input needs 3 input channels, got {in_channels}")
        paper = variant == "paper"
        conv = conv_relu if paper else conv_bn_relu
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = conv(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if paper else None
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if paper else None
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        channels = 192
        for name, *widths in INCEPTION_TABLE:
            block = Inception(channels, *widths, conv=conv, kernel_5x5=5 if paper else 3)
            setattr(self, f"inception{name}", block)
            channels = block.out_channels
            if name == "3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif name == "4e":
                self.maxpool4 = (nn.MaxPool2d(3, stride=2, ceil_mode=True) if paper
                                 else nn.MaxPool2d(2, stride=2, ceil_mode=True))

        if aux_logits:
            aux_pool = None if paper else nn.AdaptiveAvgPool2d((4, 4))
            self.aux1 = InceptionAux(512, num_classes, conv, aux_pool, dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, conv, aux_pool, dropout_aux)
        else:
            self.aux1 = self.aux2 = None
        # The paper averages over 7x7 (a 224 input); the adaptive pool equals it there.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout if dropout is not None else (0.4 if paper else 0.2))
        self.fc = nn.Linear(1024, num_classes)
        if not paper:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(module.weight, mean=0.0, std=0.01, a=-2, b=2)

    def forward(self, x):
        if self.transform_input:
            x = imagenet_to_tf_input(x)
        # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))
        # N x 64 x 56 x 56
        if self.lrn1 is not None:
            x = self.lrn1(x)
        x = self.conv3(self.conv2(x))
        # N x 192 x 56 x 56
        if self.lrn2 is not None:
            x = self.lrn2(x)
        x = self.maxpool2(x)
        # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14
        x = self.inception4a(x)
        # N x 512 x 14 x 14
        use_aux = self.aux1 is not None and self.training
        aux1 = self.aux1(x) if use_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        # N x 528 x 14 x 14
        aux2 = self.aux2(x) if use_aux else None
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))
        # N x 1024 x 7 x 7
        x = F.flatten(self.avgpool(x), 1)
        # N x 1024
        x = self.fc(self.dropout(x))
        # N x num_classes
        if use_aux:
            return ModelOutputs(x, (aux1, aux2))
        return x


@register("googlenet_paper")
def googlenet_paper(**kwargs):
    """GoogLeNet as published (Caffe's bvlc_googlenet), 13,378,280 parameters with the aux heads
    (6,998,552 with aux_logits=False); input N x 3 x 224 x 224."""
    return GoogLeNet(variant="paper", **kwargs)


@register("googlenet")
def googlenet(**kwargs):
    """torchvision's GoogLeNet, 13,004,888 parameters with the aux heads (6,624,904 without)."""
    return GoogLeNet(variant="torchvision", **kwargs)


def paper_table_summary(print_table=False):
    """Table 1's "params" and "ops" recomputed on googlenet_paper at 224x224, one TableRow per row.

    weights: the row's convolution/fc weights without biases (the paper's "params"); macs: its
    multiply-adds. `agrees` is False where the printed figure (params in units of 1024, ops in
    millions) is more than PAPER_TOLERANCE away from the computed one. Three rows differ:
    "conv 7x7/2" (9,408 weights and 118.0M MACs against 2.7K and 34M), "inception (4c)" (509,440 against 463K) and
    "inception (5a)" (1,042,432 and 51.1M against 1072K and 54M).
    """
    model = googlenet_paper(aux_logits=False)
    modules = dict(model.named_modules())
    result = summary(model, (3, 224, 224), print_table=False)
    table = []
    for row in PAPER_TABLE:
        weights = macs = 0
        for layer in result.rows:
            if layer.name.split(".")[0] in row.modules and layer.type in ("Conv2d", "Linear"):
                weights += modules[layer.name].weight.size
                macs += layer.macs
        agrees = (abs(weights / 1024 - row.params_k) <= PAPER_TOLERANCE * row.params_k
                  and abs(macs / 1e6 - row.ops_m) <= PAPER_TOLERANCE * row.ops_m)
        table.append(TableRow(row.row, weights, macs, row.params_k, row.ops_m, agrees))
    if print_table:
        print(f"{'row':<16} {'weights':>10} {'paper':>7} {'MACs':>8} {'paper':>6}")
        for r in table:
            mark = "" if r.agrees else "  <- differs from the paper"
            print(f"{r.row:<16} {r.weights:>10,} {r.paper_params_k:>6}K {r.macs / 1e6:>7.1f}M "
                  f"{r.paper_ops_m:>5}M{mark}")
    return table
