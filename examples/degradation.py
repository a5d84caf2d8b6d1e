"""The degradation problem on MNIST: deeper plain networks train worse; residual ones do not.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Fig. 1 and Fig. 6: on
CIFAR-10 a 56-layer plain network has a higher *training* error than a 20-layer one, so the
trouble is optimisation, not overfitting; with identity shortcuts (ResNet-56) the deeper network
is the better one. This script trains plain20, plain56, resnet20 and resnet56 (the paper's CIFAR
networks, section 4.2, built for 1-channel 28x28 input) on MNIST for the same number of steps,
from the same seed, with the same data order, and draws their training-error curves.

    TINYCNN_DATA=../shared/data python examples/degradation.py --out runs/degradation
    python examples/degradation.py --quick                                # a few seconds

It writes DIR/degradation.png (training error against step, a moving average over --window
steps of each mini-batch's error measured in the forward pass of its own step, before the update)
and DIR/degradation.csv (model, step, loss, batch_error for every step), and prints for each
network the final moving-average training error and, in evaluation mode, its error on --eval
training images and on as many test images.
"""
import argparse
import csv
import os
import time

import numpy

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import optim
from tinycnn.data import MNIST, DataLoader, Subset, transforms
from tinycnn.train import evaluate

NETWORKS = ("plain20", "plain56", "resnet20", "resnet56")


def batches_without_end(loader):
    while True:
        yield from loader


def moving_average(values, window):
    """The mean of the last `window` values at each step (fewer at the start)."""
    sums = numpy.cumsum(numpy.concatenate([[0.0], values]))
    steps = numpy.arange(1, len(values) + 1)
    starts = numpy.maximum(steps - window, 0)
    return (sums[steps] - sums[starts]) / (steps - starts)


def train(name, train_set, args):
    """Train one network for args.steps steps; returns (model, per-step losses, per-step batch errors)."""
    tinycnn.manual_seed(args.seed)  # the same initial weights' random stream for every network
    model = models.create(name, in_channels=1, num_classes=10)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    # The same seed: every network sees the same mini-batches in the same order.
    batches = batches_without_end(DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                             drop_last=True, seed=args.seed))
    losses, errors = [], []
    model.train()
    for _ in range(args.steps):
        images, labels = next(batches)
        logits = model(tinycnn.Tensor(images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        errors.append(float((logits.numpy().argmax(axis=1) != labels).mean()))
    return model, losses, errors


def plot(curves, window, path):
    import matplotlib
    matplotlib.use("Agg")  # files only; also works without a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(6.5, 4))
    colours = {"20": "#1f77b4", "56": "#d62728"}
    for name, errors in curves.items():
        depth = name[-2:]
        style = "--" if name.startswith("plain") else "-"
        steps = numpy.arange(1, len(errors) + 1)
        axes.plot(steps, 100 * moving_average(numpy.array(errors), window), style, color=colours.get(depth),
                  linewidth=1.3, label=name)
    axes.set(xlabel="training step", ylabel=f"training error (%), mean of last {window} batches",
             title="plain (dashed) against residual (solid) networks on MNIST")
    axes.set_yscale("log")  # the last percents matter: 2% against 4% is a doubling
    plain_numbers = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(plain_numbers)
    axes.yaxis.set_minor_formatter(plain_numbers)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="SGD steps for each network")
    parser.add_argument("--batch-size", type=int, default=32)
    # The paper's 0.1 at batch 128, scaled linearly to batch 32 (Goyal et al. 2017).
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="as the paper's CIFAR runs")
    parser.add_argument("--window", type=int, default=None, help="moving-average window (default: steps / 15)")
    parser.add_argument("--eval", type=int, default=2000, help="training and test images to evaluate at the end")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--out", default=os.path.join("runs", "degradation"), help="directory for the PNG and CSV")
    parser.add_argument("--data-dir", help="default: $TINYCNN_DATA, else ~/.cache/tinycnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 steps of 16 images, 64 evaluation images")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.eval = 3, 16, 64
    window = args.window or max(1, args.steps // 15)

    normalize = transforms.Normalize(transforms.MNIST_MEAN, transforms.MNIST_STD)  # uint8 -> float32
    train_set = MNIST(root=args.data_dir, train=True, transform=normalize)
    test_set = MNIST(root=args.data_dir, train=False, transform=normalize)
    # Fixed evaluation images, drawn once: the same for every network.
    pick = numpy.random.default_rng(args.seed)
    train_probe = Subset(train_set, pick.choice(len(train_set), args.eval, replace=False))
    test_probe = Subset(test_set, pick.choice(len(test_set), args.eval, replace=False))
    print(f"{args.steps} steps of {args.batch_size} MNIST images, SGD lr {args.lr} momentum 0.9 weight decay "
          f"{args.weight_decay}, seed {args.seed}")

    os.makedirs(args.out, exist_ok=True)
    curves, rows = {}, []
    for name in args.networks:
        started = time.perf_counter()
        model, losses, errors = train(name, train_set, args)
        curves[name] = errors
        rows += [(name, step, loss, error) for step, (loss, error) in enumerate(zip(losses, errors), start=1)]
        train_result = evaluate(model, DataLoader(train_probe, batch_size=250), progress=False)
        test_result = evaluate(model, DataLoader(test_probe, batch_size=250), progress=False)
        final = 100 * moving_average(numpy.array(errors), window)[-1]
        seconds = time.perf_counter() - started
        print(f"{name:9s} {model.num_parameters():>9,} parameters: training error {final:5.2f}% (last {window} "
              f"batches), eval mode: {100 - 100 * train_result['top1']:5.2f}% on {args.eval} training images, "
              f"{100 - 100 * test_result['top1']:5.2f}% on {args.eval} test images ({seconds:.0f} s)", flush=True)

    csv_path = os.path.join(args.out, "degradation.csv")
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["model", "step", "loss", "batch_error"])
        writer.writerows(rows)
    png_path = os.path.join(args.out, "degradation.png")
    plot(curves, window, png_path)
    print(f"wrote {png_path} and {csv_path}")


if __name__ == "__main__":
    main()
