"""MNIST from its four official IDX files, checked before a single image is trained on.

IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number 0x00 0x00 <type> <ndim>
(type 0x08 = unsigned byte; images 0x00000803, labels 0x00000801), then ndim big-endian uint32
sizes, then the values in C order. A file is accepted only when its header is the expected one,
its length is exactly header + product of the sizes, the SHA-256 of its uncompressed content is
the official one, and the image and label files agree on the count. The files may be gzip'ed (as
distributed) or raw.

Lookup: `<root>/mnist/NAME.gz`, `<root>/mnist/NAME`, then `<root>/NAME(.gz)`, where root is the
`root` argument, $TINYCNN_DATA or ~/.cache/tinycnn (see tinycnn.data.download). Missing files are
downloaded into `<root>/mnist/` from the mirrors in turn when `download=True`.

Checking costs little: reading the 47 MB training images takes ~0.2 s to decompress and ~0.05 s to
hash, so the checksum is verified every time the files are read; the parsed arrays are kept for the
rest of the process, keyed on each file's path, size and modification time.
"""
import hashlib
import os

import numpy

from tinycnn.data.dataset import TensorDataset
from tinycnn.data.download import DataError, data_root, download, read_maybe_gzip

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# SHA-256 of the uncompressed IDX content (the same for every mirror's gzip of it).
FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
CLASSES = tuple(str(digit) for digit in range(10))

_parsed = {}  # (path, size, mtime_ns) -> array, for the life of the process


def parse_idx(content, expected_magic, path="<bytes>"):
    """The array held in IDX bytes, after checking magic number, sizes and length.

    Raises DataError naming `path` and what is wrong.
    """
    if len(content) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(content)} bytes, shorter than the 4-byte header)")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: not an MNIST {'image' if expected_magic == IMAGES_MAGIC else 'label'} "
                        f"file: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: truncated IDX header ({len(content)} bytes, expected {header})")
    shape = tuple(int.from_bytes(content[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    expected = header + int(numpy.prod(shape))
    if len(content) != expected:
        state = "truncated" if len(content) < expected else "longer than its header says"
        raise DataError(f"{path}: {state}: {len(content)} bytes, expected {expected} for an array of "
                        f"shape {shape}")
    return numpy.frombuffer(content, dtype=numpy.uint8, offset=header).reshape(shape)


def find_file(name, root):
    """The first existing file for IDX `name` under root (gz or raw), or None."""
    for directory in (os.path.join(root, "mnist"), root):
        for candidate in (name + ".gz", name):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    return None


def _check_sha256(path, content, sha256):
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256:
        raise DataError(f"{path}: checksum mismatch: SHA-256 of the uncompressed content is {digest}, "
                        f"expected {sha256}: the file is corrupted or not the official one; delete it "
                        "and download it again")


def read_idx_file(path, expected_magic, sha256=None):
    """Parse one IDX file (gz or raw) and, when sha256 is given, verify its uncompressed content.

    Cached for the process while the file's path, size and modification time are unchanged.
    """
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, expected_magic, sha256)
    if key not in _parsed:
        content = read_maybe_gzip(path)
        array = parse_idx(content, expected_magic, path)  # a clear format error before a checksum one
        if sha256 is not None:
            _check_sha256(path, content, sha256)
        array.flags.writeable = False  # shared by every dataset made from it
        _parsed[key] = array
    return _parsed[key]


def read_idx_pair(images_path, labels_path, images_sha256=None, labels_sha256=None):
    """(images (N, 1, H, W) uint8, labels (N,) int64) from an image file and its label file."""
    images = read_idx_file(images_path, IMAGES_MAGIC, images_sha256)
    labels = read_idx_file(labels_path, LABELS_MAGIC, labels_sha256)
    if len(images) != len(labels):
        raise DataError(f"MNIST: {images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"MNIST: {labels_path} holds label {labels.max()}, expected digits 0..9")
    N, H, W = images.shape
    # (N, H, W) -> (N, 1, H, W): one grey channel
    return images.reshape(N, 1, H, W), labels.astype(numpy.int64)


def missing_data_message(root, missing, download_error=None):
    directory = os.path.join(root, "mnist")
    why = f"could not be downloaded ({download_error})" if download_error else "downloading was turned off"
    return (f"MNIST: {', '.join(missing)} not found in {directory} and {why}. Put the four official files "
            f"{', '.join(name + '.gz' for name in FILES)} (gzip'ed or not) in {directory}/, or point "
            "--data-dir / the TINYCNN_DATA environment variable at a directory holding mnist/")


def _get_file(name, root, download_allowed):
    path = find_file(name, root)
    if path is not None:
        return path
    if not download_allowed:
        raise DataError(missing_data_message(root, [name]))
    destination = os.path.join(root, "mnist", name + ".gz")

    def check(temporary):
        content = read_maybe_gzip(temporary)
        parse_idx(content, IMAGES_MAGIC if "images" in name else LABELS_MAGIC, temporary)
        _check_sha256(temporary, content, FILES[name])

    try:
        return download([mirror + name + ".gz" for mirror in MIRRORS], destination, check)
    except (DataError, OSError) as error:
        raise DataError(missing_data_message(root, [name], error)) from None


def load_mnist(train=True, root=None, download=True):
    """(images, labels) of the training (60000) or test (10000) set.

    images: uint8 (N, 1, 28, 28), read-only; labels: int64 (N,). Raises DataError with the fix when
    a file is missing, truncated or corrupted.
    """
    root = data_root(root)
    images_name, labels_name = SPLITS[bool(train)]
    missing = [name for name in (images_name, labels_name) if find_file(name, root) is None]
    if missing and not download:
        raise DataError(missing_data_message(root, missing))
    images_path = _get_file(images_name, root, download)
    labels_path = _get_file(labels_name, root, download)
    return read_idx_pair(images_path, labels_path, FILES[images_name], FILES[labels_name])


class MNIST(TensorDataset):
    """The MNIST training set (train=True, 60000 images) or test set (10000 images).

    Items are uint8 images (1, 28, 28) and int64 labels; `transform(x, rng)` turns each batch into
    the network's input, e.g. `transforms.Normalize(MNIST_MEAN, MNIST_STD)`.
    """

    classes = CLASSES

    def __init__(self, root=None, train=True, transform=None, download=True):
        images, labels = load_mnist(train=train, root=root, download=download)
        super().__init__(images, labels, transform=transform)
        self.train = train

    images = property(lambda self: self.arrays[0])
    labels = property(lambda self: self.arrays[1])
