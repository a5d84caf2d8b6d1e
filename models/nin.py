"""Network in Network: Lin, Chen and Yan, "Network In Network", ICLR 2014 (arXiv:1312.4400).

Each "mlpconv" block is a convolution followed by two 1x1 convolutions (a small multilayer
perceptron slid over the image, each layer with a ReLU); the network ends with global average
pooling over a last block that has one map per class, with no fully connected layer.

The paper gives no ImageNet layer table (its experiments are CIFAR-10/100, SVHN and MNIST). This is
the ImageNet-sized version of Dive into Deep Learning (section 8.3), with AlexNet's first-layer
geometry: blocks of 96 (11x11/4), 256 (5x5, pad 2), 384 (3x3, pad 1) and num_classes (3x3, pad 1)
maps, 3x3/2 max pools between them and dropout 0.5 before the last block; 7,439,608 parameters
with 3 input channels and 1000 classes.
"""
import tinycnn.functional as F
from tinycnn import nn
from tinycnn.models.common import register

__all__ = ["nin"]

# (out channels, kernel, stride, padding) of each mlpconv block's first convolution; None stands
# for num_classes.
BLOCKS = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (None, 3, 1, 1))


def mlpconv(in_channels, out_channels, kernel_size, stride, padding):
    """conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1), nn.ReLU(inplace=True),
    )


class NiN(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, dropout=0.5):
        super().__init__()
        (c1, k1, s1, p1), (c2, k2, s2, p2), (c3, k3, s3, p3), (_, k4, s4, p4) = BLOCKS
        self.features = nn.Sequential(
            mlpconv(in_channels, c1, k1, s1, p1), nn.MaxPool2d(3, stride=2),
            mlpconv(c1, c2, k2, s2, p2), nn.MaxPool2d(3, stride=2),
            mlpconv(c2, c3, k3, s3, p3), nn.MaxPool2d(3, stride=2),
            nn.Dropout(dropout),
            mlpconv(c3, num_classes, k4, s4, p4),
        )
        self.pool = nn.GlobalAvgPool2d()

    def forward(self, x):
        # N x 3 x 224 x 224
        x = self.features(x)
        # N x num_classes x 5 x 5 (blocks at 54, 26, 12 and 5 pixels)
        x = F.flatten(self.pool(x), 1)
        # N x num_classes
        return x


@register("nin")
def nin(**kwargs):
    """Network in Network (d2l's ImageNet layout), 7,439,608 parameters; input N x 3 x 224 x 224."""
    return NiN(**kwargs)
