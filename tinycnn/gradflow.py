"""Gradient flow against depth: the size of each layer's weight gradient, from the input to the output.

    rows = tinycnn.gradflow.measure(model, images, labels)    # one forward + backward
    rows[0]  # {'layer': 'conv1', 'kind': 'conv', 'depth': 1, 'grad_norm': ..., 'weight_norm': ..., 'ratio': ...}

or from the shell, at initialisation and after K steps of SGD on MNIST:

    tinycnn gradflow plain56 resnet56 --steps 100 --out runs/gradflow

which writes gradflow.png (gradient norm and gradient/weight ratio against depth) and gradflow.csv,
and prints, for each network, the first convolution's gradient norm over the last's. In a deep plain
network the gradient shrinks (or grows) layer by layer on its way back; the identity shortcuts of a
ResNet add a path on which it passes unchanged (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, section 3.1; "Identity Mappings in Deep Residual Networks", ECCV 2016,
eq. 5), so the ratio stays near 1.

The layers are the convolutions and fully connected layers (nn.Conv2d, nn.Linear) in the order of
the forward pass; their weights are measured (biases are left out: they are few and scale
differently). A layer's depth is its rank when the layers are sorted by the generation of the first
operation that reads its weight, so branches that run side by side (GoogLeNet) are ordered by how
far they are from the input, and a weight used inside another module's forward (LeNet-5's C3) is
found all the same. A layer whose weight gets no gradient from the loss (an auxiliary head whose
output is not used) is left out.
"""
import csv
import os

import numpy

import tinycnn
import tinycnn.functional as F
from tinycnn import backend, nn, optim
from tinycnn.autograd import Tensor

__all__ = ["cli_command", "first_to_last_conv_ratio", "measure", "plot", "train_steps", "write_csv"]

CSV_FIELDS = ("model", "stage", "step", "layer", "kind", "depth", "grad_norm", "weight_norm", "ratio")


def _logits(output):
    """The main logits of a network's output (GoogLeNet and Inception v3 also return auxiliary ones)."""
    return output[0] if isinstance(output, tuple) else output


def _weight_layers(model):
    """(path, module, kind) of every convolution and fully connected layer with a trained weight."""
    layers = []
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
            layers.append((path, module, "conv" if isinstance(module, nn.Conv2d) else "linear"))
    return layers


def _first_reading_generation(output, weight_ids):
    """id(weight) -> the smallest generation of a Function that reads it, walking the graph of `output`."""
    generation, seen = {}, set()
    stack = [output.creator] if output.creator is not None else []
    while stack:
        function = stack.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        for x in function.inputs:
            if x is None:
                continue
            if id(x) in weight_ids:
                generation[id(x)] = min(generation.get(id(x), function.generation), function.generation)
            if x.creator is not None:
                stack.append(x.creator)
    return generation


def measure(model, images, labels):
    """One forward and backward of the mean cross-entropy on (images, labels); returns one dict per
    layer, from the input to the output, with the layer's path, kind ('conv' or 'linear'), depth
    (1, 2, ...), the Frobenius norms of its weight's gradient and of the weight, and their ratio.

    The model's gradients are zeroed first and left holding this batch's; the model stays in its
    mode (in training mode BatchNorm uses, and updates, the batch statistics).
    """
    layers = _weight_layers(model)
    if not layers:
        raise ValueError(f"gradflow.measure: {type(model).__name__} has no Conv2d or Linear layer to measure")
    images = images if isinstance(images, Tensor) else Tensor(images)
    model.zero_grad()
    logits = _logits(model(images))
    loss = F.cross_entropy(logits, labels)
    first_read = _first_reading_generation(loss, {id(module.weight) for _, module, _ in layers})
    loss.backward()

    reached = [(first_read[id(module.weight)], index, path, module, kind)
               for index, (path, module, kind) in enumerate(layers)
               if id(module.weight) in first_read and module.weight.grad is not None]
    rows = []
    for depth, (_, _, path, module, kind) in enumerate(sorted(reached, key=lambda item: item[:2]), start=1):
        grad_norm = float(numpy.linalg.norm(backend.to_cpu(module.weight.grad).astype(numpy.float64)))
        weight_norm = float(numpy.linalg.norm(backend.to_cpu(module.weight.data).astype(numpy.float64)))
        rows.append({"layer": path, "kind": kind, "depth": depth, "grad_norm": grad_norm,
                     "weight_norm": weight_norm, "ratio": grad_norm / weight_norm if weight_norm else float("inf")})
    return rows


def first_to_last_conv_ratio(rows):
    """The first convolution's gradient norm divided by the last's (rows as measure returns them)."""
    convs = [row for row in rows if row["kind"] == "conv"]
    if not convs:
        raise ValueError("gradflow: the network has no convolution")
    return convs[0]["grad_norm"] / convs[-1]["grad_norm"]


def train_steps(model, optimizer, batches, steps):
    """`steps` SGD steps of cross-entropy on the (images, labels) pairs `batches` yields; returns the losses."""
    losses = []
    for _ in range(steps):
        images, labels = next(batches)
        loss = F.cross_entropy(_logits(model(Tensor(images))), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def write_csv(records, path):
    """records: dicts with the keys of CSV_FIELDS (a measure() row plus model, stage and step)."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow({key: record[key] for key in CSV_FIELDS})


def plot(records, path, dpi=90):
    """Gradient norm and gradient/weight ratio against depth, one colour per model; solid at
    initialisation, dashed after training."""
    import matplotlib
    matplotlib.use("Agg")  # files only; also works without a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    models_in_order = list(dict.fromkeys(record["model"] for record in records))
    stages = list(dict.fromkeys((record["stage"], record["step"]) for record in records))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(models_in_order):
        for stage_index, (stage, step) in enumerate(stages):
            rows = [r for r in records if r["model"] == name and r["stage"] == stage]
            if not rows:
                continue
            depths = [r["depth"] for r in rows]
            style = dict(color=colours[index % len(colours)], linestyle="-" if stage_index == 0 else "--",
                         marker=".", markersize=3, linewidth=1)
            label = f"{name}, {stage}" + (f" ({step} steps)" if step else "")
            left.plot(depths, [r["grad_norm"] for r in rows], label=label, **style)
            right.plot(depths, [r["ratio"] for r in rows], label=label, **style)
    left.set(xlabel="layer (conv / fc, input to output)", ylabel="||dL/dW||", yscale="log",
             title="weight-gradient norm")
    right.set(xlabel="layer (conv / fc, input to output)", ylabel="||dL/dW|| / ||W||", yscale="log",
              title="gradient / weight norm")
    for axes in (left, right):
        axes.grid(alpha=0.3, which="both")
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def _build(name, in_channels):
    import tinycnn.models as models
    kwargs = {"num_classes": 10}
    if models.default_input_shape(name)[0] != in_channels:
        kwargs["in_channels"] = in_channels
    return models.create(name, **kwargs)


def _mnist(data_dir, in_channels):
    from tinycnn.data import MNIST, transforms
    normalize = transforms.Normalize(transforms.MNIST_MEAN, transforms.MNIST_STD)  # uint8 -> float32
    train_set = MNIST(root=data_dir, train=True, transform=normalize)
    if in_channels == 1:
        return train_set
    return _RepeatedChannels(train_set, in_channels)


class _RepeatedChannels:
    """MNIST's one channel copied `channels` times, for a network built for colour images."""

    def __init__(self, dataset, channels):
        self.dataset, self.channels = dataset, channels

    def __len__(self):
        return len(self.dataset)

    def get_batch(self, indices, rng=None):
        images, labels = self.dataset.get_batch(indices, rng)
        return numpy.repeat(images, self.channels, axis=1), labels


def _batches(dataset, batch_size, seed):
    """Shuffled mini-batches, epoch after epoch, without end."""
    from tinycnn.data import DataLoader
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, seed=seed)
    while True:
        yield from loader


def cli_command(args):
    """`tinycnn gradflow MODEL [MODEL ...] [--steps K] --out DIR`: the PNG, the CSV and the ratios."""
    import tinycnn.models as models
    from tinycnn.errors import UserError
    for name in args.models:  # an unknown name fails here, before any data is read
        try:
            models.default_input_shape(name)
        except ValueError as error:  # the only ValueError it raises: an unknown name, with close ones
            raise UserError(f"gradflow: {error}") from None
    dataset = _mnist(args.data_dir, args.in_channels)
    # The batch every measurement uses: the same images at initialisation and after training.
    probe = numpy.random.default_rng(args.seed).choice(len(dataset), args.batch_size, replace=False)
    probe_images, probe_labels = dataset.get_batch(probe)
    os.makedirs(args.out, exist_ok=True)
    records = []
    for name in args.models:
        tinycnn.manual_seed(args.seed)
        model = _build(name, args.in_channels)
        stages = [("init", 0)] + ([("trained", args.steps)] if args.steps else [])
        for stage, step in stages:
            if step:
                optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
                losses = train_steps(model, optimizer, _batches(dataset, args.batch_size, args.seed), step)
                print(f"{name}: {step} SGD steps (lr {args.lr}, batch {args.batch_size}), loss "
                      f"{losses[0]:.3f} -> {losses[-1]:.3f}")
            try:
                rows = measure(model, probe_images, probe_labels)
            except ValueError as error:  # a layer refused the input: the network does not fit MNIST
                if step:
                    raise  # it took the same images before training: a bug
                raise UserError(f"gradflow {name}: the network does not take {args.batch_size} MNIST images of "
                                f"{args.in_channels}x28x28: {error}") from None
            records += [dict(row, model=name, stage=stage, step=step) for row in rows]
            convs = [row for row in rows if row["kind"] == "conv"]
            print(f"{name} {stage + (f' ({step} steps)' if step else '')}: first conv ({convs[0]['layer']}) "
                  f"gradient norm {convs[0]['grad_norm']:.3e}, last conv ({convs[-1]['layer']}) "
                  f"{convs[-1]['grad_norm']:.3e}, first/last = {first_to_last_conv_ratio(rows):.3g}")
    csv_path = os.path.join(args.out, "gradflow.csv")
    png_path = os.path.join(args.out, "gradflow.png")
    write_csv(records, csv_path)
    plot(records, png_path)
    print(f"wrote {png_path} and {csv_path}")
    return 0
