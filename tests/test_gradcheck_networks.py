"""Whole networks and blocks, converted with `.double()`, pass tinycnn.gradcheck (central
differences in float64) with respect to their input and a few parameters. Blocks with BatchNorm
run in train mode, so the gradient through the batch statistics is checked too."""
import numpy as np
import pytest

import tinycnn
import tinycnn.models as models
from tinycnn import nn
from tinycnn.models.densenet import DenseBlock
from tinycnn.models.googlenet import Inception
from tinycnn.models.resnet import BasicBlock, Bottleneck


def check_network(model, input_shape, parameter_names, seed=0):
    """gradcheck of model(x) w.r.t. x and the named parameters (kept small: each element costs
    two forward passes)."""
    model.double()
    parameters = dict(model.named_parameters())
    checked = [parameters[name] for name in parameter_names]
    x = tinycnn.tensor(np.random.default_rng(seed).standard_normal(input_shape), requires_grad=True)

    def forward(x, *weights):  # the weights are the model's own Parameters, perturbed in place
        return model(x)
    assert tinycnn.gradcheck(forward, [x, *checked])


def test_lenet_float64_passes_gradcheck():
    tinycnn.manual_seed(0)
    model = models.create("lenet").train()
    check_network(model, (1, 1, 28, 28), ["features.0.bias", "classifier.2.bias"])


def test_lenet5_float64_passes_gradcheck():
    tinycnn.manual_seed(0)
    model = models.create("lenet5").train()
    check_network(model, (1, 1, 32, 32), ["s2.weight", "s4.bias", "c3.convs.12.bias"])


def test_resnet_basic_block_float64_passes_gradcheck():
    tinycnn.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
    block = BasicBlock(4, 6, stride=2, downsample=downsample).train()
    check_network(block, (2, 4, 6, 6), ["bn1.weight", "bn2.bias", "downsample.0.weight"])


def test_resnet_bottleneck_block_float64_passes_gradcheck():
    tinycnn.manual_seed(0)
    block = Bottleneck(8, 2).train()  # identity shortcut: 8 -> 2 -> 2 -> 8 maps
    check_network(block, (2, 8, 5, 5), ["conv1.weight", "bn2.weight", "bn3.bias"])


def test_inception_block_float64_passes_gradcheck():
    tinycnn.manual_seed(0)
    block = Inception(4, 2, 2, 3, 2, 3, 2).train()  # GoogLeNet's: 1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1
    check_network(block, (2, 4, 5, 5), ["branch1.conv.bias", "branch3.1.conv.weight", "branch4.1.conv.bias"])


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_dense_block_float64_passes_gradcheck(memory_efficient):
    tinycnn.manual_seed(0)
    block = DenseBlock(2, 4, growth_rate=2, bn_size=2, memory_efficient=memory_efficient).train()
    check_network(block, (2, 4, 4, 4), ["denselayer1.norm1.weight", "denselayer2.conv2.weight"])
