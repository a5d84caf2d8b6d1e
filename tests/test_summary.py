"""tinycnn.summary: rows, totals, shape-only mode, torchvision's multiply-add counts."""
import time

import numpy as np
import pytest

import tinycnn
import tinycnn.models as models
from tinycnn import nn
from tinycnn.summary import SummaryRow, count_multiply_adds

from models_support import skipped_init


def test_lenet_rows_by_hand():
    result = tinycnn.summary(models.lenet(), (1, 28, 28), print_table=False)
    conv_and_fc = [row for row in result.rows if row.type in ("Conv2d", "Linear")]
    assert conv_and_fc == [
        SummaryRow("features.0", "Conv2d", (1, 20, 24, 24), 20 * 25 + 20, 20 * 24 * 24 * 25),
        SummaryRow("features.3", "Conv2d", (1, 50, 8, 8), 50 * 20 * 25 + 50, 50 * 8 * 8 * 20 * 25),
        SummaryRow("classifier.0", "Linear", (1, 500), 800 * 500 + 500, 800 * 500),
        SummaryRow("classifier.2", "Linear", (1, 10), 500 * 10 + 10, 500 * 10),
    ]
    assert [row.type for row in result.rows] == ["Conv2d", "Identity", "MaxPool2d", "Conv2d", "Identity", "MaxPool2d",
                                                 "Linear", "ReLU", "Linear"]
    assert result.total_params == result.trainable_params == 431_080
    assert result.total_macs == sum(row.macs for row in conv_and_fc)
    assert result.input_shape == (1, 1, 28, 28) and result.output_shape == (1, 10)


def test_grouped_conv_macs_divide_by_groups():
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=4)
    assert count_multiply_adds(conv, ((2, 8, 5, 5),), (2, 16, 5, 5)) == 2 * 16 * 5 * 5 * 2 * 3 * 3


def test_shapes_only_gives_the_same_table_as_the_real_forward():
    tinycnn.manual_seed(0)
    model = models.resnet20()
    fast = tinycnn.summary(model, (3, 32, 32), print_table=False)
    real = tinycnn.summary(model, (3, 32, 32), shapes_only=False, print_table=False)
    assert fast.rows == real.rows and fast.total_macs == real.total_macs


def test_summary_restores_mode_and_leaves_batchnorm_statistics_alone():
    model = models.resnet20()
    before = model.bn1.running_mean.copy()
    tinycnn.summary(model, (3, 8, 8), shapes_only=False, print_table=False)
    assert model.training
    np.testing.assert_array_equal(model.bn1.running_mean, before)
    model.eval()
    tinycnn.summary(model, (3, 8, 8), print_table=False)
    assert not model.training


def test_vgg16_at_224_is_summarised_in_shape_only_mode_quickly():
    with skipped_init():
        model = models.vgg16()
    start = time.perf_counter()
    result = tinycnn.summary(model, (3, 224, 224), print_table=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"summary took {elapsed:.2f} s"
    assert result.total_params == 138_357_544
    assert result.total_macs == 15_470_264_320
    assert result.output_shape == (1, 1000)


# ARCHITECTURES.md: torchvision's GMACs at 224x224 (299 for Inception v3), as printed.
TORCHVISION_GMACS = {
    "alexnet": "0.714", "vgg11": "7.609", "vgg13": "11.308", "vgg16": "15.47", "vgg19": "19.632",
    "resnet18": "1.814", "resnet34": "3.664", "resnet50": "4.089", "resnet101": "7.801", "resnet152": "11.514",
    "resnext50_32x4d": "4.23", "resnext101_32x8d": "16.414", "googlenet": "1.498", "inception_v3": "5.713",
    "densenet121": "2.834", "densenet169": "3.36", "densenet201": "4.291",
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_multiply_adds_match_torchvision(name):
    with skipped_init():
        model = models.create(name)
    size = 299 if name == "inception_v3" else 224
    printed = TORCHVISION_GMACS[name]
    decimals = len(printed.split(".")[1])
    gmacs = tinycnn.summary(model, (3, size, size), print_table=False).total_macs / 1e9
    assert round(gmacs, decimals) == float(printed)


def test_table_is_printed(capsys):
    result = tinycnn.summary(models.lenet(), (1, 28, 28))
    printed = capsys.readouterr().out
    assert printed.strip() == result.table().strip()
    assert "features.3" in printed and "Total params: 431,080" in printed and "1x50x8x8" in printed


def test_the_command_line_calls_work():
    # tinycnn.summary is the function; tinycnn.summary.summary must reach it as well
    model = models.create("lenet")
    assert tinycnn.summary.summary is tinycnn.summary
    assert tinycnn.summary.summary(model, [1, 28, 28], print_table=False).output_shape == (1, 10)


def test_nested_rows_and_batch():
    result = tinycnn.summary(models.resnet20(), (2, 3, 8, 8), print_table=False, leaves_only=False)
    names = [row.name for row in result.rows]
    assert "layer1.0" in names and "layer1" in names
    assert names.index("layer1.0.conv1") < names.index("layer1.0") < names.index("layer1")
    block = [row for row in result.rows if row.name == "layer1.0"][0]
    assert block.type == "CifarBasicBlock" and block.params == 2 * (16 * 16 * 9 + 2 * 16) and block.macs == 0
    assert result.output_shape == (2, 10)
    assert result.total_macs == tinycnn.summary(models.resnet20(), (3, 8, 8), print_table=False).total_macs * 2


class Split(nn.Module):
    def forward(self, x):
        return x, x * 2.0


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.split = Split()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        a, b = self.split(x)
        return self.conv(a), b


def test_several_outputs_are_listed():
    result = tinycnn.summary(TwoOutputs(), (3, 4, 4), print_table=False)
    assert result.rows[0] == SummaryRow("split", "Split", ((1, 3, 4, 4), (1, 3, 4, 4)), 0, 0)
    assert result.output_shape == ((1, 2, 4, 4), (1, 3, 4, 4))
    assert "1x3x4x4, 1x3x4x4" in result.table()


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"summary: expected input_shape \(C, H, W\) or \(N, C, H, W\)"):
        tinycnn.summary(models.lenet(), (28, 28), print_table=False)


def test_modules_that_do_not_run_are_named_so_rows_and_totals_agree():
    # GoogLeNet's auxiliary classifiers run only in training mode; summary runs in eval mode.
    model = models.create("googlenet_paper")
    result = tinycnn.summary(model, (3, 224, 224), print_table=False)
    aux_params = sum(p.size for name, p in model.named_parameters() if name.startswith("aux"))
    assert result.not_run == ["aux1", "aux2"] and result.not_run_params == aux_params == 6_379_728
    assert sum(row.params for row in result.rows) + result.not_run_params == result.total_params == 13_378_280
    assert "not run for this input: aux1, aux2 - 6,379,728 params" in result.table()
    plain = tinycnn.summary(models.lenet(), (1, 28, 28), print_table=False)
    assert plain.not_run == [] and "not run" not in plain.table()
