"""The training loop: fit() runs epochs of mini-batch descent, evaluate() measures a model.

    model = tinycnn.models.create("lenet")
    optimizer = tinycnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = fit(model, optimizer, train_loader, epochs=5, test_loader=test_loader)

One step is the whole of backprop in four lines: forward, loss, backward, update (see train_epoch).
Networks with auxiliary classifiers (GoogLeNet, Inception v3) return ModelOutputs(logits,
aux_logits) in training mode; their loss is loss(logits) + model.aux_loss_weight * sum of
loss(aux) over the auxiliary heads, as in the papers. Accuracy is always that of the main logits.

Every epoch appends a row to the history (losses, top-1 and top-5 accuracy, learning rate, time,
images per second); with `out_dir` the history is written as history.json and history.csv and a
checkpoint (tinycnn.checkpoint) as last.ckpt after each epoch, so a run stopped at any point
resumes from its last finished epoch and continues exactly as if it had not stopped.
"""
import csv
import json
import math
import os
import sys
import time

import numpy

import tinycnn.functional as F
from tinycnn import backend, checkpoint, config, optim
from tinycnn.autograd import Parameter, Tensor
from tinycnn.data import CIFAR10, MNIST, Subset
from tinycnn.data.transforms import Normalize
from tinycnn.errors import UserError

HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5",
                  "epoch_time_s", "train_images_per_s")


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became infinite or NaN: the learning rate (or the data) needs changing."""


def split_outputs(outputs):
    """(main logits, tuple of auxiliary logits) of whatever a model returned."""
    if isinstance(outputs, tuple) and hasattr(outputs, "aux_logits"):
        return outputs.logits, tuple(outputs.aux_logits or ())
    return outputs, ()


def training_loss(model, outputs, y, label_smoothing=0.0, loss_fn=None):
    """The loss to minimise: cross-entropy of the logits, plus the weighted auxiliary losses."""
    logits, aux_logits = split_outputs(outputs)
    if loss_fn is None:
        def loss_fn(scores, labels):
            return F.cross_entropy(scores, labels, label_smoothing=label_smoothing)
    loss = loss_fn(logits, y)
    if aux_logits:
        if not hasattr(model, "aux_loss_weight"):
            raise ValueError(f"{type(model).__name__} returned auxiliary logits but has no aux_loss_weight "
                             "attribute saying how to weigh their losses")
        for aux in aux_logits:
            loss = loss + loss_fn(aux, y) * model.aux_loss_weight
    return loss, logits


def correct_topk(scores, labels, ks=(1, 5)):
    """For each k, how many rows of scores (N, K) rank the true label among their k highest."""
    scores, labels = backend.to_cpu(scores), backend.to_cpu(labels)
    K = scores.shape[1]
    # The rank of the true class = how many classes score strictly higher than it.
    true_scores = scores[numpy.arange(len(labels)), labels][:, None]  # (N, 1)
    rank = (scores > true_scores).sum(axis=1)  # (N,)
    return [int((rank < min(k, K)).sum()) for k in ks]


class _Progress:
    """A tqdm bar when wanted (and stderr is a terminal, for progress=None), else nothing."""

    def __init__(self, total, description, enabled):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=description, unit="batch", leave=False, dynamic_ncols=True)

    def update(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.refresh()  # the final figures, even when the last updates came within tqdm's mininterval
            self.bar.close()


def _to_device(array, device):
    return backend.to_device(array, device) if device == "gpu" else array


def train_epoch(model, optimizer, loader, device="cpu", label_smoothing=0.0, loss_fn=None, progress=None,
                description="train", data_parallel=None):
    """One pass over `loader`; returns {'loss', 'top1', 'top5', 'images', 'time_s'} (loss averaged
    over the images, accuracies as fractions). With data_parallel (tinycnn.distributed.DataParallel)
    the gradients are averaged over the processes between backward and step; the figures
    returned are this process's."""
    model.train()
    total_loss, correct1, correct5, seen = 0.0, 0, 0, 0
    bar = _Progress(len(loader), description, progress)
    start = time.perf_counter()
    try:
        for x, y in loader:
            x, y = _to_device(x, device), _to_device(y, device)
            outputs = model(Tensor(x))
            loss, logits = training_loss(model, outputs, y, label_smoothing, loss_fn)
            optimizer.zero_grad()
            loss.backward()
            if data_parallel is not None:
                data_parallel.synchronize()
            optimizer.step()

            value = float(loss.item())
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: the loss is {value} after {seen} images of this "
                                         "epoch; lower the learning rate")
            c1, c5 = correct_topk(logits.data, y)
            n = len(y)
            total_loss, correct1, correct5, seen = total_loss + value * n, correct1 + c1, correct5 + c5, seen + n
            elapsed = time.perf_counter() - start
            bar.update(loss=f"{total_loss / seen:.4f}", acc=f"{correct1 / seen:.2%}", img_s=f"{seen / elapsed:.0f}")
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "top1": correct1 / max(seen, 1), "top5": correct5 / max(seen, 1),
            "images": seen, "time_s": elapsed}


def evaluate(model, loader, device="cpu", progress=None, num_classes=None, description="eval"):
    """Loss (cross-entropy), top-1 and top-5 accuracy of `model` on `loader`, in eval mode and
    without a graph; with num_classes, also the confusion matrix (rows: true class, columns:
    predicted). A loader whose images are (B, n_crops, C, H, W) (transforms.TenCrop) is scored by
    the mean of the softmax over each image's crops."""
    was_training = model.training
    model.eval()
    total_loss, correct1, correct5, seen = 0.0, 0, 0, 0
    confusion = numpy.zeros((num_classes, num_classes), dtype=numpy.int64) if num_classes else None
    bar = _Progress(len(loader), description, progress)
    try:
        with config.no_grad():
            for x, y in loader:
                x, y = _to_device(x, device), _to_device(y, device)
                if x.ndim == 5:
                    B, n_crops = x.shape[:2]
                    logits = model(Tensor(x.reshape((B * n_crops,) + x.shape[2:])))  # crops as a batch
                    # (B * n_crops, K) -> (B, n_crops, K) -> mean over the crops (B, K)
                    probabilities = F.softmax(logits, dim=1).data.reshape(B, n_crops, -1).mean(axis=1)
                    xp = backend.get_array_module(probabilities)
                    scores = xp.log(xp.maximum(probabilities, xp.finfo(probabilities.dtype).tiny))
                    loss = F.nll_loss(Tensor(scores), y)
                else:
                    scores = model(Tensor(x)).data
                    loss = F.cross_entropy(Tensor(scores), y)
                c1, c5 = correct_topk(scores, y)
                n = len(y)
                total_loss, correct1, correct5, seen = (total_loss + float(loss.item()) * n, correct1 + c1,
                                                        correct5 + c5, seen + n)
                if confusion is not None:
                    predicted = backend.to_cpu(scores).argmax(axis=1)
                    numpy.add.at(confusion, (backend.to_cpu(y), predicted), 1)
                bar.update(acc=f"{correct1 / seen:.2%}")
    finally:
        bar.close()
        model.train(was_training)
    result = {"loss": total_loss / max(seen, 1), "top1": correct1 / max(seen, 1), "top5": correct5 / max(seen, 1),
              "images": seen}
    if confusion is not None:
        result["confusion"] = confusion
    return result


def fit(model, optimizer, train_loader, epochs, test_loader=None, scheduler=None, device="cpu",
        label_smoothing=0.0, loss_fn=None, start_epoch=0, history=None, out_dir=None, settings=None,
        progress=None, log=print, on_epoch_end=None, data_parallel=None):
    """Train for epochs start_epoch+1 .. epochs; returns the history (a list of dicts, one per epoch).

    scheduler.step() is called once per epoch. With out_dir, the checkpoint last.ckpt, history.json
    and history.csv are written after each epoch; the checkpoint holds the run's settings, those of
    run_settings() (what can be told from the arguments) updated with `settings`, so `tinycnn eval`,
    `tinycnn plot` and `tinycnn train --resume` accept the run directory.
    `log(line)` receives a one-line summary per epoch; `on_epoch_end(row)` is called last.
    With data_parallel (tinycnn.distributed.DataParallel) the gradients are averaged over the
    processes every step, tinycnn's generator is reseeded per process and epoch, the training
    figures are those of the global batch, and only rank 0 logs, shows progress and writes out_dir.
    """
    if data_parallel is not None and not data_parallel.is_root:
        out_dir, log, progress = None, None, False
    history = list(history or [])
    if out_dir is not None:
        derived = run_settings(model, optimizer, train_loader, epochs, test_loader, scheduler, device, label_smoothing)
        settings = {**derived, **(settings or {})}
    for epoch in range(start_epoch, epochs):
        if data_parallel is not None:
            data_parallel.start_epoch(epoch)  # each process's own dropout masks, the same after a resume
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train = train_epoch(model, optimizer, train_loader, device, label_smoothing, loss_fn, progress,
                            description=f"epoch {epoch + 1}/{epochs}", data_parallel=data_parallel)
        if data_parallel is not None:
            train = data_parallel.average_metrics(train)
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_top1": train["top1"],
               "train_top5": train["top5"]}
        if test_loader is not None:
            test = evaluate(model, test_loader, device, progress, description=f"test {epoch + 1}/{epochs}")
            row.update(test_loss=test["loss"], test_top1=test["top1"], test_top5=test["top5"])
        row["epoch_time_s"] = time.perf_counter() - start
        row["train_images_per_s"] = train["images"] / train["time_s"] if train["time_s"] > 0 else float("nan")
        history.append(row)
        if log is not None:
            log(format_row(row, epochs))
        if out_dir is not None:
            # The checkpoint first: it is what a resumed run reads, and with `tinycnn train
            # --overwrite` the moment the old run is replaced.
            checkpoint.save(checkpoint.training_state(model, epoch + 1, optimizer, scheduler, train_loader, history,
                                                      settings), os.path.join(out_dir, "last.ckpt"))
            save_history(history, out_dir)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return history


# The optimizers and data sets `tinycnn train` can rebuild, by the names its settings use.
_OPTIMIZER_NAMES = {optim.SGD: "sgd", optim.Adam: "adam", optim.AdamW: "adamw", optim.RMSprop: "rmsprop"}
_DATASET_NAMES = {MNIST: "mnist", CIFAR10: "cifar10"}


def _dataset_and_limit(loader):
    """(data set name, N) for a loader over the first N images (N None: all) of MNIST or CIFAR-10,
    else (None, None)."""
    dataset, limit = loader.dataset, None
    while isinstance(dataset, Subset):
        if not numpy.array_equal(dataset.indices, numpy.arange(len(dataset.indices))):
            return None, None  # not the first N images: the command line cannot say which
        limit = len(dataset.indices) if limit is None else min(limit, len(dataset.indices))
        dataset = dataset.dataset
    name = _DATASET_NAMES.get(type(dataset))
    return (name, limit) if name is not None else (None, None)


def run_settings(model, optimizer, train_loader, epochs, test_loader=None, scheduler=None, device="cpu",
                 label_smoothing=0.0):
    """The settings of a run built in Python, in the form `tinycnn train` writes them, as far as they
    can be told from the objects; what cannot be told is left out.

    The model's name and arguments are known when it was built by tinycnn.models.create; the data
    set when the loaders read MNIST or CIFAR-10 (or their first N images); the optimizer and
    schedule when `tinycnn train` would build the same ones (each is rebuilt and compared).
    `tinycnn eval` and `plot` need the model and the data set; `--resume` needs them all.
    """
    from tinycnn import cli  # the settings are in the command line's terms, so are its builders
    settings = {"epochs": epochs, "device": device, "label_smoothing": label_smoothing, "seed": None,
                "model_args": {}, "data_dir": None, "warmup_epochs": 0}
    if hasattr(model, "registered_as"):
        settings["model"], settings["model_args"] = model.registered_as[0], dict(model.registered_as[1])
    name, limit_train = _dataset_and_limit(train_loader)
    transform = getattr(train_loader.dataset, "transform", None)
    if name is not None and type(transform) is Normalize:  # no augmentation
        settings.update(dataset=name, limit_train=limit_train, augment=False, batch_size=train_loader.batch_size)
    if test_loader is not None:
        test_name, limit_test = _dataset_and_limit(test_loader)
        if test_name is not None and test_name == settings.get("dataset", test_name):
            settings.update(dataset=test_name, limit_test=limit_test)
    group = optimizer.param_groups[0]
    if type(optimizer) in _OPTIMIZER_NAMES and len(optimizer.param_groups) == 1:
        candidate = {"optimizer": _OPTIMIZER_NAMES[type(optimizer)], "lr": group.get("initial_lr", group["lr"]),
                     "momentum": group.get("momentum", 0.9), "weight_decay": group["weight_decay"]}
        rebuilt = cli.build_optimizer(candidate, [Parameter(numpy.zeros(1))]).param_groups[0]
        same = all(rebuilt[key] == value for key, value in group.items() if key not in ("params", "lr", "initial_lr"))
        if same:
            settings.update(candidate)
    schedule = {"scheduler": "none", "step_size": None}
    if type(scheduler) is optim.lr_scheduler.CosineAnnealingLR and scheduler.T_max == epochs and scheduler.eta_min == 0:
        schedule["scheduler"] = "cosine"
    elif type(scheduler) is optim.lr_scheduler.StepLR and scheduler.gamma == 0.1:
        schedule.update(scheduler="step", step_size=scheduler.step_size)
    if scheduler is None or schedule["scheduler"] != "none":
        settings.update(schedule)
    return settings


def format_row(row, epochs):
    text = (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_top1']:.2%}")
    if "test_loss" in row:
        text += f"  test loss {row['test_loss']:.4f} acc {row['test_top1']:.2%} top-5 {row['test_top5']:.2%}"
    return text + f"  {row['epoch_time_s']:.1f}s  {row['train_images_per_s']:.0f} img/s"


def save_history(history, directory):
    """Write history.json and history.csv (one row per epoch) into directory, atomically."""
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, "history.json"), json.dumps(history, indent=1) + "\n")
    fields = [f for f in HISTORY_FIELDS if any(f in row for row in history)]
    lines = [",".join(fields)] + [",".join(_csv_value(row.get(f)) for f in fields) for row in history]
    _write_atomic(os.path.join(directory, "history.csv"), "\n".join(lines) + "\n")


def load_history(directory):
    with open(os.path.join(directory, "history.json")) as f:
        return json.load(f)


def _csv_value(value):
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_atomic(path, text):
    temporary = f"{path}.part"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def read_history_csv(path):
    """The rows of a history.csv as dicts of floats (for plotting or checks)."""
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(f)]
