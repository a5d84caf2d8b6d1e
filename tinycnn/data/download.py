"""Where data sets live on disk, and how a file gets there safely.

Data sets are looked up under one root directory: the `root` argument (the CLI's `--data-dir`),
else the environment variable TINYCNN_DATA, else ~/.cache/tinycnn. Each data set has its own
sub-directory (`<root>/mnist/`, `<root>/cifar10/`).

A download goes to a temporary file in the destination directory and is moved into place with
os.replace only after its checksum matched, so an interrupted or corrupted download never leaves a
file that looks complete.
"""
import gzip
import hashlib
import os
import tempfile
import urllib.request

from tinycnn.errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 30


class DataError(UserError, ValueError):
    """A data file is missing, truncated, corrupted or not in the expected format (a UserError: the
    message says where the files go; still a ValueError, as it was before UserError existed)."""


def data_root(root=None):
    """The root directory of the data sets: `root`, else $TINYCNN_DATA, else ~/.cache/tinycnn."""
    if root is None:
        root = os.environ.get("TINYCNN_DATA") or os.path.join("~", ".cache", "tinycnn")
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def open_maybe_gzip(path):
    """Open a file for binary reading, decompressing it on the fly if it is gzip (by its magic
    bytes, not its name, so a raw file named .gz or a gzip file without the suffix both work)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_maybe_gzip(path):
    """The whole (decompressed) content of a file; a truncated gzip stream raises DataError."""
    try:
        with open_maybe_gzip(path) as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as error:
        raise DataError(f"{path}: cannot be decompressed ({error}); the file is truncated or "
                        "corrupted: delete it and download it again") from None


def file_digest(path, algorithm="sha256", decompress=False):
    """The hex digest of a file's bytes (of its decompressed content with decompress=True)."""
    digest = hashlib.new(algorithm)
    opener = open_maybe_gzip if decompress else (lambda p: open(p, "rb"))
    try:
        with opener(path) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    except (EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot be decompressed ({error}); the file is truncated or "
                        "corrupted: delete it and download it again") from None
    return digest.hexdigest()


def download(urls, destination, check):
    """Fetch the first URL of `urls` that works into `destination`, atomically.

    `check(temporary_path)` must raise DataError when the downloaded bytes are wrong (checksum or
    format); then the next mirror is tried. Returns the destination path; raises DataError listing
    every mirror's failure when none worked. Nothing is left at `destination` unless a download
    passed `check`.
    """
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    failures = []
    for url in urls:
        # In the destination directory, so os.replace is a rename on one file system (atomic).
        fd, temporary = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
            check(temporary)
            os.replace(temporary, destination)
            return destination
        except (OSError, DataError, ValueError) as error:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: " + str(error).replace(temporary, "the downloaded file"))
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    raise DataError("could not download {}: {}".format(os.path.basename(destination), "; ".join(failures)))
