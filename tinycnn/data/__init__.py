"""Data sets as arrays, batch transforms and the DataLoader.

    from tinycnn.data import MNIST, DataLoader, transforms
    train = MNIST(train=True, transform=transforms.Normalize(transforms.MNIST_MEAN, transforms.MNIST_STD))
    for x, y in DataLoader(train, batch_size=64, shuffle=True):
        ...                                     # x float32 (64, 1, 28, 28), y int64 (64,)
"""
from tinycnn.data import transforms
from tinycnn.data.cifar import CIFAR10, load_cifar10
from tinycnn.data.dataset import DataLoader, Dataset, Subset, TensorDataset
from tinycnn.data.download import DataError, data_root
from tinycnn.data.mnist import MNIST, load_mnist

__all__ = ["CIFAR10", "DataError", "DataLoader", "Dataset", "MNIST", "Subset", "TensorDataset", "data_root",
           "load_cifar10", "load_mnist", "transforms"]
