"""The zoo's networks that have no torchvision/timm counterpart, against PyTorch twins written from
the papers (tests/twins_*.py): eval logits in float32 after `load_weights` from a `.pth` saved by
torch, then one float64 training step (outputs, every parameter gradient, the input gradient,
BatchNorm's running statistics). Each network is compared whole, at the smallest input it takes
(or its canonical CIFAR 32x32); dropout is off in the training step.
"""
from functools import partial

import numpy as np
import pytest
import torch

import tinycnn.models as models
import twins_cifar
import twins_classic
import twins_inception
from models_support import skipped_init
from reference_comparison import compare_eval_logits, compare_training_step, dropout_off, randomize_batchnorm


def lenet5_twin(ours):
    twin = twins_classic.LeNet5()
    # The RBF codes are fixed bitmaps the zoo draws (the paper prints them only as a figure).
    twin.output.codes.copy_(torch.from_numpy(ours.state_dict()["output.codes"]))
    return twin


def cifar_twin(ours, n, residual):
    return twins_cifar.CifarResNet(n, residual=residual)  # depth 6n + 2


# registry name -> (twin builder taking our model, eval input (C, H, W), training-step input side).
# The smallest inputs: AlexNet's fc6 needs 227 (ZFNet's, with pools rounding up, 207) to see 6x6
# maps; GoogLeNet's and BN-Inception's 7x7 average pool, 223; NiN's three 3x3/2 pools after an 11x11/4 conv, 67;
# Inception-ResNet-v1, 75; DenseNet-264's stem and three transitions, 32. The CIFAR networks train at
# 16x16 to save time.
TWINS = {
    "lenet5": (lenet5_twin, (1, 32, 32), 32),
    "alexnet_paper": (lambda ours: twins_classic.AlexNetPaper(), (3, 227, 227), 227),
    "zfnet": (lambda ours: twins_classic.ZFNet(), (3, 207, 207), 207),
    "nin": (lambda ours: twins_classic.NiN(), (3, 67, 67), 67),
    "densenet_bc_100": (lambda ours: twins_cifar.DenseNetBC100(), (3, 32, 32), 16),
    "densenet264": (lambda ours: twins_cifar.densenet264(), (3, 32, 32), 32),
    "googlenet_paper": (lambda ours: twins_inception.GoogLeNetPaper(), (3, 223, 223), 223),
    "inception_v2": (lambda ours: twins_inception.BNInception(), (3, 223, 223), 223),
    "inception_resnet_v1": (lambda ours: twins_inception.InceptionResNetV1(), (3, 75, 75), 75),
    "resnet20": (partial(cifar_twin, n=3, residual=True), (3, 32, 32), 16),
    "resnet32": (partial(cifar_twin, n=5, residual=True), (3, 32, 32), 16),
    "resnet44": (partial(cifar_twin, n=7, residual=True), (3, 32, 32), 16),
    "resnet56": (partial(cifar_twin, n=9, residual=True), (3, 32, 32), 16),
    "resnet110": (partial(cifar_twin, n=18, residual=True), (3, 32, 32), 16),
    "plain20": (partial(cifar_twin, n=3, residual=False), (3, 32, 32), 16),
    "plain32": (partial(cifar_twin, n=5, residual=False), (3, 32, 32), 16),
    "plain44": (partial(cifar_twin, n=7, residual=False), (3, 32, 32), 16),
    "plain56": (partial(cifar_twin, n=9, residual=False), (3, 32, 32), 16),
    "plain110": (partial(cifar_twin, n=18, residual=False), (3, 32, 32), 16),
}

def build(name):
    with skipped_init():  # every weight is loaded from the twin
        ours = models.create(name)
    torch.manual_seed(0)
    twin = randomize_batchnorm(TWINS[name][0](ours))
    return ours, twin


@pytest.mark.parametrize("name", sorted(TWINS))
def test_eval_logits_equal_the_twins(name, tmp_path):
    ours, twin = build(name)
    x = np.random.default_rng(0).standard_normal((2, *TWINS[name][1])).astype(np.float32)
    compare_eval_logits(ours, twin, x, tmp_path)


# The training step leaves out networks that add no layer kind to what it checks: the CIFAR depths
# between 20 and 110 (the eval test above runs each one whole), DenseNet-264 (torchvision's DenseNet
# class, whose training step test_models_torchvision.py checks on DenseNet-121), and plain-110,
# whose stem gradient (1e7, the exploding gradient of a deep plain stack, He et al. Fig. 1) keeps
# only ~6 significant digits in float64 in either framework.
TRAINING_STEP_CHECKED = sorted(set(TWINS) - {"resnet32", "resnet44", "resnet56", "plain32", "plain44",
                                             "plain110", "densenet264"})


@pytest.mark.parametrize("name", TRAINING_STEP_CHECKED)
def test_float64_training_step_equals_the_twins(name):
    ours, twin = build(name)
    dropout_off(ours, twin)
    channels, side = TWINS[name][1][0], TWINS[name][2]
    x = np.random.default_rng(0).standard_normal((2, channels, side, side))
    compare_training_step(ours, twin, x)

