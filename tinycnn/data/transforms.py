"""Transforms that work on a whole batch of images (B, C, H, W) at once.

A transform is called as `transform(x, rng)`: x is a batch, rng the numpy Generator that random
transforms draw from (the DataLoader passes one per batch, see tinycnn.data.dataset; None uses
tinycnn's global generator). Per-image randomness (crop offsets, flips) is drawn as arrays of B
values and applied with fancy indexing, with no Python loop over the images.

    train = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(CIFAR10_MEAN, CIFAR10_STD)])
"""
import numpy

from tinycnn import random

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _check_batch(name, x):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")


def _pair(name, value):
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{name}: expected a size as an int or (height, width), got {value!r}")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class ToFloat:
    """uint8 images in 0..255 -> float32 in [0, 1] (as torchvision's ToTensor)."""

    def __call__(self, x, rng=None):
        if x.dtype.kind in "ui":
            return x.astype(numpy.float32) * numpy.float32(1 / 255)
        return x.astype(numpy.float32, copy=False)

    def __repr__(self):
        return "ToFloat()"


class Normalize:
    """(x - mean) / std per channel, in float32. Integer images are first read as x / 255, so
    `Normalize(MNIST_MEAN, MNIST_STD)` alone turns a uint8 batch into the network's input (one pass
    over the data instead of two)."""

    def __init__(self, mean, std):
        self.mean = numpy.asarray(mean, dtype=numpy.float32).reshape(-1)
        self.std = numpy.asarray(std, dtype=numpy.float32).reshape(-1)
        if self.mean.shape != self.std.shape or (self.std <= 0).any():
            raise ValueError(f"Normalize: expected mean and std of one value per channel with std > 0, got "
                             f"mean {tuple(self.mean)} and std {tuple(self.std)}")

    def __call__(self, x, rng=None):
        _check_batch("Normalize", x)
        C = x.shape[1]
        if len(self.mean) not in (1, C):
            raise ValueError(f"Normalize: {len(self.mean)} channel means given for images with {C} channels")
        scale = numpy.float32(1 / 255) if x.dtype.kind in "ui" else numpy.float32(1)
        # x * (scale / std) - mean / std: one multiply-add per pixel; (C,) -> (1, C, 1, 1) to broadcast
        gain = (scale / self.std).reshape(1, -1, 1, 1)
        shift = (self.mean / self.std).reshape(1, -1, 1, 1)
        return x.astype(numpy.float32) * gain - shift

    def __repr__(self):
        return f"Normalize(mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())})"


class Pad:
    """Pad height and width with a constant (MNIST's 28x28 to LeNet-5's 32x32: Pad(2))."""

    def __init__(self, padding, fill=0):
        self.padding, self.fill = int(padding), fill

    def __call__(self, x, rng=None):
        _check_batch("Pad", x)
        p = self.padding
        return numpy.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill)

    def __repr__(self):
        return f"Pad({self.padding})"


def _crop(x, top, left, h, w):
    """Crop image b of x at (top[b], left[b]) to h x w, for all b at once."""
    B, C = x.shape[:2]
    rows = top[:, None] + numpy.arange(h)   # (B, h)
    cols = left[:, None] + numpy.arange(w)  # (B, w)
    # Index arrays broadcast to (B, C, h, w): image, channel, row, column.
    return x[numpy.arange(B)[:, None, None, None], numpy.arange(C)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


class RandomCrop:
    """Pad by `padding` (zeros), then cut a random size x size window from each image."""

    def __init__(self, size, padding=0):
        self.size = _pair("RandomCrop", size)
        self.padding = int(padding)

    def __call__(self, x, rng=None):
        _check_batch("RandomCrop", x)
        rng = random.generator() if rng is None else rng
        if self.padding:
            p = self.padding
            x = numpy.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        B, _, H, W = x.shape
        h, w = self.size
        if h > H or w > W:
            raise ValueError(f"RandomCrop: crop {h}x{w} is larger than the padded image {H}x{W}")
        top = rng.integers(0, H - h + 1, size=B)
        left = rng.integers(0, W - w + 1, size=B)
        return _crop(x, top, left, h, w)

    def __repr__(self):
        return f"RandomCrop({self.size}, padding={self.padding})"


class CenterCrop:
    """Cut the central size x size window of every image."""

    def __init__(self, size):
        self.size = _pair("CenterCrop", size)

    def __call__(self, x, rng=None):
        _check_batch("CenterCrop", x)
        H, W = x.shape[2:]
        h, w = self.size
        if h > H or w > W:
            raise ValueError(f"CenterCrop: crop {h}x{w} is larger than the image {H}x{W}")
        top, left = (H - h) // 2, (W - w) // 2
        return x[:, :, top:top + h, left:left + w]

    def __repr__(self):
        return f"CenterCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, rng=None):
        _check_batch("RandomHorizontalFlip", x)
        rng = random.generator() if rng is None else rng
        flip = rng.random(len(x)) < self.p  # (B,)
        x = x.copy()
        x[flip] = x[flip][..., ::-1]
        return x

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class TenCrop:
    """The evaluation protocol of AlexNet and VGG: the four corner crops, the centre crop and their
    mirror images. Returns (B, 10, C, h, w); tinycnn.train.evaluate averages the network's
    softmax over the 10 crops of each image."""

    def __init__(self, size):
        self.size = _pair("TenCrop", size)

    def __call__(self, x, rng=None):
        _check_batch("TenCrop", x)
        H, W = x.shape[2:]
        h, w = self.size
        if h > H or w > W:
            raise ValueError(f"TenCrop: crop {h}x{w} is larger than the image {H}x{W}")
        corners = [(0, 0), (0, W - w), (H - h, 0), (H - h, W - w), ((H - h) // 2, (W - w) // 2)]
        crops = [x[:, :, top:top + h, left:left + w] for top, left in corners]
        crops += [crop[..., ::-1] for crop in crops]
        return numpy.stack(crops, axis=1)  # 10 x (B, C, h, w) -> (B, 10, C, h, w)

    def __repr__(self):
        return f"TenCrop({self.size})"
