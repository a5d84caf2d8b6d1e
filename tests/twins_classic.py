"""PyTorch twins of the zoo's pre-BatchNorm networks, written from the papers: LeNet-5 (1998),
AlexNet as published, ZFNet, Network in Network.

Module names are chosen so that `state_dict()` keys equal tinycnn's (`c3.convs.4.weight`,
`features.conv2.weight`, ...): the weights move with `load_state_dict`. Everything else (layer
order, kernel sizes, strides, padding, where the nonlinearities and normalisations sit) comes from
the papers as cited on each class.
"""
import torch
from torch import nn

# LeNet-5, LeCun et al. 1998, Table I: the S2 maps (rows 0-5) marked X in the column of each C3 map
# (0-15), read down the column: a C3 kernel's input channels are its S2 maps in increasing order.
LENET5_C3_CONNECTIONS = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def lecun_squash(a):
    """Appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3."""
    return 1.7159 * torch.tanh(a * (2.0 / 3.0))


class Subsampling(nn.Module):
    """S2/S4 (section II.B): the four inputs of a 2x2 field are added, multiplied by a trainable
    coefficient and added to a trainable bias, one of each per map."""

    def __init__(self, maps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(maps))
        self.bias = nn.Parameter(torch.zeros(maps))

    def forward(self, x):
        field_sum = nn.functional.avg_pool2d(x, 2) * 4
        return field_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv(nn.Module):
    """C3: each output map is a 5x5 convolution over its own subset of the input maps."""

    def __init__(self, connections, kernel_size):
        super().__init__()
        self.connections = connections
        self.convs = nn.ModuleList(nn.Conv2d(len(inputs), 1, kernel_size) for inputs in connections)

    def forward(self, x):
        return torch.cat([conv(x[:, list(inputs)]) for conv, inputs in zip(self.convs, self.connections)], dim=1)


class EuclideanRBF(nn.Module):
    """Output layer (eq. 7): y_i = sum_j (x_j - w_ij)^2 with fixed w. tinycnn returns -y (its
    documented choice, so that argmax is the class); the codes are a buffer loaded from tinycnn."""

    def __init__(self, in_features, classes):
        super().__init__()
        self.register_buffer("codes", torch.zeros(classes, in_features))

    def forward(self, x):
        return -((x.unsqueeze(1) - self.codes.unsqueeze(0)) ** 2).sum(dim=2)


class LeNet5(nn.Module):
    """Section II.B: C1 6@5x5 -> S2 -> C3 16@5x5 (Table I) -> S4 -> C5 120@5x5 -> F6 84 -> RBF.
    Every layer up to F6 passes its weighted sum through the squashing function (section II.B:
    "passed through a sigmoid squashing function"; S2: "the result is passed through a sigmoidal
    function")."""

    def __init__(self, classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = PartialConv(LENET5_C3_CONNECTIONS, 5)
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = EuclideanRBF(84, classes)

    def forward(self, x):
        x = lecun_squash(self.c1(x))             # N x 6 x 28 x 28
        x = lecun_squash(self.s2(x))             # N x 6 x 14 x 14
        x = lecun_squash(self.c3(x))             # N x 16 x 10 x 10
        x = lecun_squash(self.s4(x))             # N x 16 x 5 x 5
        x = lecun_squash(self.c5(x)).flatten(1)  # N x 120
        x = lecun_squash(self.f6(x))             # N x 84
        return self.output(x)


class AlexNetPaper(nn.Module):
    """Krizhevsky et al. 2012, section 3.5 and Figure 2: conv1 96@11x11/4, conv2 256@5x5, conv3 384@3x3,
    conv4 384@3x3, conv5 256@3x3; conv2, conv4 and conv5 see only the maps on their own GPU (two
    groups); response normalisation after the ReLUs of conv1 and conv2 (section 3.3: k=2, n=5,
    alpha=1e-4 not divided by n, beta=0.75); 3x3/2 max pooling after both normalisations and
    after conv5; fc 4096-4096-1000 with dropout in the first two fc layers (section 4.2)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.features = nn.Module()
        self.features.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.features.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.features.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.features.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.features.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.classifier = nn.Module()
        self.classifier.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.classifier.fc7 = nn.Linear(4096, 4096)
        self.classifier.fc8 = nn.Linear(4096, classes)
        # torch divides alpha by n; the paper does not: alpha_torch = n * 1e-4.
        self.lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        f, relu, pool = self.features, nn.functional.relu, nn.functional.max_pool2d
        x = pool(self.lrn(relu(f.conv1(x))), 3, 2)   # N x 96 x 27 x 27 (227 input)
        x = pool(self.lrn(relu(f.conv2(x))), 3, 2)   # N x 256 x 13 x 13
        x = relu(f.conv3(x))
        x = relu(f.conv4(x))
        x = pool(relu(f.conv5(x)), 3, 2).flatten(1)  # N x 9216
        c = self.classifier
        x = self.dropout(relu(c.fc6(x)))
        x = self.dropout(relu(c.fc7(x)))
        return c.fc8(x)


class ZFNet(nn.Module):
    """Zeiler and Fergus 2014, Figure 3: 224 -> conv1 96@7x7/2 -> 110 -> pool 3x3/2 -> 55 -> conv2
    256@5x5/2 -> 26 -> pool 3x3/2 -> 13 -> conv3 384, conv4 384, conv5 256 (3x3) -> pool 3x3/2 -> 6
    -> fc 4096-4096-classes. The sizes need conv1 padded by 1 and the pools rounding up; the
    "contrast normalisation across feature maps" of layers 1 and 2 is AlexNet's response
    normalisation (the zoo's documented reading), after the ReLU and before the pool; dropout in
    the fc layers as AlexNet (section 3)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.features = nn.Module()
        self.features.conv1 = nn.Conv2d(3, 96, 7, stride=2, padding=1)
        self.features.conv2 = nn.Conv2d(96, 256, 5, stride=2)
        self.features.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.features.conv4 = nn.Conv2d(384, 384, 3, padding=1)
        self.features.conv5 = nn.Conv2d(384, 256, 3, padding=1)
        self.classifier = nn.Module()
        self.classifier.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.classifier.fc7 = nn.Linear(4096, 4096)
        self.classifier.fc8 = nn.Linear(4096, classes)
        self.lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        f, relu = self.features, nn.functional.relu

        def pool(t):
            return nn.functional.max_pool2d(t, 3, 2, ceil_mode=True)
        x = pool(self.lrn(relu(f.conv1(x))))   # N x 96 x 55 x 55
        x = pool(self.lrn(relu(f.conv2(x))))   # N x 256 x 13 x 13
        x = relu(f.conv3(x))
        x = relu(f.conv4(x))
        x = pool(relu(f.conv5(x))).flatten(1)  # N x 9216
        c = self.classifier
        x = self.dropout(relu(c.fc6(x)))
        x = self.dropout(relu(c.fc7(x)))
        return c.fc8(x)


def mlpconv(in_channels, out_channels, kernel_size, stride, padding):
    """Lin et al. 2014, section 3.1: a convolution then two 1x1 convolutions (the "micro
    network"), each followed by a ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1), nn.ReLU())


class NiN(nn.Module):
    """Three mlpconv layers with 3x3/2 max pools between, dropout (section 4.1: on the outputs of
    all but the last mlpconv layer; here once, before the last block, as the zoo's ImageNet layout
    says), a last mlpconv with one map per class, global average pooling (section 3.2)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            mlpconv(3, 96, 11, 4, 0), nn.MaxPool2d(3, 2),
            mlpconv(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
            mlpconv(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2),
            nn.Dropout(0.5),
            mlpconv(384, classes, 3, 1, 1))

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))

