"""tinycnn.models: the classic CNNs, one module per paper, each built from tinycnn.nn layers.

    >>> import tinycnn.models as models
    >>> models.list()[:3]
    ['alexnet', 'alexnet_paper', 'densenet121']
    >>> net = models.create("resnet18", num_classes=10)     # or models.resnet18(num_classes=10)
    >>> models.save_weights(net, "resnet18.npz")
    >>> models.load_weights(net, "resnet18.npz")            # .npz, or .pth through torch

Where the paper and the widely used implementation differ, both exist: `alexnet_paper` and
`googlenet_paper` follow the publications; `alexnet`, `googlenet`, `resnet50`, ... follow
torchvision (timm for Inception v4 and Inception-ResNet-v2) down to the state_dict keys, so their
pretrained weights load with `load_weights`.
"""
import difflib
import os
import warnings

import numpy

from tinycnn.models.common import _FACTORIES, _INPUT_SHAPES, ModelOutputs, register
# Each module's __all__ lists its factories. A factory may share its module's name (`lenet`): the
# package attribute is then the factory, and `from tinycnn.models.lenet import C3_TABLE` reaches
# the module.
from tinycnn.models.alexnet import *  # noqa: F401,F403
from tinycnn.models.densenet import *  # noqa: F401,F403
from tinycnn.models.googlenet import *  # noqa: F401,F403
from tinycnn.models.inception_v2 import *  # noqa: F401,F403
from tinycnn.models.inception_v3 import *  # noqa: F401,F403
from tinycnn.models.inception_v4 import *  # noqa: F401,F403
from tinycnn.models.lenet import *  # noqa: F401,F403
from tinycnn.models.nin import *  # noqa: F401,F403
from tinycnn.models.resnet import *  # noqa: F401,F403
from tinycnn.models.vgg import *  # noqa: F401,F403
from tinycnn.models.zfnet import *  # noqa: F401,F403

__all__ = ["ModelOutputs", "create", "default_input_shape", "list", "load_weights", "register",
           "save_weights"] + sorted(_FACTORIES)


def create(name, **kwargs):
    """Build the registered network `name` (see list()); keyword arguments go to its factory."""
    if name not in _FACTORIES:
        close = difflib.get_close_matches(str(name), _FACTORIES, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list())}"
        raise ValueError(f"models.create: unknown model {name!r}{hint}")
    model = _FACTORIES[name](**kwargs)
    # How it was made, so fit(out_dir=...) can record a run that `tinycnn eval` rebuilds.
    model.registered_as = (name, dict(kwargs))
    return model


def list():  # noqa: A001 - the registry's list, as timm.list_models
    """The registered model names, sorted."""
    return sorted(_FACTORIES)


def default_input_shape(name):
    """The (C, H, W) input the network `name` is specified for: (3, 224, 224) for most ImageNet
    networks, (3, 299, 299) for Inception v3/v4, (3, 32, 32) for the CIFAR ones, (1, 28, 28) for LeNet."""
    if name not in _INPUT_SHAPES:
        create(name)  # raises the ValueError that lists close names
    return _INPUT_SHAPES[name]


def _read_state_dict(path):
    extension = os.path.splitext(str(path))[1].lower()
    if extension == ".npz":
        with numpy.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    if extension in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise ImportError(f"load_weights: reading {path} needs PyTorch (pip install torch); "
                              "or convert it once to .npz") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        # A training checkpoint nests the weights under one of these keys.
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        return state
    raise ValueError(f"load_weights: expected a .npz, .pth or .pt file, got {path!r}")


def load_weights(model, path, strict=True):
    """Load a state_dict saved as .npz (NumPy, e.g. by save_weights) or .pth/.pt (PyTorch) into
    `model`; returns (missing_keys, unexpected_keys).

    PyTorch's BatchNorm saves a `num_batches_tracked` counter that only matters for momentum=None;
    those keys are skipped when the model has no such buffer.

    strict=True: every key must be there with its shape. strict=False loads what fits: keys absent
    on one side are reported, and an array whose shape differs from the model's (the usual case: a
    1000-class ImageNet head loaded into a 10-class network) is skipped with a warning naming it;
    that layer keeps its initial values and its keys are among the missing ones.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    state = {key: value for key, value in state.items()
             if not (key.endswith("num_batches_tracked") and key not in own)}
    if not strict:
        mismatched = {key: (tuple(value.shape), tuple(own[key].shape)) for key, value in state.items()
                      if key in own and tuple(value.shape) != tuple(own[key].shape)}
        if mismatched:
            shapes = ", ".join(f"{key} ({theirs} in the file, {ours} in the model)"
                               for key, (theirs, ours) in mismatched.items())
            warnings.warn(f"load_weights: skipped {shapes}: the shapes differ (a head of another size?); "
                          "those parameters keep their initial values", stacklevel=2)
            state = {key: value for key, value in state.items() if key not in mismatched}
    return model.load_state_dict(state, strict=strict)


def save_weights(model, path):
    """Save `model.state_dict()` as an uncompressed .npz archive that load_weights reads back."""
    numpy.savez(path, **model.state_dict())
