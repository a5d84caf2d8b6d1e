"""The `tinycnn` command (also `python -m tinycnn`).

    tinycnn train lenet --dataset mnist --epochs 8 --out runs/lenet --plots
    tinycnn train lenet --dataset mnist --epochs 10 --out runs/lenet --resume runs/lenet/last.ckpt
    tinycnn eval runs/lenet/last.ckpt
    tinycnn summary resnet18 --input 3,224,224
    tinycnn list-models

A run directory holds last.ckpt (model, optimizer, scheduler, random states, epoch, history and the
run's settings), history.json and history.csv, and with --plots the PNG figures of tinycnn.plots.
Every expected failure (unknown model, bad argument, missing data, unreadable checkpoint) prints
one line `tinycnn: error: ...` to stderr and exits with status 1 (2 for a malformed command line).
"""
import argparse
import os
import sys
import time

import tinycnn
from tinycnn import backend, checkpoint, data, optim
from tinycnn.data import transforms
import tinycnn.models as models
from tinycnn import train as training

# --augment, training images only: random shifts of up to 2 pixels for MNIST (zero padding, then a
# random 28x28 window), the usual 4-pixel-padded random crop and horizontal flip for CIFAR-10.
AUGMENTATIONS = {
    "mnist": lambda: [transforms.RandomCrop(28, padding=2)],
    "cifar10": lambda: [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()],
}
DATASETS = {
    # name: (class, channels, classes, normalization)
    "mnist": (data.MNIST, 1, 10, (transforms.MNIST_MEAN, transforms.MNIST_STD)),
    "cifar10": (data.CIFAR10, 3, 10, (transforms.CIFAR10_MEAN, transforms.CIFAR10_STD)),
}
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "cosine")

# What a resumed run takes from its command line; everything else comes from the checkpoint, so
# the continuation is built exactly like the run that wrote it.
RESUME_OVERRIDES = ("epochs", "out", "data_dir", "no_download", "no_progress", "plots", "device", "resume",
                    "limit_test")


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the usage and exits; we want the one-line error of every other failure.
        raise UsageError(f"{self.prog}: error: {message}")


def _bounded(convert, minimum, description):
    """An argparse type: `convert(text)`, refused unless it is >= minimum (NaN included)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value
    return parse


_positive_int = _bounded(int, 1, "a positive integer")
_non_negative_int = _bounded(int, 0, "an integer >= 0")
_non_negative_float = _bounded(float, 0, "a number >= 0")


def _input_shape(text):
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got {text!r}")
    return shape


def _model_arg(text):
    """KEY=VALUE with VALUE an int, a float, true/false or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def build_parser():
    parser = _Parser(prog="tinycnn", description="Train, evaluate and inspect tinycnn networks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    t = commands.add_parser("train", help="train a network on MNIST or CIFAR-10")
    t.add_argument("model", help="a name from `tinycnn list-models`")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    t.add_argument("--epochs", type=_positive_int, default=8)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--lr", type=_non_negative_float, default=0.01)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    t.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD and RMSprop momentum")
    t.add_argument("--weight-decay", type=_non_negative_float, default=0.0)
    t.add_argument("--scheduler", choices=SCHEDULERS, default="cosine",
                   help="per-epoch learning rate schedule (step: x0.1 every --step-size epochs)")
    t.add_argument("--step-size", type=_positive_int, default=None,
                   help="epochs between the x0.1 steps of --scheduler step (default: a third of the run)")
    t.add_argument("--warmup-epochs", type=_non_negative_int, default=0,
                   help="linear warm-up from lr/10 over this many epochs, then the scheduler")
    t.add_argument("--label-smoothing", type=_non_negative_float, default=0.0)
    t.add_argument("--augment", action="store_true",
                   help="random training-image shifts (MNIST: up to 2 px; CIFAR-10: 4-px crop and flip)")
    t.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument of the model's factory, e.g. padding=2 for lenet5 on MNIST")
    t.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    t.add_argument("--out", required=True, help="run directory (checkpoint, history, plots)")
    t.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    t.add_argument("--plots", action="store_true", help="write PNG figures into the run directory")
    t.add_argument("--data-dir", help="where the data set's files are (default: $TINYCNN_DATA)")
    t.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit-train", type=_positive_int, help="use only the first N training images")
    t.add_argument("--limit-test", type=_positive_int, help="use only the first N test images")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = commands.add_parser("eval", help="evaluate a checkpoint on its data set's test images")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir")
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--limit-test", type=_positive_int)
    e.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    e.add_argument("--no-progress", action="store_true")

    s = commands.add_parser("summary", help="print a network's layers, output shapes and sizes")
    s.add_argument("name")
    s.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="input shape (default: the one the network is specified for)")

    p = commands.add_parser("plot", help="(re)draw the figures of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--no-download", action="store_true")

    commands.add_parser("list-models", help="list the registered networks")
    return parser


def load_dataset(name, train, data_dir, limit=None, download=True, augment=False):
    cls, _, _, (mean, std) = DATASETS[name]
    transform = transforms.Normalize(mean, std)  # uint8 -> float32; augmentations work on the uint8 images
    if augment:
        transform = transforms.Compose(AUGMENTATIONS[name]() + [transform])
    dataset = cls(root=data_dir, train=train, transform=transform, download=download)
    if limit is not None and limit < len(dataset):
        dataset = data.Subset(dataset, range(limit))
    return dataset


def check_device(device):
    if device == "gpu" and not backend.gpu_available():
        raise ValueError("--device gpu: no GPU available (it needs CuPy and a CUDA device); use --device cpu")


def build_model(settings):
    """The network of a run's settings, built the way `train` builds it (so weights fit)."""
    _, channels, classes, _ = DATASETS[settings["dataset"]]
    kwargs = {"num_classes": classes}
    kwargs.update(dict(settings.get("model_args", {})))
    if models.default_input_shape(settings["model"])[0] != channels:
        kwargs.setdefault("in_channels", channels)
    return models.create(settings["model"], **kwargs)


def build_optimizer(settings, parameters):
    name, lr, wd, momentum = settings["optimizer"], settings["lr"], settings["weight_decay"], settings["momentum"]
    if name == "sgd":
        return optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adam":
        return optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return optim.AdamW(parameters, lr=lr, weight_decay=wd)
    return optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=wd)


def build_scheduler(settings, optimizer):
    """The per-epoch schedule: optional linear warm-up from lr/10, then step, cosine or constant."""
    epochs, warmup = settings["epochs"], settings["warmup_epochs"]
    if warmup >= epochs and warmup > 0:
        raise ValueError(f"--warmup-epochs ({warmup}) must be smaller than --epochs ({epochs})")
    rest = epochs - warmup
    if settings["scheduler"] == "step":
        main = optim.lr_scheduler.StepLR(optimizer, step_size=settings["step_size"] or max(1, rest // 3), gamma=0.1)
    elif settings["scheduler"] == "cosine":
        main = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest)
    else:
        main = optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0) if warmup else None
    if not warmup:
        return main
    # SequentialLR undoes the constructors' first steps and starts the warm-up at lr/10; at the
    # milestone the main schedule starts from its own epoch 0 (the full lr).
    warm = optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def train_command(args):
    settings = {key: value for key, value in vars(args).items() if key != "command"}
    settings["model_args"] = dict(settings.pop("model_arg"))
    models.default_input_shape(args.model)  # an unknown name fails here, before any data is read
    state = None
    if args.resume:
        state = checkpoint.load(args.resume)
        saved = state.get("settings") or {}
        if "model" not in saved:
            raise checkpoint.CheckpointError(f"{args.resume} holds no run settings: not written by `tinycnn train`")
        if saved["model"] != args.model:
            raise ValueError(f"{args.resume} is a checkpoint of {saved['model']!r}, not of {args.model!r}")
        settings = {**saved, **{key: settings[key] for key in RESUME_OVERRIDES}}
        if state["epoch"] >= settings["epochs"]:
            raise ValueError(f"{args.resume} already has {state['epoch']} epochs; ask for more with --epochs")
        if settings["epochs"] != saved["epochs"] and settings["scheduler"] != "none":
            raise ValueError(f"--epochs {settings['epochs']} differs from the {saved['epochs']} epochs the "
                             f"{settings['scheduler']} schedule of {args.resume} was built for")

    check_device(settings["device"])
    download = not settings.get("no_download", False)
    train_set = load_dataset(settings["dataset"], True, settings["data_dir"], settings["limit_train"], download,
                             settings.get("augment", False))
    test_set = load_dataset(settings["dataset"], False, settings["data_dir"], settings["limit_test"], download)

    tinycnn.manual_seed(settings["seed"])
    model = build_model(settings)
    if settings["device"] == "gpu":
        model.to("gpu")
    optimizer = build_optimizer(settings, model.parameters())
    scheduler = build_scheduler(settings, optimizer)
    train_loader = data.DataLoader(train_set, batch_size=settings["batch_size"], shuffle=True)
    test_loader = data.DataLoader(test_set, batch_size=max(settings["batch_size"], 500))

    start_epoch, history = 0, []
    if state is not None:
        start_epoch = checkpoint.restore(state, model, optimizer, scheduler, train_loader, path=args.resume)
        history = state["history"]
        print(f"resuming {args.resume} after epoch {start_epoch}")
    print(f"{settings['model']} ({model.num_parameters():,} parameters) on {settings['dataset']}: "
          f"{len(train_set)} training / {len(test_set)} test images, {settings['epochs']} epochs, "
          f"{settings['optimizer']} lr {settings['lr']}, {settings['scheduler']} schedule")
    progress = False if settings["no_progress"] else None
    started = time.perf_counter()
    history = training.fit(model, optimizer, train_loader, settings["epochs"], test_loader, scheduler,
                           device=settings["device"], label_smoothing=settings["label_smoothing"],
                           start_epoch=start_epoch, history=history, out_dir=settings["out"], settings=settings,
                           progress=progress, log=lambda line: print(line, flush=True))
    print(f"done in {time.perf_counter() - started:.1f}s: test accuracy {history[-1]['test_top1']:.2%} "
          f"({len(test_set)} images); run directory {settings['out']}")
    if settings["plots"]:
        from tinycnn import plots
        for path in plots.plot_run(settings["out"], model, history, test_set, device=settings["device"]):
            print(f"wrote {path}")
    return 0


def _model_from_checkpoint(path):
    state = checkpoint.load(path)
    settings = state.get("settings") or {}
    if "model" not in settings or "dataset" not in settings:
        raise checkpoint.CheckpointError(f"{path} holds no run settings: not written by `tinycnn train`")
    model = build_model(settings)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{path} does not fit {settings['model']}: "
                                         f"{error.args[0] if error.args else error}") from None
    return state, settings, model


def eval_command(args):
    check_device(args.device)
    state, settings, model = _model_from_checkpoint(args.checkpoint)
    if args.device == "gpu":
        model.to("gpu")
    data_dir = args.data_dir if args.data_dir is not None else settings.get("data_dir")
    test_set = load_dataset(settings["dataset"], False, data_dir, args.limit_test, not args.no_download)
    loader = data.DataLoader(test_set, batch_size=500)
    result = training.evaluate(model, loader, args.device, progress=False if args.no_progress else None)
    print(f"{settings['model']} after {state['epoch']} epochs on {len(test_set)} {settings['dataset']} test "
          f"images: loss {result['loss']:.4f}  top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}")
    return 0


def plot_command(args):
    from tinycnn import plots
    path = os.path.join(args.run_dir, "last.ckpt")
    state, settings, model = _model_from_checkpoint(path)
    data_dir = args.data_dir if args.data_dir is not None else settings.get("data_dir")
    test_set = load_dataset(settings["dataset"], False, data_dir, settings.get("limit_test"), not args.no_download)
    for written in plots.plot_run(args.run_dir, model, state["history"], test_set):
        print(f"wrote {written}")
    return 0


def summary_command(args):
    shape = args.input or models.default_input_shape(args.name)
    tinycnn.summary(models.create(args.name), shape)
    return 0


def list_models_command(args):
    for name in models.list():
        print(name)
    return 0


COMMANDS = {"train": train_command, "eval": eval_command, "summary": summary_command, "plot": plot_command,
            "list-models": list_models_command}


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"{error} (see tinycnn -h)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinycnn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, FloatingPointError) as error:
        # CheckpointError and DataError are ValueErrors; their message says what to do.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"tinycnn: error: {message}", file=sys.stderr)
        return 1
