"""Figures of a training run, as PNG files (matplotlib's Agg backend: no display needed).

    paths = plot_run("runs/lenet", model, history, test_set)

writes into the run directory
    curves.png          loss and top-1 accuracy per epoch, training and test
    filters.png         the first convolution's filters, one tile per output channel (and input
                        channel when there are several input channels other than RGB)
    feature_maps.png    one test image and the first convolution's output maps for it
    confusion.png       the confusion matrix on the test set (rows: true class, columns: predicted)

The curves need only the history and the filters only the weights; `tinycnn plot` draws those even
where the data set is not at hand, and says which figures it skipped.
"""
import os

import numpy

from tinycnn import backend, config, nn
from tinycnn.autograd import Tensor

FIGURES = ("curves.png", "filters.png", "feature_maps.png", "confusion.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; also works without a display
    import matplotlib.pyplot as plt
    return plt


def first_conv(model):
    """The first nn.Conv2d of the model in definition order, or None."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    return None


def _to_model_device(model, x):
    weight = next(iter(model.parameters()), None)
    return backend.to_gpu(x) if weight is not None and backend.is_gpu_array(weight.data) else x


def _grid(count):
    columns = int(numpy.ceil(numpy.sqrt(count)))
    return -(-count // columns), columns


def plot_curves(history, path):
    """Loss and accuracy per epoch (training and, where measured, test)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        if all(key in row for row in history):
            left.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for key, label in (("train_top1", "train top-1"), ("test_top1", "test top-1"), ("test_top5", "test top-5")):
        if all(key in row for row in history):
            right.plot(epochs, [100 * row[key] for row in history], marker="o", label=label)
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_filters(model, path):
    """The first convolution's weights as a grid of images, each scaled to its own range (a
    filter's pattern, not its magnitude, is what shows what it detects)."""
    conv = first_conv(model)
    if conv is None:
        raise ValueError(f"plot_filters: {type(model).__name__} has no Conv2d layer")
    W = backend.to_cpu(conv.weight.data)  # (OC, IC, KH, KW)
    OC, IC = W.shape[:2]
    if IC == 3:
        tiles = W.transpose(0, 2, 3, 1)  # (OC, KH, KW, 3): RGB filters shown in colour
    else:
        tiles = W.reshape((OC * IC,) + W.shape[2:])  # (OC*IC, KH, KW): one grey tile per input channel
    plt = _pyplot()
    rows, columns = _grid(len(tiles))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.9 + 0.5, rows * 0.9 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(tiles):
            tile = tiles[i]
            tile = (tile - tile.min()) / max(float(tile.max() - tile.min()), 1e-12)
            ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest")
    figure.suptitle(f"first convolution: {OC} filters {W.shape[2]}x{W.shape[3]} over {IC} channel(s)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_feature_maps(model, image, path, label=None):
    """The image (C, H, W, as the network sees it) and the first convolution's output maps for it."""
    conv = first_conv(model)
    if conv is None:
        raise ValueError(f"plot_feature_maps: {type(model).__name__} has no Conv2d layer")
    captured = []
    # A copy: an in-place ReLU after the conv (VGG, AlexNet, under no_grad) overwrites its output.
    handle = conv.register_forward_hook(lambda module, inputs, output: captured.append(output.data.copy()))
    was_training = model.training
    model.eval()
    try:
        with config.no_grad():
            model(Tensor(_to_model_device(model, image[None])))  # a batch of one (1, C, H, W)
    finally:
        handle.remove()
        model.train(was_training)
    maps = backend.to_cpu(captured[0])[0]  # (OC, OH, OW)
    plt = _pyplot()
    rows, columns = _grid(len(maps) + 1)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.2 + 0.5, rows * 1.2 + 0.6), squeeze=False)
    shown = backend.to_cpu(image)
    shown = shown.transpose(1, 2, 0) if shown.shape[0] == 3 else shown[0]  # (H, W, 3) or (H, W)
    shown = (shown - shown.min()) / max(float(shown.max() - shown.min()), 1e-12)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i == 0:
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray")
            ax.set_title("input" if label is None else f"input ({label})", fontsize=8)
        elif i <= len(maps):
            ax.imshow(maps[i - 1], cmap="viridis")
            ax.set_title(str(i - 1), fontsize=7)
    figure.suptitle(f"first convolution's {len(maps)} feature maps")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(confusion, path, class_names=None):
    """The confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    confusion = numpy.asarray(confusion)
    K = len(confusion)
    names = list(class_names) if class_names is not None else [str(k) for k in range(K)]
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(max(5, 0.55 * K + 2), max(4.5, 0.5 * K + 1.5)))
    image = ax.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=ax)
    large = confusion.max() / 2 if confusion.size else 0
    if K <= 20:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > large else "black")
    ax.set_xticks(range(K), names, rotation=45 if K > 10 else 0)
    ax.set_yticks(range(K), names)
    accuracy = numpy.trace(confusion) / max(confusion.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({confusion.sum()} test images, "
                                                    f"{accuracy:.2%} correct)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_test_figures(directory, model, test_set, device="cpu", num_classes=None):
    """The two figures that need the test set, feature_maps.png and confusion.png; returns their paths."""
    from tinycnn import data
    from tinycnn.train import evaluate
    x, y = test_set.get_batch(numpy.array([0]), numpy.random.default_rng(0))
    paths = [plot_feature_maps(model, x[0], os.path.join(directory, "feature_maps.png"), label=int(y[0]))]
    classes = getattr(test_set, "classes", None)
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    elif num_classes is None:  # the width of the network's output
        with config.no_grad():
            model.eval()
            num_classes = model(Tensor(_to_model_device(model, x))).shape[1]
    result = evaluate(model, data.DataLoader(test_set, batch_size=500), device, progress=False,
                      num_classes=num_classes)
    paths.append(plot_confusion(result["confusion"], os.path.join(directory, "confusion.png"), classes))
    return paths


def plot_run(directory, model, history, test_set, device="cpu", num_classes=None):
    """All four figures of a run into `directory`; returns the paths written."""
    os.makedirs(directory, exist_ok=True)
    paths = [plot_curves(history, os.path.join(directory, "curves.png")),
             plot_filters(model, os.path.join(directory, "filters.png"))]
    return paths + plot_test_figures(directory, model, test_set, device, num_classes)
