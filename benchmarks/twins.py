"""PyTorch twins of the tinycnn registry networks the benchmarks time: the same layers in the same
order under the same state_dict keys, so `copy_weights` gives both frameworks identical parameters
and the two do exactly the same arithmetic.

    lenet       tinycnn.models.create("lenet")      the Caffe MNIST LeNet 20-50-500
    lenet_d2l   tinycnn.models.create("lenet_d2l")  d2l's LeNet-5 shape 6-16-120-84
    resnet18    tinycnn.models.create("resnet18")   torchvision's layout (BasicBlock)
    resnet50    tinycnn.models.create("resnet50")   torchvision's layout (Bottleneck, v1.5)

torchvision is not a dependency, so its ResNet is written out here (from torchvision/models/resnet.py).
"""
import numpy as np
import torch
from torch import nn


def lenet():
    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            # Caffe's LeNet has no nonlinearity after the convolutions; tinycnn keeps an Identity
            # in their place (index 1 and 4), which holds no parameters.
            self.features = nn.Sequential(
                nn.Conv2d(1, 20, 5), nn.Identity(), nn.MaxPool2d(2, 2),    # N x 20 x 12 x 12
                nn.Conv2d(20, 50, 5), nn.Identity(), nn.MaxPool2d(2, 2),   # N x 50 x 4 x 4
            )
            self.classifier = nn.Sequential(nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))   # N x 800 -> N x 10

    return LeNet()


def lenet_d2l():
    class LeNetD2L(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),   # N x 6 x 14 x 14
                nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2),             # N x 16 x 5 x 5
                nn.Flatten(), nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
                nn.Linear(84, 10),
            )

        def forward(self, x):
            return self.net(x)

    return LeNetD2L()


def _conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, planes, stride=1, downsample=None):
        super().__init__()
        # torchvision's v1.5: the stride sits in the 3x3, as in tinycnn's default.
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for index, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2))):
            setattr(self, f"layer{index + 1}", self._make_layer(block, planes, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))   # N x C x 1 x 1 -> N x C


def resnet18(num_classes=1000):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes=1000):
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


TWINS = {"lenet": lenet, "lenet_d2l": lenet_d2l, "resnet18": resnet18, "resnet50": resnet50}


def copy_weights(tiny_model, torch_model):
    """Give torch_model the parameters and buffers of tiny_model; the keys and shapes must agree."""
    tiny_state = tiny_model.state_dict()
    torch_state = torch_model.state_dict()
    if set(tiny_state) != set(torch_state):
        raise KeyError(f"copy_weights: the state_dict keys differ: "
                       f"{sorted(set(tiny_state) ^ set(torch_state))}")
    new_state = {}
    for name, value in tiny_state.items():
        value = np.asarray(value.get() if hasattr(value, "get") else value)   # CuPy -> NumPy
        if tuple(value.shape) != tuple(torch_state[name].shape):
            raise ValueError(f"copy_weights: {name} has shape {value.shape} in tinycnn and "
                             f"{tuple(torch_state[name].shape)} in torch")
        new_state[name] = torch.from_numpy(value.copy()).to(torch_state[name].dtype)
    torch_model.load_state_dict(new_state)
    return torch_model
