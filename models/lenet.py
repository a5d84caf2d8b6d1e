"""LeNet: LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998
(LeNet-5, section II.B and Table I), and the two LeNets people train on MNIST today.

Three networks:

- `lenet()` (default "lenet"): the Caffe MNIST example (`examples/mnist/lenet.prototxt`),
  28x28 input, conv 5x5 20 -> max pool 2/2 -> conv 5x5 50 -> max pool 2/2 -> fc 500 -> ReLU -> fc 10;
  431,080 parameters. As in Caffe there is no nonlinearity after the convolutions (the max pools
  and the one ReLU suffice); `conv_relu=True` adds a ReLU after each convolution.
- `lenet5()`: the 1998 network as the paper describes it (32x32 input):
  C1 6@5x5 -> S2 -> C3 16@5x5 over the partial connection table below -> S4 -> C5 120@5x5 -> F6 84
  -> 10 Euclidean RBF units; 60,000 trainable parameters. Departures, each an argument:
    * the subsampling layers S2/S4 add the four inputs of a 2x2 field, multiply by a trainable
      coefficient, add a trainable bias (one of each per map) and squash; the paper's squashing
      function is its scaled tanh f(a) = 1.7159 tanh(2a/3) (Appendix A), used everywhere by default;
      `subsampling_activation="sigmoid"` uses the logistic sigmoid in S2/S4 instead;
    * the RBF parameter vectors are fixed +-1 codes drawn on a 7x12 bitmap (Fig. 3). The paper
      prints its bitmaps only as a figure, so the ones below (`RBF_BITMAPS`) are our own drawing of
      the ten digits in that style. They are a buffer, not a Parameter: fixed, as in the paper;
    * the RBF layer outputs the penalties y_i = sum_j (x_j - w_ij)^2 (smaller is better); the
      network returns -y_i, so that argmax gives the class and softmax cross-entropy on -y is the
      paper's MAP criterion (eq. 9) without its "rubbish class" constant;
    * `head="linear"` replaces the RBF units by a trainable fc 84 -> num_classes (+850 parameters);
    * `padding=2` zero-pads a 28x28 MNIST image to the paper's 32x32 input (the paper makes the
      input larger than the digits so that stroke end-points and corners can fall in the centre
      of the receptive fields of the highest-level feature detectors).
- `lenet_d2l()`: Dive into Deep Learning's version (6-16-120-84, sigmoid, average pooling, conv1
  padded by 2 so a 28x28 input works); 61,706 parameters.

Much code called "LeNet-5" is a modern network under the 1998 name (ReLU, max pooling, 20-50-500
or 32-64-100 filters, a fully connected C3, softmax output); `lenet5` here follows the paper's
section II.B and Table I, and `lenet` is the Caffe network such code approximates.
"""
import numpy

import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import register

__all__ = ["lenet", "lenet5", "lenet_d2l"]

# Table I: which S2 maps (rows of the paper's table, here the tuple entries) each of the 16 C3 maps
# sees. Maps 0-5 see 3 contiguous maps, 6-11 see 4 contiguous, 12-14 see 4 non-contiguous, 15 sees
# all 6 (60 input maps in all).
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

# The 1998 layers: (name, maps, kernel) as in section II.B.
LENET5_TABLE = (
    ("C1", 6, 5), ("S2", 6, 2), ("C3", 16, 5), ("S4", 16, 2), ("C5", 120, 5), ("F6", 84, None),
)

# Caffe's MNIST LeNet: (conv channels, conv channels, fc width).
LENET_CAFFE = (20, 50, 500)

# Our drawing of the 7-wide, 12-tall RBF codes (Fig. 3): '#' is +1, '.' is -1.
RBF_BITMAPS = {
    0: ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),
    1: ("...#...", "..##...", ".#.#...", "...#...", "...#...", "...#...",
        "...#...", "...#...", "...#...", "...#...", "...#...", ".#####."),
    2: (".####..", "#....#.", "......#", "......#", ".....#.", "....#..",
        "...#...", "..#....", ".#.....", "#......", "#......", "#######"),
    3: (".#####.", "#.....#", "......#", "......#", ".....#.", "..###..",
        ".....#.", "......#", "......#", "......#", "#.....#", ".#####."),
    4: (".....#.", "....##.", "...#.#.", "..#..#.", ".#...#.", "#....#.",
        "#######", ".....#.", ".....#.", ".....#.", ".....#.", ".....#."),
    5: ("#######", "#......", "#......", "#......", "#####..", ".....#.",
        "......#", "......#", "......#", "......#", "#....#.", ".####.."),
    6: ("..####.", ".#.....", "#......", "#......", "#.###..", "##...#.",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),
    7: ("#######", "......#", ".....#.", ".....#.", "....#..", "....#..",
        "...#...", "...#...", "..#....", "..#....", "..#....", "..#...."),
    8: (".#####.", "#.....#", "#.....#", "#.....#", ".#...#.", "..###..",
        ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#", ".#####."),
    9: ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", ".#...##",
        "..###.#", "......#", "......#", "......#", ".....#.", ".####.."),
}


def rbf_codes():
    """The (10, 84) matrix of +-1 RBF parameter vectors, one row per digit."""
    return numpy.array([[1.0 if pixel == "#" else -1.0 for row in RBF_BITMAPS[digit] for pixel in row]
                        for digit in range(10)], dtype=numpy.float32)


class ScaledTanh(nn.Module):
    """LeCun's squashing function f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (Appendix A): f(1) = 1
    and f(-1) = -1, and the second derivative is largest at +-1."""

    A = 1.7159
    S = 2.0 / 3.0

    def forward(self, x):
        return F.tanh(x * self.S) * self.A


class Subsampling(nn.Module):
    """S2/S4: per map, (sum of a 2x2 field) * coefficient + bias; 2 parameters per map."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(numpy.ones(channels, dtype=numpy.float32))
        self.bias = nn.Parameter(numpy.zeros(channels, dtype=numpy.float32))

    def forward(self, x):
        C = self.weight.shape[0]
        field_sum = F.avg_pool2d(x, 2) * 4.0  # N x C x H/2 x W/2
        return field_sum * self.weight.reshape(1, C, 1, 1) + self.bias.reshape(1, C, 1, 1)


class PartialConv2d(nn.Module):
    """C3: output map o is a 5x5 convolution over only the input maps table[o] (Table I). One small
    Conv2d per output map keeps the parameter count the paper's (1,516, not 16 * (6*25 + 1)).

    The forward pass runs them as one convolution over all input maps, with each map's weights
    spread into a full (16, 6, 5, 5) weight that is zero where the table has no connection: the
    same sums (plus exact zeros), and the gradient reaches only the table's weights. One layer
    instead of 16 small ones and 16 channel selections: a LeNet-5 training step at batch 64 took
    10.1 ms instead of 38.3."""

    def __init__(self, table, kernel_size):
        super().__init__()
        self.table = tuple(tuple(inputs) for inputs in table)
        self.convs = nn.ModuleList(nn.Conv2d(len(inputs), 1, kernel_size) for inputs in self.table)
        in_channels = 1 + max(max(inputs) for inputs in self.table)
        # spread[o][c]: which of map o's weight slices input map c uses, or len(table[o]) (a zero
        # slice appended below) where the table does not connect them.
        self.spread = [[inputs.index(c) if c in inputs else len(inputs) for c in range(in_channels)]
                       for inputs in self.table]

    def forward(self, x):
        weights = []
        for conv, spread in zip(self.convs, self.spread):
            # 1 x len(inputs) x KH x KW, a zero slice appended, then spread: 1 x C x KH x KW
            weights.append(F.pad(conv.weight, (0, 0, 0, 0, 0, 1))[:, spread])
        weight = F.concat(weights, axis=0)  # OC x C x KH x KW
        bias = F.concat([conv.bias for conv in self.convs], axis=0)
        return F.conv2d(x, weight, bias)


class RBFOutput(nn.Module):
    """Euclidean RBF units y_i = sum_j (x_j - w_ij)^2 over fixed codes w; returns -y (see module doc)."""

    def __init__(self, codes):
        super().__init__()
        self.register_buffer("codes", codes)

    def forward(self, x):
        N, D = x.shape
        K = self.codes.shape[0]
        difference = x.reshape(N, 1, D) - self.codes.reshape(1, K, D)  # N x K x D
        return -(difference * difference).sum(axis=2)


class LeNet(nn.Module):
    """The Caffe MNIST LeNet (see the module docstring)."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, widths=LENET_CAFFE, conv_relu=False):
        super().__init__()
        c1, c2, hidden = widths
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet: input_size must be at least 12, got {input_size}")
        activation = nn.ReLU if conv_relu else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), activation(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 5), activation(), nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        # N x 1 x 28 x 28
        x = self.features(x)
        # N x 50 x 4 x 4
        x = F.flatten(x, 1)
        # N x 800
        x = self.classifier(x)
        # N x num_classes
        return x


class LeNet5(nn.Module):
    """LeNet-5 as in the 1998 paper (see the module docstring for the departures)."""

    def __init__(self, num_classes=10, in_channels=1, padding=0, head="rbf", subsampling_activation="tanh"):
        super().__init__()
        if head not in ("rbf", "linear"):
            raise ValueError(f"LeNet5: head must be 'rbf' or 'linear', got {head!r}")
        if head == "rbf" and num_classes != 10:
            raise ValueError(f"LeNet5: the RBF head has codes for the 10 digits only, got num_classes="
                             f"{num_classes}; use head='linear'")
        if subsampling_activation not in ("tanh", "sigmoid"):
            raise ValueError(f"LeNet5: subsampling_activation must be 'tanh' or 'sigmoid', got "
                             f"{subsampling_activation!r}")
        squash = ScaledTanh if subsampling_activation == "tanh" else nn.Sigmoid
        self.pad = nn.ZeroPad2d(padding) if padding else nn.Identity()
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.act1 = ScaledTanh()
        self.s2 = Subsampling(6)
        self.act2 = squash()
        self.c3 = PartialConv2d(C3_TABLE, 5)
        self.act3 = ScaledTanh()
        self.s4 = Subsampling(16)
        self.act4 = squash()
        self.c5 = nn.Conv2d(16, 120, 5)
        self.act5 = ScaledTanh()
        self.f6 = nn.Linear(120, 84)
        self.act6 = ScaledTanh()
        self.output = RBFOutput(rbf_codes()) if head == "rbf" else nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pad(x)
        # N x 1 x 32 x 32
        x = self.act1(self.c1(x))
        # N x 6 x 28 x 28
        x = self.act2(self.s2(x))
        # N x 6 x 14 x 14
        x = self.act3(self.c3(x))
        # N x 16 x 10 x 10
        x = self.act4(self.s4(x))
        # N x 16 x 5 x 5
        x = self.act5(self.c5(x))
        # N x 120 x 1 x 1
        x = self.act6(self.f6(F.flatten(x, 1)))
        # N x 84
        x = self.output(x)
        # N x 10 (N x num_classes with head="linear")
        return x


class LeNetD2L(nn.Module):
    """Dive into Deep Learning's LeNet (section 7.6): sigmoid and average pooling, 28x28 input."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        # N x 1 x 28 x 28 -> N x 6 x 14 x 14 -> N x 16 x 5 x 5 -> N x 400 -> N x 10
        return self.net(x)


@register("lenet", input_shape=(1, 28, 28))
def lenet(num_classes=10, in_channels=1, **kwargs):
    """Caffe's MNIST LeNet (20-50-500), 431,080 parameters; input N x 1 x 28 x 28."""
    return LeNet(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register("lenet5", input_shape=(1, 32, 32))
def lenet5(num_classes=10, in_channels=1, **kwargs):
    """LeNet-5 (1998), 60,000 trainable parameters; input N x 1 x 32 x 32 (padding=2 for 28x28)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register("lenet_d2l", input_shape=(1, 28, 28))
def lenet_d2l(num_classes=10, in_channels=1):
    """d2l's LeNet (6-16-120-84, sigmoid), 61,706 parameters; input N x 1 x 28 x 28."""
    return LeNetD2L(num_classes=num_classes, in_channels=in_channels)
