"""torchvision's and timm's model definitions, importable beside the CPU build of PyTorch.

torchvision 0.28.0 (the release for torch 2.13) ships one wheel on PyPI, built against CUDA. Its
package `__init__` loads the compiled ops (`torchvision/_C`, then `_meta_registrations`, which
registers fake kernels for `torchvision::nms`); beside the CPU torch that fails with "operator
torchvision::nms does not exist", so a plain `import torchvision` raises, and so does
`import timm`, which imports torchvision. The model definitions (`torchvision/models/resnet.py`,
...) are plain Python over torch.nn and never call those ops.

So, before anything imports torchvision, we put a bare package module named `torchvision` into
`sys.modules`, with the real package's `__path__`: `import torchvision.models.resnet` then finds
the real submodules on disk but never runs the package `__init__`. Where torchvision was already
imported (a machine where its ops load), that module is used as it is.

    from torchvision_models import torchvision_models, timm
    net = torchvision_models().resnet18(weights=None)
"""
import importlib
import importlib.util
import sys
import types


def _install_bare_torchvision():
    """Register a `torchvision` package module that skips the real `__init__` (see above)."""
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed (pip install -e '.[test]' pins torchvision==0.28.0)")
    package = types.ModuleType("torchvision")
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package


def torchvision_models():
    """The `torchvision.models` package (resnet18, googlenet, inception_v3, ...)."""
    _install_bare_torchvision()
    return importlib.import_module("torchvision.models")


def timm():
    """The `timm` package; it imports torchvision, so the bare package is registered first."""
    _install_bare_torchvision()
    return importlib.import_module("timm")
