"""Weight import: networks written here in plain PyTorch, following torchvision's and timm's source
(torchvision is not a dependency), hand their state_dict to the tinycnn models, which must then
give the same logits in eval mode. Also loading through .npz and .pth files."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

import tinycnn  # noqa: E402
import tinycnn.models as models  # noqa: E402
from tinycnn import nn  # noqa: E402
from tinycnn.models.densenet import DenseNet  # noqa: E402
from tinycnn.models.googlenet import Inception, conv_bn_relu  # noqa: E402
from tinycnn.models.inception_v4 import Block35  # noqa: E402

from support import TOLERANCES  # noqa: E402


class TorchBasicConv2d(tnn.Module):
    """torchvision's / timm's BasicConv2d."""

    def __init__(self, in_channels, out_channels, eps=1e-3, **kwargs):
        super().__init__()
        self.conv = tnn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = tnn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TorchBasicBlock(tnn.Module):
    """torchvision.models.resnet.BasicBlock."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchResNet18(tnn.Module):
    """torchvision.models.resnet18's layout."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = tnn.Sequential(tnn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                        tnn.BatchNorm2d(planes))
        layers = [TorchBasicBlock(self.inplanes, planes, stride, downsample), TorchBasicBlock(planes, planes)]
        self.inplanes = planes
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TorchDenseLayer(tnn.Module):
    """torchvision.models.densenet._DenseLayer (without dropout and checkpointing)."""

    def __init__(self, in_features, growth_rate, bn_size):
        super().__init__()
        self.norm1 = tnn.BatchNorm2d(in_features)
        self.relu1 = tnn.ReLU()
        self.conv1 = tnn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = tnn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = tnn.ReLU()
        self.conv2 = tnn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features):
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class TorchDenseBlock(tnn.ModuleDict):
    def __init__(self, num_layers, in_features, growth_rate, bn_size):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", TorchDenseLayer(in_features + i * growth_rate, growth_rate, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class TorchDenseNet(tnn.Module):
    """torchvision.models.densenet.DenseNet."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 num_classes=1000):
        super().__init__()
        self.features = tnn.Sequential()
        self.features.add_module("conv0", tnn.Conv2d(3, num_init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", tnn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", tnn.ReLU())
        self.features.add_module("pool0", tnn.MaxPool2d(3, 2, 1))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = TorchDenseBlock(num_layers, num_features, growth_rate, bn_size)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                transition = tnn.Sequential()
                transition.add_module("norm", tnn.BatchNorm2d(num_features))
                transition.add_module("relu", tnn.ReLU())
                transition.add_module("conv", tnn.Conv2d(num_features, num_features // 2, 1, bias=False))
                transition.add_module("pool", tnn.AvgPool2d(2, 2))
                self.features.add_module(f"transition{i + 1}", transition)
                num_features //= 2
        self.features.add_module("norm5", tnn.BatchNorm2d(num_features))
        self.classifier = tnn.Linear(num_features, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(tnn.functional.adaptive_avg_pool2d(x, (1, 1)), 1))


class TorchInception(tnn.Module):
    """torchvision.models.googlenet.Inception (its "5x5" branch is a 3x3)."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = TorchBasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = tnn.Sequential(TorchBasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                      TorchBasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = tnn.Sequential(TorchBasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                      TorchBasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = tnn.Sequential(tnn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                      TorchBasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class TorchBlock35(tnn.Module):
    """timm.models.inception_resnet_v2.Block35."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = TorchBasicConv2d(320, 32, kernel_size=1)
        self.branch1 = tnn.Sequential(TorchBasicConv2d(320, 32, kernel_size=1),
                                      TorchBasicConv2d(32, 32, kernel_size=3, padding=1))
        self.branch2 = tnn.Sequential(TorchBasicConv2d(320, 32, kernel_size=1),
                                      TorchBasicConv2d(32, 48, kernel_size=3, padding=1),
                                      TorchBasicConv2d(48, 64, kernel_size=3, padding=1))
        self.conv2d = tnn.Conv2d(128, 320, kernel_size=1)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        return torch.relu(self.conv2d(out) * self.scale + x)


def randomize_batchnorm(module, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval mode uses them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return module


def compare(ours, theirs, input_shape, seed=0):
    """Load theirs' state_dict into ours (strict), and compare eval-mode outputs."""
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    with tinycnn.no_grad():
        actual = ours(tinycnn.tensor(x)).numpy()
    # float32 through up to a hundred layers: the tolerance of one op, scaled by the output's size
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCES[np.dtype(np.float32)]["rtol"],
                               atol=1e-5 * max(scale, 1.0))


def test_resnet18_weights_from_pytorch_give_equal_logits():
    torch.manual_seed(0)
    theirs = randomize_batchnorm(TorchResNet18(num_classes=10))
    ours = models.resnet18(num_classes=10)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    compare(ours, theirs, (2, 3, 64, 64))


def test_densenet121_weights_from_pytorch_give_equal_logits():
    torch.manual_seed(1)
    theirs = randomize_batchnorm(TorchDenseNet(num_classes=10), seed=1)
    ours = models.densenet121(num_classes=10)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    compare(ours, theirs, (1, 3, 32, 32), seed=1)


def test_densenet_block_and_transition_match_pytorch():
    torch.manual_seed(2)
    theirs = randomize_batchnorm(TorchDenseNet(growth_rate=4, block_config=(3, 2), num_init_features=8,
                                               num_classes=5), seed=2)
    ours = DenseNet(growth_rate=4, block_config=(3, 2), num_init_features=8, num_classes=5)
    compare(ours, theirs, (2, 3, 16, 16), seed=2)


def test_googlenet_inception_block_matches_torchvision_layout():
    torch.manual_seed(3)
    theirs = randomize_batchnorm(TorchInception(192, 64, 96, 128, 16, 32, 32), seed=3)
    ours = Inception(192, 64, 96, 128, 16, 32, 32, conv=conv_bn_relu, kernel_5x5=3)
    compare(ours, theirs, (2, 192, 7, 7), seed=3)


def test_googlenet_inception_keys_are_torchvisions_in_the_whole_network():
    model = models.googlenet()
    keys = set(model.state_dict())
    expected = {f"inception4a.{k}" for k in TorchInception(480, 192, 96, 208, 16, 48, 64).state_dict()}
    assert expected <= keys
    assert {"conv1.conv.weight", "conv3.bn.running_var", "aux1.conv.conv.weight", "aux2.fc2.bias", "fc.weight"} <= keys


def test_inception_resnet_block35_matches_timm_layout():
    torch.manual_seed(4)
    theirs = randomize_batchnorm(TorchBlock35(scale=0.17), seed=4)
    ours = Block35(scale=0.17)
    compare(ours, theirs, (1, 320, 5, 5), seed=4)


def test_load_weights_from_npz_and_pth(tmp_path):
    torch.manual_seed(5)
    theirs = randomize_batchnorm(TorchResNet18(num_classes=4), seed=5).eval()
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()

    npz = tmp_path / "resnet18.npz"
    np.savez(npz, **{key: value.numpy() for key, value in theirs.state_dict().items()})
    pth = tmp_path / "resnet18.pth"
    torch.save(theirs.state_dict(), pth)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": theirs.state_dict()}, checkpoint)

    for path in (npz, pth, checkpoint):
        ours = models.resnet18(num_classes=4)
        missing, unexpected = models.load_weights(ours, path)
        assert missing == [] and unexpected == []
        with tinycnn.no_grad():
            actual = ours.eval()(tinycnn.tensor(x)).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4, err_msg=str(path))


def test_save_weights_round_trip(tmp_path):
    tinycnn.manual_seed(6)
    model = models.resnet20()
    path = tmp_path / "resnet20.npz"
    models.save_weights(model, path)
    tinycnn.manual_seed(7)
    other = models.resnet20()
    models.load_weights(other, path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)


def test_load_weights_skips_num_batches_tracked_only_when_the_model_has_none(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    state = {key: value for key, value in model.state_dict().items()}
    state["1.num_batches_tracked"] = np.array(5)
    path = tmp_path / "linear.npz"
    np.savez(path, **state)
    assert models.load_weights(nn.Sequential(nn.Linear(3, 2)), path) == ([], [])
    state["1.weight"] = np.zeros(2)
    np.savez(path, **state)
    with pytest.raises(KeyError, match="1.weight"):
        models.load_weights(nn.Sequential(nn.Linear(3, 2)), path)


def test_load_weights_errors(tmp_path):
    model = models.resnet20()
    with pytest.raises(ValueError, match=r"expected a \.npz, \.pth or \.pt file"):
        models.load_weights(model, tmp_path / "weights.h5")
    wrong = {key: value for key, value in model.state_dict().items()}
    wrong["fc.weight"] = np.zeros((3, 64), np.float32)
    path = tmp_path / "wrong.npz"
    np.savez(path, **wrong)
    with pytest.raises(ValueError, match="fc.weight"):
        models.load_weights(models.resnet20(), path)
