"""Checkpoints: everything a training run needs to continue exactly where it stopped.

A checkpoint is a dict (model state_dict, optimizer and scheduler state, the global and DataLoader
random states, the epoch, the history, the run's settings) stored as

    b"TINYCNN-CHECKPOINT\\n" | 4-byte format version | SHA-256 of the payload (32 bytes) | payload

where the payload is a pickle. The checksum turns a truncated or damaged file into a clear error
instead of silently wrong weights, and loading goes through a restricted unpickler that builds
only plain containers and NumPy arrays, so opening a checkpoint cannot run arbitrary code.

Files are written to a temporary file in the same directory, flushed to disk, then moved over the
destination with os.replace: a crash mid-write leaves the previous checkpoint intact.
"""
import hashlib
import io
import os
import pickle
import tempfile

from tinycnn import backend, random
from tinycnn.errors import UserError

MAGIC = b"TINYCNN-CHECKPOINT\n"
VERSION = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a tinycnn checkpoint (a ValueError
    too, as it was before UserError existed)."""


# What the restricted unpickler may build: containers, and NumPy arrays, scalars and dtypes (under
# both the NumPy 1 and NumPy 2 module names, as pickles name them).
_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "Counter"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "slice"), ("builtins", "complex"),
    ("_codecs", "encode"),  # how a protocol-2 pickle written by Python 3 stores bytes
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only containers and NumPy arrays "
                                     "are allowed")


def restricted_loads(data, encoding="ASCII"):
    """pickle.loads that builds only containers and NumPy arrays (encoding='bytes' for Python 2
    pickles such as CIFAR-10's batches)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def to_host(value):
    """A copy of nested dicts/lists/tuples with every CuPy array moved to NumPy (to pickle it)."""
    if isinstance(value, dict):
        return type(value)((k, to_host(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    if backend.is_gpu_array(value):
        return backend.to_cpu(value)
    return value


def save(state, path):
    """Write the dict `state` to `path` atomically; returns the path."""
    payload = pickle.dumps(to_host(state), protocol=pickle.HIGHEST_PROTOCOL)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + VERSION.to_bytes(4, "big") + hashlib.sha256(payload).digest() + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def load(path):
    """The dict saved by `save`; raises CheckpointError saying what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, expected a checkpoint file") from None
    header = len(MAGIC) + 4 + 32
    if not content.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a tinycnn checkpoint (it does not start with {MAGIC!r})")
    if len(content) < header:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(content)} bytes)")
    version = int.from_bytes(content[len(MAGIC):len(MAGIC) + 4], "big")
    if version != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, this tinycnn reads version {VERSION}")
    digest, payload = content[len(MAGIC) + 4:header], content[header:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum does not match (the file was "
                              "truncated or damaged)")
    try:
        state = restricted_loads(payload)
    except Exception as error:  # checksummed, so only a file written by something else gets here
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def training_state(model, epoch, optimizer=None, scheduler=None, loader=None, history=None, settings=None):
    """The dict a checkpoint holds after `epoch` epochs (1-based count of finished epochs)."""
    return {
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "loader": None if loader is None else loader.state_dict(),
        "rng": random.get_rng_state(),
        "history": list(history or []),
        "settings": dict(settings or {}),
    }


def restore(state, model, optimizer=None, scheduler=None, loader=None, path="checkpoint"):
    """Load a training_state dict back into the objects of a run built the same way."""
    missing = [key for key in ("epoch", "model", "rng") if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a training checkpoint")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError) as error:
        message = error.args[0] if error.args else error
        raise CheckpointError(f"{path} does not fit this model: {message}") from None
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("loader", loader)):
        if target is not None:
            if state.get(name) is None:
                raise CheckpointError(f"{path} holds no {name} state to resume from")
            target.load_state_dict(state[name])
    random.set_rng_state(state["rng"])
    return state["epoch"]
