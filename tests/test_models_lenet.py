"""LeNet-5 (1998) layer by layer: Table I's connections, subsampling, RBF output; and the Caffe LeNet."""
import numpy as np
import pytest
import torch

import tinycnn
import tinycnn.models as models
from tinycnn.models.lenet import C3_TABLE, RBF_BITMAPS, ScaledTanh, rbf_codes

from support import assert_close


def test_c3_table_has_the_papers_60_connections():
    sizes = [len(inputs) for inputs in C3_TABLE]
    assert len(C3_TABLE) == 16 and sum(sizes) == 60
    assert sizes.count(3) == 6 and sizes.count(4) == 9 and sizes.count(6) == 1
    assert len(set(C3_TABLE)) == 16
    # every S2 map feeds exactly 10 C3 maps (the columns of Table I all have 10 X's)
    assert [sum(s in inputs for inputs in C3_TABLE) for s in range(6)] == [10] * 6


def test_lenet5_parameters_by_layer():
    model = models.lenet5()
    layers = ("c1", "s2", "c3", "s4", "c5", "f6")
    counts = {name: sum(p.size for p in getattr(model, name).parameters()) for name in layers}
    assert counts == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164}


def test_c3_maps_see_only_their_table_entries():
    # C3 runs as one convolution with a spread-out weight; each map must still be torch's
    # convolution of its own table entries only, forward and backward.
    tinycnn.manual_seed(0)
    model = models.lenet5()
    x = np.random.default_rng(0).standard_normal((2, 6, 14, 14)).astype(np.float32)
    gy = np.random.default_rng(1).standard_normal((2, 16, 10, 10)).astype(np.float32)
    x_tensor = tinycnn.tensor(x, requires_grad=True)
    y_tensor = model.c3(x_tensor)
    y_tensor.backward(tinycnn.tensor(gy))
    y = y_tensor.numpy()
    assert y.shape == (2, 16, 10, 10)
    torch_x = torch.from_numpy(x).requires_grad_()
    for o, inputs in enumerate(C3_TABLE):
        conv = model.c3.convs[o]
        weight = torch.from_numpy(conv.weight.data).requires_grad_()
        bias = torch.from_numpy(conv.bias.data).requires_grad_()
        expected = torch.nn.functional.conv2d(torch_x[:, list(inputs)], weight, bias)
        assert_close(y[:, o:o + 1], expected, what=f"C3 map {o}")
        expected.backward(torch.from_numpy(gy[:, o:o + 1]))
        assert_close(conv.weight.grad, weight.grad, what=f"C3 map {o} weight gradient")
        assert_close(conv.bias.grad, bias.grad, what=f"C3 map {o} bias gradient")
    assert_close(x_tensor.grad, torch_x.grad, what="C3 input gradient")  # summed over the 16 maps


def test_subsampling_is_a_scaled_sum_of_each_2x2_field_plus_bias():
    model = models.lenet5()
    model.s2.weight.data[...] = np.arange(1, 7, dtype=np.float32)
    model.s2.bias.data[...] = -np.arange(6, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((1, 6, 4, 4)).astype(np.float32)
    fields = x.reshape(1, 6, 2, 2, 2, 2).sum(axis=(3, 5))  # sum over each 2x2 field
    expected = fields * np.arange(1, 7).reshape(1, 6, 1, 1) - np.arange(6).reshape(1, 6, 1, 1)
    np.testing.assert_allclose(model.s2(tinycnn.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_scaled_tanh_maps_one_to_one():
    y = ScaledTanh()(tinycnn.tensor(np.array([-1.0, 0.0, 1.0]))).numpy()
    np.testing.assert_allclose(y, [-1.0, 0.0, 1.0], atol=2e-4)


def test_rbf_output_is_minus_the_squared_distance_to_fixed_codes():
    codes = rbf_codes()
    assert codes.shape == (10, 84) and set(np.unique(codes)) == {-1.0, 1.0}
    assert all(len(rows) == 12 and all(len(row) == 7 for row in rows) for rows in RBF_BITMAPS.values())
    assert len({codes[d].tobytes() for d in range(10)}) == 10
    model = models.lenet5()
    x = np.random.default_rng(2).standard_normal((3, 84)).astype(np.float32)
    expected = -((x[:, None, :] - codes[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(model.output(tinycnn.tensor(x)).numpy(), expected, rtol=1e-5)
    # an input equal to a code is nearest to that code
    assert model.output(tinycnn.tensor(codes)).numpy().argmax(axis=1).tolist() == list(range(10))


def test_lenet5_input_sizes_and_heads():
    x28 = tinycnn.tensor(np.zeros((2, 1, 28, 28), np.float32))
    assert models.lenet5(padding=2)(x28).shape == (2, 10)
    x32 = tinycnn.tensor(np.zeros((1, 1, 32, 32), np.float32))
    assert models.lenet5(head="linear", num_classes=7)(x32).shape == (1, 7)
    assert isinstance(models.lenet5(subsampling_activation="sigmoid").act2, tinycnn.nn.Sigmoid)
    with pytest.raises(ValueError, match="RBF head has codes for the 10 digits"):
        models.lenet5(num_classes=5)
    with pytest.raises(ValueError, match="head must be 'rbf' or 'linear'"):
        models.lenet5(head="softmax")


def test_caffe_lenet_layers():
    model = models.lenet()
    shapes = {row.name: row.output_shape for row in tinycnn.summary(model, (1, 28, 28), print_table=False).rows}
    assert shapes["features.2"] == (1, 20, 12, 12) and shapes["features.5"] == (1, 50, 4, 4)
    assert models.lenet(conv_relu=True).num_parameters() == 431_080
    with pytest.raises(ValueError, match="input_size must be at least 12"):
        models.lenet(input_size=8)
