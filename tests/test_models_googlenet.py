"""GoogLeNet: Table 1 of the paper recomputed on the paper variant, and the aux-head protocol."""
import numpy as np
import pytest

import tinycnn
from tinycnn.models.common import imagenet_to_tf_input
import tinycnn.models as models
from tinycnn.models import ModelOutputs
from tinycnn.models.googlenet import paper_table_summary

from models_support import fast_init

# ARCHITECTURES.md: the exact weights (no biases) and multiply-adds of each Table 1 row on the
# Caffe model (MACs to 0.1M).
EXPECTED_ROWS = {
    "conv 7x7/2": (9_408, 118.0),
    "conv 1x1 + 3x3": (114_688, 359.7),
    "inception (3a)": (163_328, 128.0),
    "inception (3b)": (388_096, 304.3),
    "inception (4a)": (375_552, 73.6),
    "inception (4b)": (448_512, 87.9),
    "inception (4c)": (509_440, 99.9),
    "inception (4d)": (604_672, 118.5),
    "inception (4e)": (867_328, 170.0),
    "inception (5a)": (1_042_432, 51.1),
    "inception (5b)": (1_442_816, 70.7),
    "linear": (1_024_000, 1.0),
}
ROWS_WHERE_THE_PAPER_DIFFERS = {"conv 7x7/2", "inception (4c)", "inception (5a)"}


@pytest.fixture(scope="module")
def table():
    return paper_table_summary()


def test_paper_table_rows_are_the_papers(table):
    assert [row.row for row in table] == list(EXPECTED_ROWS)


@pytest.mark.parametrize("row", list(EXPECTED_ROWS))
def test_paper_table_weights_and_macs(table, row):
    computed = {r.row: r for r in table}[row]
    weights, macs_m = EXPECTED_ROWS[row]
    assert computed.weights == weights
    assert round(computed.macs / 1e6, 1) == macs_m


def test_paper_table_marks_the_three_rows_where_the_printed_figures_differ(table):
    assert {r.row for r in table if not r.agrees} == ROWS_WHERE_THE_PAPER_DIFFERS


def test_paper_table_prints(capsys):
    paper_table_summary(print_table=True)
    printed = capsys.readouterr().out
    assert printed.count("differs from the paper") == 3
    assert "1,042,432" in printed


@pytest.mark.parametrize("name", ["googlenet_paper", "googlenet"])
def test_aux_heads_in_training_and_eval(name):
    tinycnn.manual_seed(0)
    with fast_init():
        model = models.create(name, num_classes=4)
    assert model.aux_loss_weight == 0.3
    x = tinycnn.tensor(np.zeros((2, 3, 224, 224), np.float32))
    with tinycnn.config.using(shape_only=True), tinycnn.no_grad():
        output = model(x)
        assert isinstance(output, ModelOutputs)
        assert output.logits.shape == (2, 4)
        assert [aux.shape for aux in output.aux_logits] == [(2, 4), (2, 4)]
        model.eval()
        assert model(x).shape == (2, 4)
        without = models.create(name, num_classes=4, aux_logits=False)
        assert without.aux1 is None and without(x).shape == (2, 4)


def test_paper_variant_uses_real_5x5_lrn_and_biases():
    model = models.googlenet_paper()
    assert model.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert model.lrn1.size == 5 and model.lrn2 is not None
    assert model.conv1.conv.bias is not None
    tv = models.googlenet()
    assert tv.inception3a.branch3[1].conv.kernel_size == (3, 3)
    assert tv.conv1.bn.eps == 1e-3 and tv.conv1.conv.bias is None and tv.lrn1 is None


def test_transform_input_maps_imagenet_normalisation_to_minus_one_one():
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    pixels = np.random.default_rng(0).random((1, 3, 2, 2))
    normalised = tinycnn.tensor(((pixels - mean) / std).astype(np.float32))
    np.testing.assert_allclose(imagenet_to_tf_input(normalised).numpy(), (pixels - 0.5) / 0.5, atol=1e-6)
