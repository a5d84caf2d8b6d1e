"""Data: IDX parsing and its header checks, checksums, atomic downloads, the missing-data message,
CIFAR-10 batches, transforms and the DataLoader's reproducibility."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request

import numpy as np
import pytest

import tinycnn
from tinycnn.data import (CIFAR10, MNIST, DataError, DataLoader, Dataset, Subset, TensorDataset, cifar, download,
                          mnist, transforms)


def idx_bytes(array, magic_type=0x08):
    """IDX encoding written independently of the parser: magic, big-endian sizes, values."""
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, content, gz=False):
    if gz:
        content = gzip.compress(content)
    path.write_bytes(content)
    return str(path)


@pytest.fixture
def small_idx(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_pair_round_trip(tmp_path, small_idx, gz):
    images, labels = small_idx
    images_path = write(tmp_path / "i", idx_bytes(images), gz)
    labels_path = write(tmp_path / "l", idx_bytes(labels), gz)
    x, y = mnist.read_idx_pair(images_path, labels_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64


def test_idx_bad_magic_is_named(tmp_path, small_idx):
    images, labels = small_idx
    labels_path = write(tmp_path / "labels", idx_bytes(labels))
    # a label file where an image file is expected: magic 0x801 instead of 0x803
    with pytest.raises(DataError, match=r"labels.*magic number 0x00000801, expected 0x00000803"):
        mnist.read_idx_file(labels_path, mnist.IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_is_named(tmp_path, small_idx, gz):
    images, _ = small_idx
    content = idx_bytes(images)
    path = write(tmp_path / "images", content[:-100], gz)
    with pytest.raises(DataError, match=r"images: truncated: 3836 bytes, expected 3936"):
        mnist.read_idx_file(path, mnist.IMAGES_MAGIC)


def test_idx_truncated_gzip_stream_is_named(tmp_path, small_idx):
    images, _ = small_idx
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-30])  # the gzip stream itself is cut
    with pytest.raises(DataError, match=r"images.gz: cannot be decompressed"):
        mnist.read_idx_file(str(path), mnist.IMAGES_MAGIC)


def test_idx_truncated_header(tmp_path):
    path = write(tmp_path / "images", bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated IDX header"):
        mnist.read_idx_file(path, mnist.IMAGES_MAGIC)


def test_idx_extra_bytes(tmp_path, small_idx):
    _, labels = small_idx
    path = write(tmp_path / "labels", idx_bytes(labels) + b"\0")
    with pytest.raises(DataError, match="longer than its header says"):
        mnist.read_idx_file(path, mnist.LABELS_MAGIC)


def test_idx_count_mismatch(tmp_path, small_idx):
    images, labels = small_idx
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(labels[:4]))
    with pytest.raises(DataError, match=r"holds 5 images but .*labels holds 4 labels"):
        mnist.read_idx_pair(images_path, labels_path)


def test_idx_label_out_of_range(tmp_path, small_idx):
    images, labels = small_idx
    labels = labels.copy()
    labels[2] = 12
    with pytest.raises(DataError, match="label 12, expected digits 0..9"):
        mnist.read_idx_pair(write(tmp_path / "i", idx_bytes(images)), write(tmp_path / "l", idx_bytes(labels)))


def test_checksum_mismatch_is_detected_and_named(tmp_path, small_idx):
    """A well-formed file under an official name whose content is not the official one."""
    _, labels = small_idx
    directory = tmp_path / "mnist"
    directory.mkdir()
    labels_path = write(directory / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        mnist.read_idx_file(labels_path, mnist.LABELS_MAGIC, mnist.FILES["t10k-labels-idx1-ubyte"])


def test_missing_data_message_says_where_to_put_which_files(tmp_path):
    with pytest.raises(DataError) as error:
        MNIST(root=tmp_path, train=False, download=False)
    message = str(error.value)
    assert str(tmp_path / "mnist") in message
    for name in mnist.FILES:
        assert name + ".gz" in message
    assert "TINYCNN_DATA" in message and "\n" not in message


def test_missing_data_without_network_names_mirrors_and_files(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        MNIST(root=tmp_path, train=False, download=True)
    message = str(error.value)
    assert "could not be downloaded" in message and mnist.MIRRORS[0] in message
    assert str(tmp_path / "mnist") in message and "t10k-images-idx3-ubyte.gz" in message
    assert not any((tmp_path / "mnist").iterdir())  # no partial file left behind


def _serve(monkeypatch, files):
    """Replace the network with a dict url -> bytes (or an exception to raise mid-transfer)."""
    requested = []

    class Response(io.BytesIO):
        def __init__(self, content, fail_after=None):
            super().__init__(content)
            self.fail_after = fail_after

        def read(self, n=-1):
            if self.fail_after is not None and self.tell() >= self.fail_after:
                raise ConnectionResetError("connection lost mid-transfer")
            return super().read(min(n, 1000) if n > 0 else 1000)

    def urlopen(url, timeout=None):
        requested.append(url)
        if url not in files:
            raise urllib.error.URLError(f"404 for {url}")
        content, fail_after = files[url]
        return Response(content, fail_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_is_atomic_and_verified(tmp_path, monkeypatch):
    good = gzip.compress(b"the real content")
    sha = hashlib.sha256(b"the real content").hexdigest()
    bad = gzip.compress(b"something else")
    destination = tmp_path / "d" / "file.gz"

    def check(path):
        digest = download.file_digest(path, decompress=True)
        if digest != sha:
            raise DataError(f"{path}: checksum mismatch")

    # mirror 1 dies mid-transfer, mirror 2 serves wrong bytes, mirror 3 is right
    requested = _serve(monkeypatch, {"m1/f": (good, 5), "m2/f": (bad, None), "m3/f": (good, None)})
    seen = []
    original_replace = os.replace

    def replace(src, dst):
        seen.append(sorted(os.listdir(tmp_path / "d")))
        original_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    download.download(["m1/f", "m2/f", "m3/f"], str(destination), check)
    assert requested == ["m1/f", "m2/f", "m3/f"]
    assert destination.read_bytes() == good
    assert len(seen) == 1 and seen[0][0].startswith(".download-")  # written aside, then renamed
    assert os.listdir(tmp_path / "d") == ["file.gz"]


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
    _serve(monkeypatch, {"m1/f": (b"x" * 5000, 2000)})
    destination = tmp_path / "file.gz"
    with pytest.raises(DataError, match="connection lost mid-transfer"):
        download.download(["m1/f"], str(destination), lambda path: None)
    assert os.listdir(tmp_path) == []


def test_interrupted_by_keyboard_leaves_no_file(tmp_path, monkeypatch):
    def check(path):
        raise KeyboardInterrupt
    _serve(monkeypatch, {"m/f": (b"abc", None)})
    with pytest.raises(KeyboardInterrupt):
        download.download(["m/f"], str(tmp_path / "f"), check)
    assert os.listdir(tmp_path) == []


def test_mnist_download_goes_through_checksum(tmp_path, monkeypatch):
    """Mirrors serving a non-official file: the loader refuses it and keeps nothing."""
    fake = {"images": idx_bytes(np.zeros((10, 28, 28), np.uint8)), "labels": idx_bytes(np.arange(10, dtype=np.uint8))}
    files = {m + name + ".gz": (gzip.compress(fake[name.split("-")[1]]), None)
             for m in mnist.MIRRORS for name in mnist.FILES}
    _serve(monkeypatch, files)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: the downloaded file: checksum mismatch"):
        MNIST(root=tmp_path, train=False)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYCNN_DATA", str(tmp_path))
    assert download.data_root() == str(tmp_path)
    monkeypatch.delenv("TINYCNN_DATA")
    assert download.data_root() == os.path.expanduser("~/.cache/tinycnn")
    assert download.data_root("rel") == os.path.abspath("rel")


def real_mnist_root():
    """The directory of the real MNIST files: required in CI, which sets TINYCNN_DATA; a run by hand
    without them skips the tests that need them."""
    root = os.environ.get("TINYCNN_DATA")
    if not os.environ.get("CI") and (not root or mnist.find_file("t10k-images-idx3-ubyte",
                                                                download.data_root(root)) is None):
        pytest.skip("the real MNIST files are not here (set TINYCNN_DATA=../shared/data, as CI does)")
    return download.data_root(root)


@pytest.fixture(scope="module")
def mnist_test_set():
    return MNIST(root=real_mnist_root(), train=False, download=False)


def test_real_mnist_files(mnist_test_set):
    """The official test set: shape, label balance and the first labels, as published."""
    assert mnist_test_set.images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(mnist_test_set.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert np.bincount(mnist_test_set.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_corrupted_copy_of_real_file_is_named(tmp_path, mnist_test_set):
    source = mnist.find_file("t10k-labels-idx1-ubyte", download.data_root())
    content = bytearray(download.read_maybe_gzip(source))
    content[100] = (content[100] + 1) % 10  # one label changed: the format is still valid
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz",):
        os.symlink(mnist.find_file("t10k-images-idx3-ubyte", download.data_root()), tmp_path / "mnist" / name)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: checksum mismatch"):
        MNIST(root=tmp_path, train=False, download=False)


def cifar_batch(rng, n):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    # as the official files: a Python 2 pickle (protocol 2) of a dict with bytes keys
    return data, labels, pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels,
                                       b"filenames": [b"a.png"] * n}, protocol=2)


def write_cifar_archive(path, rng, n=4):
    batches = {}
    with tarfile.open(path, "w:gz") as archive:
        for name in cifar.TRAIN_BATCHES + cifar.TEST_BATCHES:
            data, labels, content = cifar_batch(rng, n)
            batches[name] = (data, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return batches


def test_cifar10_from_archive(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    archive = tmp_path / "cifar10" / cifar.ARCHIVE
    batches = write_cifar_archive(archive, np.random.default_rng(1))
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    train = CIFAR10(root=tmp_path, train=True, download=False)
    test = CIFAR10(root=tmp_path, train=False, download=False)
    assert len(train) == 20 and len(test) == 4
    data, labels = batches["data_batch_2"]
    # row layout: 1024 red values (32 rows of 32), then green, then blue
    np.testing.assert_array_equal(train.images[4, 0, 1, :], data[0, 32:64])
    np.testing.assert_array_equal(train.images[5, 2, 31, 31], data[1, 3071])
    np.testing.assert_array_equal(train.labels[4:8], labels)
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])


def test_cifar10_archive_checksum(tmp_path):
    (tmp_path / "cifar10").mkdir()
    write_cifar_archive(tmp_path / "cifar10" / cifar.ARCHIVE, np.random.default_rng(1))
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: checksum mismatch: MD5"):
        CIFAR10(root=tmp_path, download=False)


def test_cifar10_from_directory_and_bad_batch(tmp_path):
    directory = tmp_path / "cifar10" / cifar.DIRECTORY
    directory.mkdir(parents=True)
    data, labels, content = cifar_batch(np.random.default_rng(2), 3)
    (directory / "test_batch").write_bytes(content)
    test = CIFAR10(root=tmp_path, train=False, download=False)
    assert test.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(test.images.reshape(3, -1), data)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": data[:, :100], b"labels": labels}))
    with pytest.raises(DataError, match=r"test_batch: expected data as uint8 \(N, 3072\)"):
        CIFAR10(root=tmp_path, train=False, download=False)
    with pytest.raises(DataError, match="data_batch_1 is missing"):
        CIFAR10(root=tmp_path, train=True, download=False)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    directory = tmp_path / "cifar10" / cifar.DIRECTORY
    directory.mkdir(parents=True)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        CIFAR10(root=tmp_path, train=False, download=False)


def test_cifar10_missing_message(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10: neither .*cifar10.*Put cifar-10-python.tar.gz"):
        CIFAR10(root=tmp_path, download=False)


def test_normalize_matches_two_step_formula():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    y = transforms.Normalize(mean, std)(x)
    expected = (x / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Normalize: 3 channel means given for images with 1 channels"):
        transforms.Normalize(mean, std)(x[:, :1])
    with pytest.raises(ValueError, match=r"Normalize: expected a batch of images \(B, C, H, W\), got shape \(4, 5\)"):
        transforms.Normalize(mean, std)(x[0, 0])


def test_random_crop_and_flip_per_image():
    B = 64
    x = np.arange(B * 2 * 5 * 5).reshape(B, 2, 5, 5)
    crop = transforms.RandomCrop(5, padding=2)(x, np.random.default_rng(0))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for b in range(B):  # each crop is some 5x5 window of its own padded image
        windows = [(i, j) for i in range(5) for j in range(5) if np.array_equal(padded[b, :, i:i + 5, j:j + 5], crop[b])]
        assert windows, f"image {b} is not a window of its padded image"
        offsets.add(windows[0])
    assert len(offsets) > 5  # offsets differ between images
    flipped = transforms.RandomHorizontalFlip()(x, np.random.default_rng(0))
    mirrored = [np.array_equal(flipped[b], x[b, :, :, ::-1]) for b in range(B)]
    kept = [np.array_equal(flipped[b], x[b]) for b in range(B)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54


def test_ten_crop():
    x = np.arange(2 * 1 * 6 * 6).reshape(2, 1, 6, 6)
    crops = transforms.TenCrop(4)(x)
    assert crops.shape == (2, 10, 1, 4, 4)
    np.testing.assert_array_equal(crops[:, 0], x[:, :, :4, :4])
    np.testing.assert_array_equal(crops[:, 3], x[:, :, 2:, 2:])
    np.testing.assert_array_equal(crops[:, 4], x[:, :, 1:5, 1:5])
    np.testing.assert_array_equal(crops[:, 9], x[:, :, 1:5, 1:5][..., ::-1])
    np.testing.assert_array_equal(transforms.CenterCrop(4)(x), x[:, :, 1:5, 1:5])
    np.testing.assert_array_equal(transforms.Pad(1)(x)[:, :, 1:-1, 1:-1], x)


def test_dataloader_batches_shuffle_and_drop_last():
    x, y = np.arange(10)[:, None] * 1.0, np.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, seed=3)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(loader) == 3
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == list(range(10))
    np.testing.assert_array_equal(batches[0][0][:, 0], batches[0][1])
    assert [len(b[1]) for b in DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True)] == [4, 4]
    in_order = np.concatenate([b[1] for b in DataLoader(TensorDataset(x, y), batch_size=3)])
    np.testing.assert_array_equal(in_order, np.arange(10))
    with pytest.raises(ValueError, match="DataLoader: batch_size must be a positive integer, got 0"):
        DataLoader(TensorDataset(x, y), batch_size=0)


def _epochs(loader, n):
    return [[(bx.copy(), by.copy()) for bx, by in loader] for _ in range(n)]


@pytest.mark.parametrize("prefetch", [0, 3])
def test_dataloader_reproducible_and_resumable(prefetch):
    """Same seed, same batches; restoring the state saved after epoch 1 replays epoch 2 exactly,
    with the random transforms too, whether batches are prepared in a thread or not."""
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 6, 6), dtype=np.uint8)
    dataset = TensorDataset(x, np.arange(50), transform=transforms.Compose(
        [transforms.RandomCrop(6, padding=1), transforms.RandomHorizontalFlip(), transforms.ToFloat()]))
    reference = _epochs(DataLoader(dataset, 8, shuffle=True, seed=7), 2)
    loader = DataLoader(dataset, 8, shuffle=True, seed=7, prefetch=prefetch)
    first = _epochs(loader, 1)[0]
    state = loader.state_dict()
    resumed = DataLoader(dataset, 8, shuffle=True, seed=12345, prefetch=prefetch)
    resumed.load_state_dict(state)
    second = _epochs(resumed, 1)[0]
    for got, expected in zip(first + second, reference[0] + reference[1]):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert not np.array_equal(reference[0][0][1], reference[1][0][1])  # epochs differ


def test_dataloader_seed_follows_manual_seed():
    dataset = TensorDataset(np.arange(20), np.arange(20))
    tinycnn.manual_seed(5)
    a = np.concatenate([b[1] for b in DataLoader(dataset, 5, shuffle=True)])
    tinycnn.manual_seed(5)
    b = np.concatenate([b[1] for b in DataLoader(dataset, 5, shuffle=True)])
    np.testing.assert_array_equal(a, b)


def test_dataloader_prefetch_error_and_early_stop():
    class Broken(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 6:
                raise RuntimeError("item 6 is broken")
            return np.array([i]), i

    loader = DataLoader(Broken(), 2, prefetch=2)
    with pytest.raises(RuntimeError, match="item 6 is broken"):
        list(loader)
    for i, (bx, by) in enumerate(DataLoader(TensorDataset(np.arange(100), np.arange(100)), 2, prefetch=2)):
        if i == 3:
            break  # the worker thread must stop, not block forever
    np.testing.assert_array_equal(by, [6, 7])


def test_subset_and_generic_dataset():
    dataset = TensorDataset(np.arange(10) * 10, np.arange(10), transform=lambda x, rng: x + 1)
    subset = Subset(dataset, [9, 2, 5])
    assert len(subset) == 3 and subset[1] == (21, 2)
    bx, by = next(iter(DataLoader(subset, 3)))
    np.testing.assert_array_equal(bx, [91, 21, 51])
    with pytest.raises(IndexError, match=r"Subset: indices must lie in \[0, 10\)"):
        Subset(dataset, [10])
    with pytest.raises(ValueError, match=r"TensorDataset: all arrays must have the same length, got lengths \[3, 2\]"):
        TensorDataset(np.zeros(3), np.zeros(2))
