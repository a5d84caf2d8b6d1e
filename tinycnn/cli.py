"""The `tinycnn` command (also `python -m tinycnn`).

    tinycnn train lenet --dataset mnist --epochs 8 --out runs/lenet --plots
    tinycnn train lenet --dataset mnist --epochs 10 --out runs/lenet --resume runs/lenet/last.ckpt
    tinycnn eval runs/lenet/last.ckpt
    tinycnn summary resnet18 --input 3,224,224
    tinycnn list-models

A run directory holds last.ckpt (model, optimizer, scheduler, random states, epoch, history and the
run's settings), history.json and history.csv, and with --plots the PNG figures of tinycnn.plots.
`train` never replaces a run silently (--resume continues it, --overwrite replaces it once the new
run's first checkpoint is written), and it checks every path, the model and the settings before it
loads the data set, so a mistake costs no epoch.

Every expected failure (unknown model, bad argument or path, missing data, unreadable checkpoint)
raises tinycnn.errors.UserError (DataError is one; or the OSError of a path), which main() prints as one
line `tinycnn: error: ...` with exit status 1 (2 for a malformed command line). Any other exception
is a bug and keeps its traceback.
"""
import argparse
import math
import os
import sys
import tempfile
import time
import warnings

import tinycnn
from tinycnn import backend, checkpoint, data, distributed, optim
from tinycnn.data import transforms
from tinycnn.errors import UserError
from tinycnn.explain import explain_command, parse_shape
from tinycnn import gradflow, graph
import tinycnn.models as models
from tinycnn import train as training
from tinycnn.trace import trace_command
from tinycnn.onnx import cli_command as export_command

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

# A resumed run is rebuilt from its checkpoint's settings, so it continues exactly like the run
# that wrote it. These options belong to one invocation, not to the run: they always come from the
# command line (--data-dir falls back to the checkpoint's when not given).
PER_INVOCATION = ("out", "resume", "overwrite", "plots", "data_dir", "no_download", "no_progress", "device",
                  "distributed", "collective_timeout")
# These may change on resume when typed on the command line; otherwise the checkpoint's value holds.
RESUME_MAY_CHANGE = ("epochs", "limit_test")
# The files that make a directory a run directory (fit() writes both after every epoch).
RUN_FILES = ("last.ckpt", "history.json")


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to each option's help, except where there is no value to show (None, a
    switch that is off, an empty list): those options say in their help what happens without them."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        # argparse prints the usage and exits; we want the one-line error of every other failure.
        raise UsageError(f"{self.prog}: error: {message}")


def _bounded(convert, minimum, description):
    """An argparse type: `convert(text)`, refused unless it is finite and >= minimum (NaN and
    infinity included: an infinite learning rate only turns the weights into NaN)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not (value >= minimum and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value
    return parse


_positive_int = _bounded(int, 1, "a positive integer")
_non_negative_int = _bounded(int, 0, "an integer >= 0")
_non_negative_float = _bounded(float, 0, "a finite number >= 0")


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


def plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def build_parser():
    parser = _Parser(prog="tinycnn", description="Train, evaluate and inspect tinycnn networks.")
    parser.add_argument("--version", action="version", version=f"tinycnn {tinycnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    parser.subcommands = commands.choices  # name -> sub-parser (options_typed reads the train parser)

    t = commands.add_parser("train", help="train a network on MNIST or CIFAR-10")
    t.add_argument("model", help="a name from `tinycnn list-models`")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist", help="the data set")
    t.add_argument("--epochs", type=_positive_int, default=8, help="epochs to train (in all, when resuming)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="training images per step")
    t.add_argument("--lr", type=_non_negative_float, default=0.01, help="learning rate")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="the update rule")
    t.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD and RMSprop momentum")
    t.add_argument("--weight-decay", type=_non_negative_float, default=0.0, help="L2 penalty (decoupled for adamw)")
    t.add_argument("--scheduler", choices=SCHEDULERS, default="cosine",
                   help="per-epoch learning rate schedule (step: x0.1 every --step-size epochs)")
    t.add_argument("--step-size", type=_positive_int, default=None,
                   help="epochs between the x0.1 steps of --scheduler step (default: a third of the run)")
    t.add_argument("--warmup-epochs", type=_non_negative_int, default=0,
                   help="linear warm-up from lr/10 over this many epochs, then the scheduler")
    t.add_argument("--label-smoothing", type=_non_negative_float, default=0.0, help="cross-entropy label smoothing")
    t.add_argument("--augment", action="store_true",
                   help="random training-image shifts (MNIST: up to 2 px; CIFAR-10: 4-px crop and flip)")
    t.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument of the model's factory, e.g. padding=2 for lenet5 on MNIST")
    t.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where to train")
    t.add_argument("--out", required=True, help="run directory (checkpoint, history, plots)")
    t.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (kept until the new run's first checkpoint is written)")
    t.add_argument("--plots", action="store_true", help="write PNG figures into the run directory")
    t.add_argument("--data-dir", help="where the data set's files are (default: $TINYCNN_DATA, else ~/.cache/tinycnn)")
    t.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    t.add_argument("--seed", type=int, default=0, help="random seed of the weights, shuffling and augmentation")
    t.add_argument("--limit-train", type=_positive_int, help="use only the first N training images")
    t.add_argument("--limit-test", type=_positive_int, help="use only the first N test images")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of `mpiexec -n N tinycnn train ...` (extra distributed): "
                        "--batch-size per process, rank 0 alone prints and writes --out")
    t.add_argument("--collective-timeout", type=_bounded(float, 1, "a number of seconds >= 1"), default=300.0,
                   metavar="SECONDS",
                   help="with --distributed: end the job when a process waits this long for the others")

    e = commands.add_parser("eval", help="evaluate a checkpoint on its data set's test images")
    e.add_argument("checkpoint", help="a last.ckpt written by `tinycnn train` or fit(out_dir=...)")
    e.add_argument("--data-dir", help="where the data set's files are (default: the run's, else $TINYCNN_DATA)")
    e.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    e.add_argument("--limit-test", type=_positive_int, help="use only the first N test images")
    e.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where to evaluate")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = commands.add_parser("summary", help="print a network's layers, output shapes and sizes")
    s.add_argument("name", help="a name from `tinycnn list-models`")
    s.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="input shape (default: the one the network is specified for)")

    p = commands.add_parser("plot", help="(re)draw the figures of a run directory")
    p.add_argument("run_dir", help="a run directory (history.json, last.ckpt)")
    p.add_argument("--data-dir", help="where the data set's files are (default: the run's, else $TINYCNN_DATA)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")

    commands.add_parser("list-models", help="list the registered networks")

    x = commands.add_parser("explain", help="an op's forward, backward and saved arrays, with a live gradient check")
    x.add_argument("op", help="a function of tinycnn.functional, e.g. conv2d, max_pool2d, cross_entropy")
    x.add_argument("--shape", type=parse_shape, metavar="N,C,H,W",
                   help="the main input's shape, as many axes as the op's example (default: the example's)")
    x.add_argument("--seed", type=int, default=0, help="random seed of the example's inputs")

    g = commands.add_parser("graph", help="draw a network's autograd graph (ops, tensors, shapes) as PNG, SVG or .dot")
    g.add_argument("model", help="a name from `tinycnn list-models`")
    g.add_argument("--out", required=True, metavar="FILE",
                   help="FILE.png or FILE.svg (drawn with matplotlib), or FILE.dot (Graphviz text)")
    g.add_argument("--depth", type=_non_negative_int, metavar="K",
                   help="fold modules nested deeper than K levels into one box each (without it: every op)")
    g.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="input shape (default: the one the network is specified for)")

    f = commands.add_parser("gradflow", help="plot per-layer gradient norms against depth, at init and after training")
    f.add_argument("models", nargs="+", metavar="MODEL", help="names from `tinycnn list-models`")
    f.add_argument("--out", required=True, metavar="DIR", help="directory for gradflow.png and gradflow.csv")
    f.add_argument("--steps", type=_non_negative_int, default=100, help="SGD steps on MNIST before the second measure")
    f.add_argument("--batch-size", type=_positive_int, default=64, help="images per step and in the measured batch")
    f.add_argument("--lr", type=_non_negative_float, default=0.05, help="SGD learning rate (momentum 0.9)")
    f.add_argument("--in-channels", type=_positive_int, default=1,
                   help="input channels the networks are built with (MNIST's one channel is repeated)")
    f.add_argument("--data-dir", help="where the MNIST files are (default: $TINYCNN_DATA)")
    f.add_argument("--seed", type=int, default=0, help="seed of the weights, the measured batch and the data order")

    r = commands.add_parser("trace", help="trace one training step: each op's module, shapes, gradient norms, memory, time")
    r.add_argument("model", help="a name from `tinycnn list-models`")
    r.add_argument("--batch-size", type=_positive_int, default=2,
                   help="images in the random batch (BatchNorm in training needs 2 where a map is 1x1)")
    r.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="input shape (default: the one the network is specified for)")
    r.add_argument("--csv", metavar="FILE", help="also write the rows to FILE (times in s, sizes in bytes)")
    r.add_argument("--seed", type=int, default=0, help="seed of the weights, images and labels")

    o = commands.add_parser("export", help="write a network as an ONNX file (needs the onnx extra)")
    o.add_argument("model", help="a name from `tinycnn list-models`")
    o.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    o.add_argument("--checkpoint", metavar="CKPT",
                   help="its weights: a last.ckpt of `tinycnn train`, or a .npz/.pth state_dict "
                        "(default: freshly initialised)")
    o.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="the graph's input shape, batch 1 (default: the network's, or its data set's for a last.ckpt)")
    o.add_argument("--opset", type=int, choices=range(13, 18), default=17, metavar="{13..17}",
                   help="ONNX opset version")
    return parser


def options_typed(argv, command):
    """The options written on the command line `argv` for `command`, as opposed to those filled in
    from their defaults (argparse cannot tell them apart, so parse again with no defaults)."""
    parser = build_parser()
    for action in parser.subcommands[command]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


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
        raise UserError("--device gpu: no GPU available (it needs CuPy and a CUDA device); use --device cpu")


def model_input_shape(name):
    """The input `name` is specified for; an unknown name is the user's error, with close names."""
    try:
        return models.default_input_shape(name)
    except ValueError as error:  # the only ValueError it raises: an unknown name
        raise UserError(str(error)) from None


def build_model(settings):
    """The network of a run's settings, built the way `train` builds it (so weights fit)."""
    name, model_args = settings["model"], dict(settings.get("model_args", {}))
    _, channels, classes, _ = DATASETS[settings["dataset"]]
    kwargs = {"num_classes": classes, **model_args}
    if model_input_shape(name)[0] != channels:
        kwargs.setdefault("in_channels", channels)
    typed = " ".join(f"--model-arg {key}={value}" for key, value in model_args.items())
    try:
        return models.create(name, **kwargs)
    except TypeError as error:
        # Python's own words for a keyword the factory (or the class it passes **kwargs to) lacks;
        # any other TypeError is a bug and keeps its traceback.
        if not any(str(error).endswith(f"unexpected keyword argument '{key}'") for key in model_args):
            raise
        raise UserError(f"{typed}: {name}() does not take these arguments ({error})") from None
    except ValueError as error:
        if not model_args:
            raise  # the factory refused its own defaults: a bug, keep the traceback
        raise UserError(f"{typed}: {error}") from None  # a factory checks the values it is given


def build_optimizer(settings, parameters):
    name, lr, wd, momentum = settings["optimizer"], settings["lr"], settings["weight_decay"], settings["momentum"]
    if name == "sgd":
        return optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adam":
        return optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return optim.AdamW(parameters, lr=lr, weight_decay=wd)
    return optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=wd)


def check_schedule(settings):
    epochs, warmup = settings["epochs"], settings["warmup_epochs"]
    if warmup >= epochs and warmup > 0:
        raise UserError(f"--warmup-epochs ({warmup}) must be smaller than --epochs ({epochs})")


def build_scheduler(settings, optimizer):
    """The per-epoch schedule: optional linear warm-up from lr/10, then step, cosine or constant."""
    check_schedule(settings)
    epochs, warmup = settings["epochs"], settings["warmup_epochs"]
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


def check_writable_directory(path, option):
    """Refuse, before any work, a directory that cannot be made or written: a file in its place or
    on the way to it, or no permission. Writing is tried with a real file (created and removed)
    because permission bits do not bind every user (root writes into a chmod 555 directory)."""
    target = os.path.abspath(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == target else f"cannot be made: {existing} is a file"
        raise UserError(f"{option} {path} {where}, expected a directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=".tinycnn-write-test-", dir=existing)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise UserError(f"{option} {path}: cannot write in {existing} ({error.strerror})") from None


def check_data_dir(data_dir, download):
    """A data directory given as a file, or one that would have to be made where nothing can be
    written, is refused before any work; a missing data set is the data module's (quick) error."""
    root = data.data_root(data_dir)
    option = "--data-dir" if data_dir is not None else "the data directory"
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"{option} {root} is a file, expected a directory")
    if download and not os.path.exists(root):
        check_writable_directory(root, option)


def check_run_directory(out, resume, overwrite):
    """--out must be a writable directory; if it holds a run, only --resume (of that run) or
    --overwrite may write into it."""
    check_writable_directory(out, "--out")
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if not found or overwrite:
        return
    checkpoint_path = os.path.join(out, "last.ckpt")
    if resume and os.path.exists(checkpoint_path) and os.path.samefile(resume, checkpoint_path):
        return
    raise UserError(f"--out {out} already holds a run ({', '.join(found)}): continue it with --resume "
                    f"{checkpoint_path}, choose a new --out, or replace it with --overwrite")


def _value_text(value):
    if isinstance(value, dict):
        return " ".join(f"{key}={item}" for key, item in value.items()) or "(none)"
    return str(value)


def resume_settings(path, state, settings, typed):
    """The settings of the run resumed from the checkpoint `state`, and one line for each option
    typed on the command line that differs from the checkpoint's value, saying which is used."""
    saved = state.get("settings") or {}
    if "model" not in saved:
        raise checkpoint.CheckpointError(f"{path} holds no run settings: not written by `tinycnn train` or "
                                         "fit(out_dir=...)")
    if saved["model"] != settings["model"]:
        raise UserError(f"{path} is a checkpoint of {saved['model']!r}, not of {settings['model']!r}")
    lacking = [key for key in settings if key not in saved and key not in PER_INVOCATION + RESUME_MAY_CHANGE]
    if lacking:
        raise checkpoint.CheckpointError(
            f"{path} lacks the settings {', '.join(lacking)}, so `tinycnn train --resume` cannot rebuild its run "
            "(fit() records only what it can tell from its arguments); resume it from Python with "
            "tinycnn.checkpoint.restore")
    resumed = {**saved, **{key: settings[key] for key in PER_INVOCATION}}
    if settings["data_dir"] is None:
        resumed["data_dir"] = saved.get("data_dir")
    resumed.update({key: settings[key] for key in RESUME_MAY_CHANGE if key in typed or key not in saved})
    notes = []
    for dest in sorted(typed - {"model", "resume", "overwrite", "no_progress", "no_download", "plots"}):
        key = "model_args" if dest == "model_arg" else dest
        if key in saved and settings[key] != saved[key]:
            note = (f"--{dest.replace('_', '-')} {_value_text(settings[key])} differs from the checkpoint's "
                    f"{_value_text(saved[key])}: using {_value_text(resumed[key])}")
            if resumed[key] == saved[key]:
                note += " (a resumed run keeps its settings; train into a new --out to change it)"
            notes.append(note)
    return resumed, notes


def check_world_size(path, saved, world_size):
    """A run resumes on as many processes as it was trained on: with another count, the global batch
    and each epoch's shards would change, and the run would not continue as it started."""
    trained_on = saved.get("world_size", 1)
    if trained_on == world_size:
        return
    how = "without --distributed" if trained_on == 1 else f"with mpiexec -n {trained_on} ... --distributed"
    processes = "1 process" if trained_on == 1 else f"{trained_on} processes"
    raise UserError(f"{path} was trained on {processes} (global batch "
                    f"{trained_on * saved['batch_size']}), this run has {world_size}: resume it {how} "
                    "(a different number of processes is refused, not re-sharded)")


def train_command(args):
    settings = {key: value for key, value in vars(args).items() if key not in ("command", "argv")}
    settings["model_args"] = dict(settings.pop("model_arg"))
    model_input_shape(args.model)  # an unknown name fails here, before anything else is read
    state, notes = None, []
    # --distributed: every process runs this command; rank 0 alone reads the checkpoint and --out
    # (they may be on its disk only), prints and writes.
    group = distributed.init(settings["collective_timeout"]) if settings["distributed"] else None
    if group is not None and not group.is_root:
        sys.stdout = open(os.devnull, "w")
    if args.resume:
        state = checkpoint.load(args.resume) if group is None else \
            distributed.run_on_root(lambda: checkpoint.load(args.resume), group)
        settings, notes = resume_settings(args.resume, state, settings, options_typed(args.argv, "train"))
        done, saved = state["epoch"], state["settings"]
        check_world_size(args.resume, saved, 1 if group is None else group.world_size)
        if done >= settings["epochs"]:
            raise UserError(f"{args.resume} already has {plural(done, 'epoch')}; ask for more with --epochs")
        if settings["epochs"] != saved["epochs"] and settings["scheduler"] != "none":
            raise UserError(f"--epochs {settings['epochs']} differs from the {saved['epochs']} epochs the "
                            f"{settings['scheduler']} schedule of {args.resume} was built for")
    settings["world_size"] = 1 if group is None else group.world_size

    # Everything that can be checked without the data comes first: a mistake costs no epoch.
    if group is None:
        check_run_directory(settings["out"], settings["resume"], settings["overwrite"])
    else:
        distributed.run_on_root(lambda: check_run_directory(settings["out"], settings["resume"], settings["overwrite"]),
                                group)
    check_device(settings["device"])
    check_schedule(settings)
    download = not settings.get("no_download", False)
    check_data_dir(settings["data_dir"], download)
    tinycnn.config.tune_allocator()  # each step's big buffers reused, not fetched zeroed (tinycnn._threading)
    if settings.get("seed") is not None:  # None: a run of fit() (its weights and random state are restored)
        tinycnn.manual_seed(settings["seed"])
    model = build_model(settings)
    for note in notes:
        print(note)

    train_set = load_dataset(settings["dataset"], True, settings["data_dir"], settings["limit_train"], download,
                             settings.get("augment", False))
    test_set = load_dataset(settings["dataset"], False, settings["data_dir"], settings["limit_test"], download)
    if settings["device"] == "gpu":
        model.to("gpu")
    optimizer = build_optimizer(settings, model.parameters())
    scheduler = build_scheduler(settings, optimizer)
    # Each process takes every world_size-th image of the epoch's order (tinycnn.distributed).
    sampler = None if group is None else distributed.DistributedSampler(group=group)
    train_loader = data.DataLoader(train_set, batch_size=settings["batch_size"], shuffle=True, sampler=sampler)
    test_loader = data.DataLoader(test_set, batch_size=max(settings["batch_size"], 500))

    start_epoch, history = 0, []
    if state is not None:
        start_epoch = checkpoint.restore(state, model, optimizer, scheduler, train_loader, path=args.resume)
        history = state["history"]
        print(f"resuming {args.resume} after epoch {start_epoch}")
    schedule = "no schedule" if settings["scheduler"] == "none" else f"{settings['scheduler']} schedule"
    print(f"{settings['model']} ({model.num_parameters():,} parameters) on {settings['dataset']}: "
          f"{len(train_set)} training / {len(test_set)} test images, {plural(settings['epochs'], 'epoch')}, "
          f"{settings['optimizer']} lr {settings['lr']}, {schedule}")

    stale = []
    if settings["overwrite"] and (group is None or group.is_root):
        from tinycnn import plots
        stale = [os.path.join(settings["out"], name) for name in plots.FIGURES]

    def forget_the_old_run(row):
        # --overwrite keeps the old run until this run's first checkpoint replaced it; its figures
        # would then describe a run that is gone.
        while stale:
            path = stale.pop()
            if os.path.exists(path):
                os.remove(path)

    progress = False if settings["no_progress"] else None
    started = time.perf_counter()
    with warnings.catch_warnings():
        # An overflow (a learning rate far too large) ends in a non-finite loss, which fit reports
        # as one line saying what to do; NumPy's warnings on the way there would only bury it.
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
        history = training.fit(model, optimizer, train_loader, settings["epochs"], test_loader, scheduler,
                               device=settings["device"], label_smoothing=settings["label_smoothing"],
                               start_epoch=start_epoch, history=history, out_dir=settings["out"],
                               settings=settings, progress=progress, log=lambda line: print(line, flush=True),
                               data_parallel=None if group is None else distributed.DataParallel(
                                   model, group, seed=settings.get("seed")),
                               on_epoch_end=forget_the_old_run)
    print(f"done in {time.perf_counter() - started:.1f}s: test accuracy {history[-1]['test_top1']:.2%} "
          f"({len(test_set)} images); run directory {settings['out']}")
    if settings["plots"] and (group is None or group.is_root):
        from tinycnn import plots
        for path in plots.plot_run(settings["out"], model, history, test_set, device=settings["device"]):
            print(f"wrote {path}")
    return 0


def _run_settings(path, state):
    settings = state.get("settings") or {}
    if "model" not in settings or "dataset" not in settings:
        raise checkpoint.CheckpointError(
            f"{path} holds no run settings (model and data set): it was not written by `tinycnn train`, nor by "
            "fit(out_dir=...) with a model from tinycnn.models.create and an MNIST or CIFAR-10 loader")
    return settings


def _model_from_checkpoint(path, state):
    settings = _run_settings(path, state)
    try:
        model = build_model(settings)
    except UserError as error:
        raise checkpoint.CheckpointError(f"{path}: its settings do not build a network: {error}") from None
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{path} does not fit {settings['model']}: "
                                         f"{error.args[0] if error.args else error}") from None
    return model


def eval_command(args):
    check_device(args.device)
    state = checkpoint.load(args.checkpoint)
    settings = _run_settings(args.checkpoint, state)
    data_dir = args.data_dir if args.data_dir is not None else settings.get("data_dir")
    check_data_dir(data_dir, not args.no_download)
    model = _model_from_checkpoint(args.checkpoint, state)
    if args.device == "gpu":
        model.to("gpu")
    test_set = load_dataset(settings["dataset"], False, data_dir, args.limit_test, not args.no_download)
    loader = data.DataLoader(test_set, batch_size=500)
    result = training.evaluate(model, loader, args.device, progress=False if args.no_progress else None)
    print(f"{settings['model']} after {plural(state['epoch'], 'epoch')} on {len(test_set)} {settings['dataset']} test "
          f"images: loss {result['loss']:.4f}  top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}")
    return 0


def plot_command(args):
    """Draw what needs no data first (the curves from the history, the filters from the weights),
    then the figures that need the test set; say which figures were skipped and why."""
    from tinycnn import plots
    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        raise UserError(f"plot: {run_dir} is not a directory (expected a run directory)")
    check_writable_directory(run_dir, "plot")
    checkpoint_path = os.path.join(run_dir, "last.ckpt")
    state = checkpoint.load(checkpoint_path) if os.path.exists(checkpoint_path) else None
    if state is not None:
        history = state["history"]
    elif os.path.exists(os.path.join(run_dir, "history.json")):
        history = training.load_history(run_dir)
    else:
        raise UserError(f"plot: {run_dir} holds neither last.ckpt nor history.json: not a run directory")
    print(f"wrote {plots.plot_curves(history, os.path.join(run_dir, 'curves.png'))}", flush=True)
    settings = (state or {}).get("settings") or {}
    if state is None or "model" not in settings or "dataset" not in settings:
        reason = "no last.ckpt" if state is None else f"{checkpoint_path} holds no run settings (model and data set)"
        print(f"skipped filters.png, feature_maps.png, confusion.png: {reason}")
        return 0
    model = _model_from_checkpoint(checkpoint_path, state)
    print(f"wrote {plots.plot_filters(model, os.path.join(run_dir, 'filters.png'))}", flush=True)
    data_dir = args.data_dir if args.data_dir is not None else settings.get("data_dir")
    try:
        check_data_dir(data_dir, not args.no_download)
        test_set = load_dataset(settings["dataset"], False, data_dir, settings.get("limit_test"), not args.no_download)
    except UserError as error:
        print(f"skipped feature_maps.png, confusion.png: no {settings['dataset']} test set ({error})")
        return 0
    for path in plots.plot_test_figures(run_dir, model, test_set):
        print(f"wrote {path}")
    return 0


def summary_command(args):
    shape = args.input or model_input_shape(args.name)
    model = models.create(args.name)
    try:
        tinycnn.summary(model, shape)
    except ValueError as error:
        if args.input is None:
            raise  # the network fails on its own input shape: a bug
        raise UserError(f"summary {args.name} --input {','.join(map(str, shape))}: {error}") from None
    return 0


def list_models_command(args):
    for name in models.list():
        print(name)
    return 0


COMMANDS = {"train": train_command, "eval": eval_command, "summary": summary_command, "plot": plot_command,
            "list-models": list_models_command, "explain": explain_command, "graph": graph.cli_command,
            "gradflow": gradflow.cli_command, "trace": trace_command, "export": export_command}


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
        args = build_parser().parse_args(argv)
        args.argv = argv  # train --resume compares the options typed here with the checkpoint's
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a reader who has gone away is met by the handler below
        return status
    except UsageError as error:
        print(f"{error} (see tinycnn -h)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinycnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`tinycnn explain conv2d | head`): stop quietly, as
        # other command-line tools do. Python would report the failed flush of stdout at exit, so
        # point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UserError, OSError) as error:
        # Only the failures raised on purpose (UserError and its subclasses such as
        # CheckpointError, or DataError for missing or damaged data files) and the operating system's
        # refusals (a path that cannot be read or written, a full disk) are the user's to fix.
        # Anything else is a bug in tinycnn and keeps its traceback.
        print(f"tinycnn: error: {error}", file=sys.stderr)
        return 1
