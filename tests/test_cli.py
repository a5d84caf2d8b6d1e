"""The tinycnn command (tinycnn.cli) end to end on slices of the real MNIST files, and the examples.

Data: $TINYCNN_DATA (CI sets it to ../shared/data), else ../shared/data next to the repository.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinycnn
import tinycnn.models as models
from tinycnn import backend, checkpoint, cli
from tinycnn import train as training
from tinycnn.train import read_history_csv

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("TINYCNN_DATA") or os.path.join(REPOSITORY, "..", "shared", "data")
TINY = ["--dataset", "mnist", "--data-dir", DATA, "--limit-train", "96", "--limit-test", "64", "--batch-size", "32",
        "--no-progress", "--no-download"]
PLOTS = ("curves.png", "filters.png", "feature_maps.png", "confusion.png")


def run(*args, env=None):
    """`python -m tinycnn ARGS` in a fresh process: (exit status, stdout, stderr)."""
    environment = dict(os.environ, **(env or {}))
    done = subprocess.run([sys.executable, "-m", "tinycnn", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPOSITORY, env=environment)
    return done.returncode, done.stdout, done.stderr


def test_train_writes_checkpoint_history_and_plots_and_eval_reads_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "lenet", "--epochs", "2", "--lr", "0.01", "--out", str(out), "--plots", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "test accuracy" in printed

    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    rows = read_history_csv(out / "history.csv")
    assert len(rows) == 2
    for row, saved in zip(rows, history):
        for key, value in row.items():
            assert value == pytest.approx(saved[key], rel=1e-12), key
    for name in PLOTS:
        import matplotlib.image
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image[..., :3].std() > 0.01, f"{name} is blank"

    state = checkpoint.load(out / "last.ckpt")
    assert state["epoch"] == 2 and state["settings"]["model"] == "lenet"
    model = models.create("lenet")
    model.load_state_dict(state["model"])

    assert cli.main(["eval", str(out / "last.ckpt"), "--limit-test", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {history[-1]['test_top1']:.2%}" in printed, printed

    for name in PLOTS:
        (out / name).unlink()
    assert cli.main(["plot", str(out)]) == 0
    assert all((out / name).stat().st_size > 1000 for name in PLOTS)


def _interrupt_after_first_epoch(monkeypatch):
    real_fit = training.fit

    def fit(*args, on_epoch_end=None, **kwargs):
        def stop(row):
            if on_epoch_end is not None:
                on_epoch_end(row)
            if row["epoch"] == 1:
                raise KeyboardInterrupt  # as Ctrl-C right after epoch 1's checkpoint
        return real_fit(*args, **kwargs, on_epoch_end=stop)
    monkeypatch.setattr(training, "fit", fit)


def test_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    command = ["train", "lenet", "--epochs", "3", "--optimizer", "sgd", "--lr", "0.02", "--momentum", "0.9",
               "--weight-decay", "1e-4", "--scheduler", "cosine", "--warmup-epochs", "1", "--label-smoothing", "0.1",
               "--seed", "3", *TINY]
    assert cli.main(command + ["--out", str(tmp_path / "whole")]) == 0

    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        assert cli.main(command + ["--out", str(tmp_path / "parts")]) == 130
    assert checkpoint.load(tmp_path / "parts" / "last.ckpt")["epoch"] == 1
    resume = ["--out", str(tmp_path / "parts"), "--resume", str(tmp_path / "parts" / "last.ckpt")]
    assert cli.main(command + resume) == 0
    assert "resuming" in capsys.readouterr().out

    whole, parts = (checkpoint.load(tmp_path / name / "last.ckpt") for name in ("whole", "parts"))
    assert parts["epoch"] == whole["epoch"] == 3
    assert whole["model"].keys() == parts["model"].keys()
    for key in whole["model"]:
        np.testing.assert_array_equal(parts["model"][key], whole["model"][key], err_msg=key)
    for a, b in zip(whole["history"], parts["history"]):
        for key in ("lr", "train_loss", "train_top1", "test_loss", "test_top1"):
            assert a[key] == b[key], (key, a, b)
    lrs = [row["lr"] for row in whole["history"]]
    assert lrs[0] == pytest.approx(0.002) and lrs[1] == pytest.approx(0.02)  # warm-up from lr/10, then cosine


def test_resume_refuses_a_finished_run_and_another_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "lenet", "--epochs", "1", "--out", str(out), *TINY]) == 0
    ckpt = str(out / "last.ckpt")
    assert cli.main(["train", "lenet", "--epochs", "1", "--out", str(out), "--resume", ckpt, *TINY]) == 1
    assert "already has 1 epoch;" in capsys.readouterr().err  # not "1 epochs"
    assert cli.main(["train", "lenet5", "--epochs", "2", "--out", str(out), "--resume", ckpt, *TINY]) == 1
    assert "checkpoint of 'lenet'" in capsys.readouterr().err


def _one_line_error(status, stderr, *words):
    assert status != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_errors_are_one_line_without_traceback(tmp_path):
    _one_line_error(*run("train", "lenett", "--out", str(tmp_path / "a"))[::2], "unknown model 'lenett'",
                    "did you mean lenet")
    _one_line_error(*run("train", "lenet", "--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "nowhere"),
                         "--no-download")[::2], "not found in", "nowhere")
    _one_line_error(*run("train", "lenet", "--epochs", "0", "--out", str(tmp_path / "c"))[::2], "--epochs")
    (tmp_path / "broken.ckpt").write_bytes(checkpoint.MAGIC + b"\0\0\0\1" + b"x" * 40)
    _one_line_error(*run("eval", str(tmp_path / "broken.ckpt"))[::2], "corrupted")
    _one_line_error(*run("eval", str(tmp_path / "missing.ckpt"))[::2], "does not exist")
    _one_line_error(*run("summary", "lenet", "--input", "1,28")[::2], "C,H,W")
    if not backend.gpu_available():
        _one_line_error(*run("train", "lenet", "--device", "gpu", "--out", str(tmp_path / "d"))[::2], "no GPU")


def test_summary_and_list_models(capsys):
    assert cli.main(["summary", "lenet"]) == 0
    table = capsys.readouterr().out
    assert "Total params: 431,080" in table and "Input shape: 1x1x28x28" in table
    assert cli.main(["summary", "lenet5", "--input", "1,32,32"]) == 0
    assert "Input shape: 1x1x32x32" in capsys.readouterr().out
    assert cli.main(["list-models"]) == 0
    assert capsys.readouterr().out.split() == models.list()
    status, out, err = run("list-models")
    assert status == 0 and out.split() == models.list() and err == ""


@pytest.mark.parametrize("script, expected", [
    ("train_lenet_mnist.py", "final test accuracy"),
    ("transfer_learning.py", "on the 0-4 body"),
])
def test_examples_run_in_quick_mode(script, expected):
    done = subprocess.run([sys.executable, os.path.join(REPOSITORY, "examples", script), "--quick"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, TINYCNN_DATA=DATA))
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout
    accuracies = [float(word.rstrip("%")) for word in done.stdout.split() if word.endswith("%")]
    assert accuracies and min(accuracies) > 50, done.stdout  # far above chance (10% or 20%)


def test_augment_shifts_mnist_training_images_without_losing_ink():
    plain = cli.load_dataset("mnist", True, DATA, limit=64, download=False)
    shifted = cli.load_dataset("mnist", True, DATA, limit=64, download=False, augment=True)
    indices = np.arange(64)
    x, y = plain.get_batch(indices, np.random.default_rng(0))
    xa, ya = shifted.get_batch(indices, np.random.default_rng(0))
    np.testing.assert_array_equal(y, ya)
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert (np.abs(xa - x).reshape(64, -1).max(axis=1) > 0).mean() > 0.5  # most images moved
    # MNIST digits are centred by their centre of mass in a 20x20 box, so a shift of at most 2 pixels
    # keeps the strokes of nearly every digit (one of these 64 touches the border and loses some);
    # the padding brings in blank pixels only.
    ink = [(batch.astype(np.float64) * 0.3081 + 0.1307).sum(axis=(1, 2, 3)) for batch in (x, xa)]  # un-normalized
    assert np.isclose(ink[1], ink[0], rtol=1e-5).sum() >= 60
    assert np.all(ink[1] <= ink[0] + 1e-3)
    assert cli.load_dataset("mnist", False, DATA, limit=8, download=False, augment=False).transform is not None


def _train(out, *extra, epochs="1"):
    return cli.main(["train", "lenet", "--epochs", epochs, "--scheduler", "none", "--out", str(out), *TINY, *extra])


def test_a_run_is_never_replaced_without_overwrite_which_waits_for_the_first_checkpoint(tmp_path, capsys,
                                                                                         monkeypatch):
    out = tmp_path / "run"
    assert _train(out, "--lr", "0.02") == 0
    assert "96 training / 64 test images, 1 epoch, sgd lr 0.02, no schedule" in capsys.readouterr().out
    (out / "curves.png").write_bytes(b"a figure of the old run")
    old = {name: (out / name).read_bytes() for name in ("last.ckpt", "history.json", "history.csv")}
    capsys.readouterr()

    # Refused before any work: with no data at hand the error is still about the run directory.
    status = cli.main(["train", "lenet", "--out", str(out), "--data-dir", str(tmp_path / "no-data"), "--no-download"])
    _one_line_error(status, capsys.readouterr().err, f"--out {out} already holds a run", "--resume",
                    "new --out", "--overwrite")
    assert {name: (out / name).read_bytes() for name in old} == old

    # --overwrite, interrupted before its first checkpoint: the old run is all still there.
    real_train_epoch = training.train_epoch

    def interrupted(*args, **kwargs):
        real_train_epoch(*args, **kwargs)
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(training, "train_epoch", interrupted)
        assert _train(out, "--lr", "0.05", "--overwrite") == 130
    assert {name: (out / name).read_bytes() for name in old} == old
    assert (out / "curves.png").exists()

    # --overwrite to the end: the new run, and no figure of the old one left behind.
    assert _train(out, "--lr", "0.05", "--overwrite", epochs="2") == 0
    state = checkpoint.load(out / "last.ckpt")
    assert state["epoch"] == 2 and state["settings"]["lr"] == 0.05
    assert [row["lr"] for row in json.loads((out / "history.json").read_text())] == [0.05, 0.05]
    assert not (out / "curves.png").exists()


def _unwritable_directories(tmp_path):
    """Directories this process really cannot write in: a chmod 555 directory (unless the process
    is root, which permission bits do not stop, as a probe file shows) and /sys (read-only even for
    root on Linux)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    found = []
    for directory in (str(locked), "/sys"):
        try:
            with open(os.path.join(directory, "probe"), "w"):
                pass
            os.remove(os.path.join(directory, "probe"))
        except OSError:
            found.append(directory)
    return locked, found


def test_a_bad_out_is_refused_before_the_data_is_read(tmp_path, capsys):
    # --data-dir names nothing and downloads are off: had the data been read first, the error
    # would be about the data.
    no_data = ["--data-dir", str(tmp_path / "no-data"), "--no-download"]
    (tmp_path / "a-file").write_text("not a directory")
    cases = [(tmp_path / "a-file", "is a file, expected a directory"),
             (tmp_path / "a-file" / "run", f"cannot be made: {tmp_path / 'a-file'} is a file")]
    locked, unwritable = _unwritable_directories(tmp_path)
    assert unwritable, "no unwritable directory to test with"
    cases += [(os.path.join(directory, "run"), f"cannot write in {directory}") for directory in unwritable]
    for out, message in cases:
        status = cli.main(["train", "lenet", "--out", str(out), *no_data])
        _one_line_error(status, capsys.readouterr().err, f"--out {out}", message)
    if str(locked) not in unwritable:  # root: the check must not refuse what it can write
        assert cli.main(["train", "lenet", "--out", str(locked / "run"), *no_data]) == 1
        assert "not found in" in capsys.readouterr().err  # it went on, to the (missing) data
    status = cli.main(["train", "lenet", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "a-file")])
    _one_line_error(status, capsys.readouterr().err, "--data-dir", "is a file, expected a directory")
    assert not (tmp_path / "run").exists()


def test_resume_says_which_typed_options_differ_and_which_value_it_uses(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--lr", "0.01") == 0
    capsys.readouterr()
    resume = ["--resume", str(out / "last.ckpt")]
    assert _train(out, *resume, "--lr", "0.5", "--optimizer", "sgd", epochs="2") == 0
    printed = capsys.readouterr().out
    assert ("--lr 0.5 differs from the checkpoint's 0.01: using 0.01 (a resumed run keeps its settings"
            in printed), printed
    assert "--epochs 2 differs from the checkpoint's 1: using 2" in printed, printed
    assert "--optimizer" not in printed  # typed, but the same as the checkpoint's
    assert "--limit-test" not in printed
    # --limit-test typed in the first run and not now: the checkpoint's 64 test images, not 10,000.
    assert "96 training / 64 test images" in printed
    state = checkpoint.load(out / "last.ckpt")
    assert state["epoch"] == 2 and state["settings"]["lr"] == 0.01
    assert [row["lr"] for row in state["history"]] == [0.01, 0.01]

    command = ["train", "lenet", "--epochs", "3", "--scheduler", "none", "--out", str(out), *resume,
               *[arg if arg != "64" else "32" for arg in TINY]]
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "--limit-test 32 differs from the checkpoint's 64: using 32" in printed
    assert "96 training / 32 test images" in printed


def test_plot_draws_the_curves_without_the_data_and_says_what_it_skipped(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(out), "--data-dir", str(tmp_path / "no-data"), "--no-download"]) == 0
    printed = capsys.readouterr().out
    assert (out / "curves.png").stat().st_size > 1000 and (out / "filters.png").stat().st_size > 1000
    assert not (out / "feature_maps.png").exists() and not (out / "confusion.png").exists()
    assert "skipped feature_maps.png, confusion.png: no mnist test set" in printed, printed
    assert "wrote" in printed and "curves.png" in printed

    (out / "curves.png").unlink()
    (out / "last.ckpt").unlink()  # a history alone still gives the curves
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "curves.png").exists()
    assert "skipped filters.png, feature_maps.png, confusion.png: no last.ckpt" in capsys.readouterr().out
    status = cli.main(["plot", str(tmp_path / "nothing")])
    _one_line_error(status, capsys.readouterr().err, "not a directory")


def test_only_expected_failures_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("a bug in tinycnn")
    monkeypatch.setattr(training, "fit", bug)
    with pytest.raises(KeyError, match="a bug in tinycnn"):
        _train(tmp_path / "run")
    monkeypatch.setattr(models, "create", lambda *args, **kwargs: bug())
    with pytest.raises(KeyError):
        cli.main(["summary", "lenet"])
    monkeypatch.undo()
    # A user's mistakes, caught on purpose, are one line: a bad --model-arg name and value, a
    # too-small --input, a diverged loss.
    _one_line_error(cli.main(["train", "lenet", "--model-arg", "colour=3", "--out", str(tmp_path / "a"), *TINY]),
                    capsys.readouterr().err, "--model-arg colour=3", "lenet() does not take these arguments")
    _one_line_error(cli.main(["summary", "lenet", "--input", "1,4,4"]), capsys.readouterr().err,
                    "summary lenet --input 1,4,4")
    _one_line_error(*run("train", "lenet", "--lr", "1e30", "--out", str(tmp_path / "b"), *TINY)[::2],
                    "training diverged", "lower the learning rate")


def test_lr_inf_is_refused_without_numpy_warnings_and_help_shows_defaults_and_version(tmp_path):
    _one_line_error(*run("train", "lenet", "--lr", "inf", "--out", str(tmp_path / "a"))[::2],
                    "--lr: expected a finite number >= 0, got 'inf'")
    status, out, err = run("train", "-h")
    assert status == 0 and err == ""
    for text in ("(default: 8)", "(default: 0.01)", "(default: cosine)", "(default: a third of the run)"):
        assert text in " ".join(out.split()), text  # joined: argparse wraps lines
    status, out, _ = run("--version")
    assert status == 0 and out.strip() == f"tinycnn {tinycnn.__version__}"


@pytest.mark.parametrize("script", ["train_lenet_mnist.py", "transfer_learning.py"])
def test_examples_print_one_line_on_a_data_error(tmp_path, script):
    done = subprocess.run([sys.executable, os.path.join(REPOSITORY, "examples", script), "--quick", "--data-dir",
                           str(tmp_path), "--no-download"], capture_output=True, text=True, timeout=120)
    _one_line_error(done.returncode, done.stderr, f"{script}: error:", "not found in")


@pytest.mark.parametrize("command", [["explain", "conv2d"], ["list-models"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(command):
    # `tinycnn explain conv2d | head -1`: the reader closes the pipe while the command still has
    # output to write. The command must stop without an error message or a traceback (it used to
    # print "[Errno 32] Broken pipe"). Closing our end before the command writes anything makes
    # its first write fail, whatever the timing. list-models writes little: its output reaches the
    # pipe only when main() flushes stdout.
    process = subprocess.Popen([sys.executable, "-m", "tinycnn", *command],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert stderr == ""
    assert process.returncode == 141
