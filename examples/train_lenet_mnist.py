"""Train the modern LeNet (Caffe's 20-50-500) on MNIST with the tinycnn API: the whole loop, no CLI.

    TINYCNN_DATA=../shared/data python examples/train_lenet_mnist.py            # ~99% in 8 epochs
    python examples/train_lenet_mnist.py --quick                                 # a smoke run

The MNIST files are read from --data-dir, else $TINYCNN_DATA, else ~/.cache/tinycnn (downloaded
there when missing).
"""
import argparse
import sys
import time

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import optim
from tinycnn.data import MNIST, DataError, DataLoader, Subset, transforms
from tinycnn.train import correct_topk, evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--limit-train", type=int, help="use only the first N training images")
    parser.add_argument("--limit-test", type=int, help="use only the first N test images")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 2,000 / 1,000 images")
    parser.add_argument("--data-dir", help="default: $TINYCNN_DATA, else ~/.cache/tinycnn")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.limit_train, args.limit_test = 1, args.limit_train or 2000, args.limit_test or 1000

    normalize = transforms.Normalize(transforms.MNIST_MEAN, transforms.MNIST_STD)  # uint8 -> float32
    try:
        train_set = MNIST(root=args.data_dir, train=True, transform=normalize, download=not args.no_download)
        test_set = MNIST(root=args.data_dir, train=False, transform=normalize, download=not args.no_download)
    except DataError as error:  # missing or damaged files: the message says where to put them
        sys.exit(f"train_lenet_mnist.py: error: {error}")
    if args.limit_train:
        train_set = Subset(train_set, range(min(args.limit_train, len(train_set))))
    if args.limit_test:
        test_set = Subset(test_set, range(min(args.limit_test, len(test_set))))

    tinycnn.manual_seed(args.seed)
    model = models.create("lenet")
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=500)
    print(f"LeNet, {model.num_parameters():,} parameters; {len(train_set)} training, {len(test_set)} test images")

    for epoch in range(1, args.epochs + 1):
        model.train()
        start, seen, correct, total_loss = time.perf_counter(), 0, 0, 0.0
        for x, y in train_loader:
            logits = model(tinycnn.Tensor(x))      # forward
            loss = F.cross_entropy(logits, y)      # loss
            optimizer.zero_grad()
            loss.backward()                        # backward
            optimizer.step()                       # update
            seen += len(y)
            total_loss += loss.item() * len(y)
            correct += correct_topk(logits.data, y, ks=(1,))[0]
        scheduler.step()
        test = evaluate(model, test_loader, progress=False)
        print(f"epoch {epoch}/{args.epochs}: train loss {total_loss / seen:.4f} acc {correct / seen:.2%}, "
              f"test acc {test['top1']:.2%}, {time.perf_counter() - start:.1f}s", flush=True)
    print(f"final test accuracy {test['top1']:.2%} on {len(test_set)} images")


if __name__ == "__main__":
    main()
