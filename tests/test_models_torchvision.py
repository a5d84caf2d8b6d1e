"""The torchvision (and timm) layouts of the zoo against the real torchvision (timm) networks.

- eval mode, float32, full resolution: the logits equal torchvision's after `load_weights` reads
  a `.pth` saved by torch from the torchvision model (random weights, BatchNorm statistics and
  affine parameters randomised so that a swapped or missing BatchNorm shows);
- train mode, float64, at a small input: every parameter gradient, the input gradient and every
  BatchNorm running statistic after the step equal torchvision's (dropout off on both sides).

Both run on the CPU (torchvision's model files are imported without its C ops: see
tests/torchvision_models.py). The GPU variants at the end repeat the eval check on CuPy.
"""
import numpy as np
import pytest
import torch

import tinycnn.models as models
from models_support import skipped_init
from reference_comparison import compare_eval_logits, compare_training_step, dropout_off, randomize_batchnorm
from tinycnn import backend
from torchvision_models import timm, torchvision_models

# registry name -> (torchvision constructor, keyword arguments, full input side). googlenet and
# inception_v3 are built as torchvision builds them for its pretrained weights (aux heads present).
TORCHVISION = {
    "alexnet": ("alexnet", {}, 224),
    "vgg11": ("vgg11", {}, 224), "vgg13": ("vgg13", {}, 224),
    "vgg16": ("vgg16", {}, 224), "vgg19": ("vgg19", {}, 224),
    "vgg11_bn": ("vgg11_bn", {}, 224), "vgg13_bn": ("vgg13_bn", {}, 224),
    "vgg16_bn": ("vgg16_bn", {}, 224), "vgg19_bn": ("vgg19_bn", {}, 224),
    "resnet18": ("resnet18", {}, 224), "resnet34": ("resnet34", {}, 224),
    "resnet50": ("resnet50", {}, 224), "resnet101": ("resnet101", {}, 224),
    "resnet152": ("resnet152", {}, 224),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 224), "resnext101_32x8d": ("resnext101_32x8d", {}, 224),
    "densenet121": ("densenet121", {}, 224), "densenet161": ("densenet161", {}, 224),
    "densenet169": ("densenet169", {}, 224), "densenet201": ("densenet201", {}, 224),
    "googlenet": ("googlenet", dict(aux_logits=True, init_weights=True), 224),
    "inception_v3": ("inception_v3", dict(aux_logits=True, init_weights=True), 299),
}
TIMM = {"inception_v4": 299, "inception_resnet_v2": 299}

# The training step, in float64 at 64x64 (Inception v3/v4 and Inception-ResNet-v2 need 75x75):
# smaller, the last BatchNorms see 2 values per channel and their backward loses digits even in
# float64. One network per block type; the other depths stack the same blocks in other numbers,
# which the eval test checks against torchvision's tables. VGG-11-BN stands for the VGG family
# (its classifier alone is 120M float64 weights).
TRAIN_SIDE = {
    "alexnet": 64, "vgg11_bn": 64, "resnet18": 64, "resnet50": 64, "resnext50_32x4d": 64,
    "densenet121": 64, "googlenet": 64, "inception_v3": 75, "inception_v4": 75, "inception_resnet_v2": 75,
}


def reference_network(name, **kwargs):
    torch.manual_seed(0)
    if name in TIMM:
        return timm().create_model(name, pretrained=False, **kwargs)
    constructor, defaults, _ = TORCHVISION[name]
    return getattr(torchvision_models(), constructor)(weights=None, **{**defaults, **kwargs})


def check_eval_logits(name, tmp_path, device="cpu"):
    theirs = randomize_batchnorm(reference_network(name))
    with skipped_init():  # every weight is overwritten by load_weights (strict)
        ours = models.create(name)
    side = TIMM[name] if name in TIMM else TORCHVISION[name][2]
    batch = 1 if side == 299 or name.startswith(("vgg", "resnet1", "resnext101", "densenet")) else 2
    x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
    compare_eval_logits(ours, theirs, x, tmp_path, device)


@pytest.mark.parametrize("name", sorted(TORCHVISION) + sorted(TIMM))
def test_eval_logits_equal_the_reference_after_loading_a_pth(name, tmp_path):
    check_eval_logits(name, tmp_path)


# torchvision's GoogLeNet aux heads call F.dropout(p=0.7) themselves, so dropout_off cannot reach
# them: they are built with dropout_aux=0. Inception v3's aux head needs the 17x17 grid of a 299x299
# input; the step runs without it, and the next test checks the head on its own.
REFERENCE_TRAINING_KWARGS = {"googlenet": {"dropout_aux": 0.0}, "inception_v3": {"aux_logits": False}}
OUR_TRAINING_KWARGS = {"inception_v3": {"aux_logits": False}}


@pytest.mark.parametrize("name", sorted(TRAIN_SIDE))
def test_float64_training_step_equals_the_reference(name):
    theirs = randomize_batchnorm(reference_network(name, **REFERENCE_TRAINING_KWARGS.get(name, {})))
    with skipped_init():
        ours = models.create(name, **OUR_TRAINING_KWARGS.get(name, {}))
    dropout_off(ours, theirs)
    side = TRAIN_SIDE[name]
    x = np.random.default_rng(0).standard_normal((2, 3, side, side))
    compare_training_step(ours, theirs, x)


def test_inception_v3_aux_head_training_step_equals_torchvisions():
    """The aux head on its own input, N x 768 x 17 x 17 (the Mixed_6e output at 299x299)."""
    theirs = randomize_batchnorm(reference_network("inception_v3")).AuxLogits
    with skipped_init():
        ours = models.create("inception_v3").AuxLogits
    x = np.random.default_rng(0).standard_normal((2, 768, 17, 17))
    compare_training_step(ours, theirs, x)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("name", sorted(TORCHVISION) + sorted(TIMM))
def test_eval_logits_on_the_gpu_equal_the_reference(name, tmp_path):
    check_eval_logits(name, tmp_path, device="gpu")
