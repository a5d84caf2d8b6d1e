"""Transfer learning on MNIST: reuse a network trained on digits 0-4 to learn digits 5-9.

1. train LeNet on the digits 0-4 (the "pretrained" network) and save its weights;
2. reload them into a new LeNet, freeze everything (requires_grad_(False)), replace the last layer
   by a fresh 5-way head and train only that head on the digits 5-9;
3. compare with the same head trained on top of a random, untrained body: the features learned on
   0-4 carry over to digits the network never saw.

    TINYCNN_DATA=../shared/data python examples/transfer_learning.py [--quick]
"""
import argparse
import os
import sys
import tempfile

import numpy

import tinycnn
import tinycnn.models as models
from tinycnn import nn, optim
from tinycnn.data import MNIST, DataError, DataLoader, TensorDataset, transforms
from tinycnn.train import evaluate, fit


def digits(dataset, wanted, limit):
    """(images, labels - min(wanted)) of the first `limit` items whose label is in `wanted`."""
    keep = numpy.flatnonzero(numpy.isin(dataset.labels, wanted))[:limit]
    return TensorDataset(dataset.images[keep], dataset.labels[keep] - min(wanted), transform=dataset.transform)


def head_only(body_weights, train_set, test_set, epochs, batch_size):
    """A LeNet with `body_weights` (or a random body for None), frozen, with a new 5-way head
    trained alone; returns the test accuracy."""
    tinycnn.manual_seed(1)
    model = models.create("lenet", num_classes=5)
    if body_weights is not None:
        source = models.create("lenet", num_classes=5)
        models.load_weights(source, body_weights)
        model.load_state_dict(source.state_dict())
    model.requires_grad_(False)
    hidden = model.classifier[2].in_features
    setattr(model.classifier, "2", nn.Linear(hidden, 5))  # the new head: its parameters require grad
    trainable = [p for p in model.parameters() if p.requires_grad]
    body = {name: value.copy() for name, value in model.state_dict().items() if not name.startswith("classifier.2.")}
    optimizer = optim.SGD(trainable, lr=0.01, momentum=0.9)
    fit(model, optimizer, DataLoader(train_set, batch_size=batch_size, shuffle=True), epochs, progress=False,
        log=None)
    changed = [name for name, value in model.state_dict().items() if name in body and
               not numpy.array_equal(value, body[name])]
    if changed:
        raise RuntimeError(f"the frozen body changed during head training: {changed}")
    return evaluate(model, DataLoader(test_set, batch_size=500), progress=False)["top1"], len(trainable)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="default: $TINYCNN_DATA, else ~/.cache/tinycnn")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=10000, help="training images per task")
    parser.add_argument("--limit-test", type=int, default=5000, help="test images per task")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 1,500 / 1,000 images per task")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.limit_train, args.limit_test = 1, 1500, 1000

    normalize = transforms.Normalize(transforms.MNIST_MEAN, transforms.MNIST_STD)
    try:
        train, test = (MNIST(root=args.data_dir, train=split, transform=normalize, download=not args.no_download)
                       for split in (True, False))
    except DataError as error:  # missing or damaged files: the message says where to put them
        sys.exit(f"transfer_learning.py: error: {error}")
    first = [0, 1, 2, 3, 4]
    second = [5, 6, 7, 8, 9]

    tinycnn.manual_seed(0)
    pretrained = models.create("lenet", num_classes=5)
    fit(pretrained, optim.SGD(pretrained.parameters(), lr=0.01, momentum=0.9),
        DataLoader(digits(train, first, args.limit_train), batch_size=64, shuffle=True), args.epochs,
        progress=False, log=None)
    accuracy = evaluate(pretrained, DataLoader(digits(test, first, args.limit_test), batch_size=500),
                        progress=False)["top1"]
    print(f"pretrained on digits 0-4: test accuracy {accuracy:.2%}")

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lenet_digits_0-4.npz")
        models.save_weights(pretrained, path)
        new_train, new_test = digits(train, second, args.limit_train), digits(test, second, args.limit_test)
        transferred, trainable = head_only(path, new_train, new_test, args.epochs, 64)
    random_body, _ = head_only(None, new_train, new_test, args.epochs, 64)
    print(f"digits 5-9, only the new head trained ({trainable} parameter tensors), on the 0-4 body: "
          f"{transferred:.2%}")
    print(f"digits 5-9, only the new head trained, on a random untrained body: {random_body:.2%}")


if __name__ == "__main__":
    main()
