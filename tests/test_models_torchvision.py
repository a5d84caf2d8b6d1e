"""The torchvision (and timm) layouts against the real torchvision (timm) models, at full size on a
GPU: same parameter count, state_dict loads strictly, same logits in eval mode.

A 224x224 forward of these networks is too slow for CI's CPUs, and torchvision/timm are not
dependencies, so this module runs only where torchvision (timm) is installed and CuPy sees a CUDA
device; it skips otherwise.
"""
import numpy as np
import pytest

from tinycnn import backend

torchvision = pytest.importorskip("torchvision")
torch = pytest.importorskip("torch")

import tinycnn  # noqa: E402
import tinycnn.models as models  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")]

# registry name -> (torchvision constructor name, keyword arguments, input side)
TORCHVISION = {
    "alexnet": ("alexnet", {}, 224),
    "vgg11": ("vgg11", {}, 224),
    "vgg16_bn": ("vgg16_bn", {}, 224),
    "resnet18": ("resnet18", {}, 224),
    "resnet50": ("resnet50", {}, 224),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 224),
    "densenet121": ("densenet121", {}, 224),
    "densenet161": ("densenet161", {}, 224),
    "googlenet": ("googlenet", dict(aux_logits=True, init_weights=True), 224),
    "inception_v3": ("inception_v3", dict(aux_logits=True, init_weights=True), 299),
}


def randomize_batchnorm(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return module


def compare_on_gpu(ours, theirs, side, seed=0):
    theirs = randomize_batchnorm(theirs, seed).eval()
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    ours.load_state_dict(theirs.state_dict())
    ours.eval().to("gpu")
    x = np.random.default_rng(seed).standard_normal((2, 3, side, side)).astype(np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.no_grad():
        expected = theirs.to(device)(torch.from_numpy(x).to(device)).cpu().numpy()
    with tinycnn.no_grad():
        actual = ours(tinycnn.tensor(x, device="gpu")).numpy()
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_layout_gives_torchvisions_logits(name):
    constructor, kwargs, side = TORCHVISION[name]
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, constructor)(weights=None, **kwargs)
    compare_on_gpu(models.create(name), theirs, side)


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_timm_layout_gives_timms_logits(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    compare_on_gpu(models.create(name), timm.create_model(name, pretrained=False), 299)
