"""tinycnn.gradflow: per-layer gradient norms against PyTorch on a twin network, the forward order of
the layers, the CSV and PNG of `tinycnn gradflow`, and examples/degradation.py in quick mode.

Data: $TINYCNN_DATA (CI sets it to ../shared/data), else ../shared/data next to the repository.
"""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import cli, gradflow, nn

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("TINYCNN_DATA") or os.path.join(REPOSITORY, "..", "shared", "data")


class SmallNet(nn.Module):
    """conv-BN-ReLU, conv-ReLU, fc; the fc is defined first but runs last."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6 * 3 * 3, 10)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))  # N x 4 x 8 x 8
        x = F.relu(self.conv2(x))           # N x 6 x 3 x 3
        return self.head(F.flatten(x, 1))


class TorchTwin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6 * 3 * 3, 10)
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(torch.flatten(x, 1))


def test_measure_matches_torch_autograd_on_a_twin():
    tinycnn.manual_seed(0)
    net = SmallNet()
    twin = TorchTwin()
    twin.load_state_dict({key: torch.from_numpy(value) for key, value in net.state_dict().items()})
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 16)

    rows = gradflow.measure(net, images, labels)
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(images)), torch.from_numpy(labels)).backward()
    expected = []
    for depth, name in enumerate(["conv1", "conv2", "head"], start=1):  # the order of the forward pass
        weight = getattr(twin, name).weight
        grad_norm, weight_norm = weight.grad.double().norm().item(), weight.detach().double().norm().item()
        expected.append((name, "linear" if name == "head" else "conv", depth, grad_norm, weight_norm,
                         grad_norm / weight_norm))
    assert [(r["layer"], r["kind"], r["depth"]) for r in rows] == [e[:3] for e in expected]
    for row, (_, _, _, grad_norm, weight_norm, ratio) in zip(rows, expected):
        np.testing.assert_allclose([row["grad_norm"], row["weight_norm"], row["ratio"]], [grad_norm, weight_norm, ratio],
                                   rtol=1e-4, err_msg=row["layer"])
    assert gradflow.first_to_last_conv_ratio(rows) == pytest.approx(expected[0][3] / expected[1][3], rel=1e-4)


def test_layers_read_inside_another_modules_forward_are_found_in_order():
    # LeNet-5's C3 builds one weight from its 16 small convolutions' weights, never calling them.
    tinycnn.manual_seed(0)
    net = models.create("lenet5")
    images = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    rows = gradflow.measure(net, images, np.arange(4))
    assert [r["layer"] for r in rows] == ["c1"] + [f"c3.convs.{i}" for i in range(16)] + ["c5", "f6"]
    for row in rows:
        module = dict(net.named_modules())[row["layer"]]
        assert row["grad_norm"] == pytest.approx(float(np.linalg.norm(module.weight.grad.astype(np.float64))))
        assert row["grad_norm"] > 0


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_cli_gradflow_writes_png_and_csv_and_prints_first_to_last_ratios(tmp_path, capsys):
    out = tmp_path / "flow"
    assert cli.main(["gradflow", "plain20", "resnet20", "--steps", "2", "--batch-size", "8", "--out", str(out),
                     "--data-dir", DATA]) == 0
    printed = capsys.readouterr().out
    assert (out / "gradflow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_csv(out / "gradflow.csv")
    for name in ("plain20", "resnet20"):
        for stage, step in (("init", "0"), ("trained", "2")):
            rows = [r for r in records if r["model"] == name and r["stage"] == stage]
            # 19 convolutions and the fc, from the input to the output
            assert [r["kind"] for r in rows] == ["conv"] * 19 + ["linear"]
            assert [int(r["depth"]) for r in rows] == list(range(1, 21)) and {r["step"] for r in rows} == {step}
            assert rows[0]["layer"] == "conv1" and rows[-2]["layer"] == "layer3.2.conv2"
            for r in rows:
                assert float(r["ratio"]) == pytest.approx(float(r["grad_norm"]) / float(r["weight_norm"]))
            first_over_last = float(rows[0]["grad_norm"]) / float(rows[-2]["grad_norm"])
            label = f"{name} {stage}" + (" (2 steps)" if step != "0" else "")
            line = next(line for line in printed.splitlines() if line.startswith(label + ":"))
            assert line.endswith(f"first/last = {first_over_last:.3g}")
    init = [r for r in records if r["model"] == "plain20" and r["stage"] == "init"]
    trained = [r for r in records if r["model"] == "plain20" and r["stage"] == "trained"]
    assert all(a["weight_norm"] != b["weight_norm"] for a, b in zip(init, trained))  # the steps did train

    assert cli.main(["gradflow", "plain21", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn: error: gradflow:") and "unknown model 'plain21'" in err and "plain20" in err
    # LeNet-5 is specified for 32x32: on MNIST's 28x28 its C5 finds a 4x4 map for a 5x5 kernel.
    assert cli.main(["gradflow", "lenet5", "--steps", "0", "--out", str(out), "--data-dir", DATA]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn: error: gradflow lenet5: the network does not take 64 MNIST images of 1x28x28")


def test_degradation_example_runs_in_quick_mode(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPOSITORY, "examples", "degradation.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TINYCNN_DATA=DATA))
    assert done.returncode == 0, done.stderr
    for name in ("plain20", "plain56", "resnet20", "resnet56"):
        assert any(line.startswith(name) and "training error" in line for line in done.stdout.splitlines())
    rows = read_csv(tmp_path / "degradation.csv")
    assert [(r["model"], r["step"]) for r in rows] == [(name, str(step)) for name in
                                                      ("plain20", "plain56", "resnet20", "resnet56")
                                                      for step in (1, 2, 3)]
    assert (tmp_path / "degradation.png").stat().st_size > 1000
