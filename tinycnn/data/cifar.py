"""CIFAR-10 from the official "python version" archive (Krizhevsky, 2009).

The archive cifar-10-python.tar.gz holds cifar-10-batches-py/ with five training batches
(data_batch_1 .. data_batch_5) and one test batch (test_batch), each a Python 2 pickle of a dict
{b"data": uint8 (10000, 3072), b"labels": [10000 ints], ...}; a row of data is the 1024 red, then
1024 green, then 1024 blue values of a 32x32 image, rows top to bottom.

Lookup under `<root>/cifar10/` (root as for MNIST: argument, $TINYCNN_DATA or ~/.cache/tinycnn):
the extracted directory cifar-10-batches-py/, else the archive, which is read in place (no
extraction step that could be left half done), else the archive is downloaded when
`download=True` and checked against its official MD5 before it is kept. Batches are unpickled
with a restricted unpickler (NumPy arrays and containers only).
"""
import os
import tarfile

import numpy

from tinycnn.checkpoint import restricted_loads
from tinycnn.data.dataset import TensorDataset
from tinycnn.data.download import DataError, data_root, file_digest, download as fetch

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
DIRECTORY = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_verified_archives = set()  # (path, size, mtime_ns) whose MD5 matched in this process


def parse_batch(content, name):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from the bytes of one pickled batch."""
    try:
        batch = restricted_loads(content, encoding="bytes")
    except Exception as error:
        raise DataError(f"CIFAR-10 {name}: not a readable batch file ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 {name}: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], numpy.asarray(batch[b"labels"])
    if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"CIFAR-10 {name}: expected data as uint8 (N, 3072), got {getattr(data, 'dtype', type(data))} "
                        f"{shape}")
    if labels.shape != (len(data),):
        raise DataError(f"CIFAR-10 {name}: {len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 {name}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    # (N, 3072) -> (N, 3, 32, 32): 1024 values per channel, each 32 rows of 32
    return data.reshape(-1, 3, 32, 32), labels.astype(numpy.int64)


def _check_archive(path):
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified_archives:
        return
    digest = file_digest(path, "md5")
    if digest != ARCHIVE_MD5:
        raise DataError(f"{path}: checksum mismatch: MD5 {digest}, expected {ARCHIVE_MD5}: the archive is "
                        "truncated or corrupted; delete it and download it again")
    _verified_archives.add(key)


def _read_from_archive(path, names):
    _check_archive(path)
    contents = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                base = os.path.basename(member.name)
                if member.isfile() and base in names:
                    contents[base] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{path}: cannot be read as a tar.gz archive ({error})") from None
    absent = [name for name in names if name not in contents]
    if absent:
        raise DataError(f"{path}: the archive lacks {', '.join(absent)}")
    return [contents[name] for name in names]


def _read_from_directory(directory, names):
    contents = []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise DataError(f"CIFAR-10: {path} is missing (the directory {directory} is incomplete)")
        with open(path, "rb") as f:
            contents.append(f.read())
    return contents


def missing_data_message(root, download_error=None):
    directory = os.path.join(root, "cifar10")
    why = f"could not be downloaded ({download_error})" if download_error else "downloading was turned off"
    return (f"CIFAR-10: neither {os.path.join(directory, DIRECTORY)}/ nor {os.path.join(directory, ARCHIVE)} "
            f"exists, and the archive {why}. Put {ARCHIVE} (from {URL}, MD5 {ARCHIVE_MD5}) in {directory}/, "
            "or point --data-dir / TINYCNN_DATA at a directory holding cifar10/")


def load_cifar10(train=True, root=None, download=True):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the training (50000) or test (10000) set."""
    root = data_root(root)
    names = TRAIN_BATCHES if train else TEST_BATCHES
    directory = os.path.join(root, "cifar10", DIRECTORY)
    archive = os.path.join(root, "cifar10", ARCHIVE)
    if os.path.isdir(directory):
        contents = _read_from_directory(directory, names)
    else:
        if not os.path.isfile(archive):
            if not download:
                raise DataError(missing_data_message(root))
            try:
                fetch([URL], archive, _check_archive)
            except (DataError, OSError) as error:
                raise DataError(missing_data_message(root, error)) from None
        contents = _read_from_archive(archive, names)
    batches = [parse_batch(content, name) for content, name in zip(contents, names)]
    return (numpy.concatenate([images for images, _ in batches]),
            numpy.concatenate([labels for _, labels in batches]))


class CIFAR10(TensorDataset):
    """The CIFAR-10 training set (50000 images) or test set (10000): uint8 (3, 32, 32) and int64 labels."""

    classes = CLASSES

    def __init__(self, root=None, train=True, transform=None, download=True):
        images, labels = load_cifar10(train=train, root=root, download=download)
        super().__init__(images, labels, transform=transform)
        self.train = train

    images = property(lambda self: self.arrays[0])
    labels = property(lambda self: self.arrays[1])
