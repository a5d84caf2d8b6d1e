"""inplace=True (F.relu, F.leaky_relu, F.add, nn.ReLU, nn.LeakyReLU) against torch's in-place ops.

The result is written into the first input's array, as torch's relu_ and +=, unless a recorded
backward keeps that memory or the input is a leaf requiring a gradient while a graph is recorded
(leaky_relu: only with no graph recorded); then the op runs out of place
(tinycnn/functional/_inplace.py): the inputs keep their values and the gradients are torch's. The
zoo networks use inplace where torchvision does: test_models_torchvision checks their eval logits
against torchvision, with the input the user passed left as it was (compare_eval_logits), and
their training step; here a ResNet and a DenseNet are checked to really write in place, in eval
under no_grad and while training.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import nn
from tinycnn.functional import basic

DTYPES = [np.float32, np.float64]
KERNELS = ["auto", "numpy"]  # the Numba kernels and the NumPy reference
# Two ways of recording no graph: no_grad, or an input that requires no gradient.
NO_GRAPH = ["no_grad", "no_input_requires_grad"]


def _values(shape, dtype, seed=0, layout="contiguous"):
    """Normal values with ReLU's special cases planted: 0, -0.0 and NaN (which passes through).
    'strided' is every other element of a wider array, a view that is not C-contiguous."""
    rng = np.random.default_rng(seed)
    wide = shape[:-1] + (2 * shape[-1],) if layout == "strided" else shape
    x = rng.standard_normal(wide).astype(dtype)
    x.reshape(-1)[:3] = [0.0, -0.0, np.nan]
    return x[..., ::2] if layout == "strided" else x


def _no_graph(mode):
    return tinycnn.no_grad() if mode == "no_grad" else tinycnn.config.using(enable_backprop=True)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", NO_GRAPH)
def test_relu_in_place_without_a_graph_writes_into_the_input(mode, dtype, layout, kernels):
    x = _values((2, 3, 4, 5), dtype, layout=layout)
    expected = torch.from_numpy(x.copy()).relu_().numpy()
    given = tinycnn.Tensor(x)
    with tinycnn.config.using(kernels=kernels), _no_graph(mode):
        y = F.relu(given, inplace=True)
    assert y.data is x and given.data is x  # the same array, written through its own strides
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("slope", [0.1, -0.5])
@pytest.mark.parametrize("mode", NO_GRAPH)
def test_leaky_relu_in_place_without_a_graph_writes_into_the_input(mode, slope):
    x = _values((3, 7), np.float32)
    with torch.no_grad():
        expected = torch_F.leaky_relu(torch.from_numpy(x.copy()), slope, inplace=True).numpy()
    with _no_graph(mode):
        y = nn.LeakyReLU(slope, inplace=True)(tinycnn.Tensor(x))
    assert y.data is x
    np.testing.assert_array_equal(x, expected)


def test_relu_layer_in_place_only_without_a_graph():
    x = _values((2, 6), np.float32)
    layer = nn.ReLU(inplace=True)
    with tinycnn.no_grad():
        assert layer(tinycnn.Tensor(x)).data is x
    before = _values((2, 6), np.float64)
    leaf = tinycnn.Tensor(before.copy(), requires_grad=True)
    y = layer(leaf)
    assert y.data is not leaf.data
    np.testing.assert_array_equal(leaf.data, before)


@pytest.mark.parametrize("other_shape", [(2, 3, 4, 4), (3, 1, 1), (4,), (), "three operands"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", NO_GRAPH)
def test_add_in_place_without_a_graph_is_torchs_plus_equals(mode, dtype, other_shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    shapes = [(2, 3, 4, 4), (3, 1, 1)] if other_shape == "three operands" else [other_shape]
    others = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    expected = torch.from_numpy(a.copy())
    for b in others:
        expected += torch.from_numpy(b)  # torch's `out += identity`, one operand after the other
    kept = [b.copy() for b in others]
    with _no_graph(mode):
        y = F.add(tinycnn.Tensor(a), *[tinycnn.Tensor(b) for b in others], inplace=True)
    assert y.data is a
    np.testing.assert_array_equal(a, expected.numpy())
    for b, before in zip(others, kept):
        np.testing.assert_array_equal(b, before)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_add_in_place_rejects_what_torchs_plus_equals_rejects(requires_grad):
    # The result has the first operand's shape and dtype, with or without a graph recorded.
    small = tinycnn.Tensor(np.ones(3), requires_grad=requires_grad)
    big = tinycnn.Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"add: inplace=True writes into the first tensor, of shape \(3,\); "
                                         r"tensor 1 of shape \(2, 3\) does not broadcast to that shape"):
        F.add(small, big, inplace=True)
    with pytest.raises(RuntimeError):
        torch.ones(3).add_(torch.ones(2, 3))  # torch: "output with shape [3] doesn't match ..."
    with pytest.raises(TypeError, match="add: inplace=True writes into the first tensor, of dtype float64; "
                                        "tensor 1 has dtype float32"):
        F.add(small, tinycnn.Tensor(np.ones(3, np.float32)), inplace=True)
    np.testing.assert_array_equal(small.data, np.ones(3))


def test_in_place_into_a_read_only_array_is_a_clear_error():
    x = tinycnn.Tensor(np.broadcast_to(np.float32(-1), (2, 3)))
    with tinycnn.no_grad():
        with pytest.raises(ValueError, match="relu: inplace=True writes into the input, but its array of shape "
                                             r"\(2, 3\) is read-only"):
            F.relu(x, inplace=True)
        with pytest.raises(ValueError, match="add: inplace=True writes into the input"):
            F.add(x, x, inplace=True)


def _leaf(array):
    return tinycnn.Tensor(array.copy(), requires_grad=True), torch.tensor(array, requires_grad=True)


def test_relu_in_place_while_recording_leaves_what_backward_needs():
    # h feeds a linear layer, which keeps h for its weight's gradient, and then an in-place ReLU.
    # Written in place, the ReLU would zero h's negative entries under linear's feet; recorded, it
    # runs out of place, so h keeps its values and every gradient is torch's (where torch's
    # relu_ here would fail at backward on its version counter).
    rng = np.random.default_rng(2)
    x, xt = _leaf(rng.standard_normal((4, 5)))
    W, Wt = _leaf(rng.standard_normal((3, 5)))
    g1, g2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 5))
    h = x * 2.0 - 0.3
    h_before = h.data.copy()
    loss = (F.linear(h, W) * g1).sum() + (F.relu(h, inplace=True) * g2).sum()
    loss.backward()
    np.testing.assert_array_equal(h.data, h_before)
    ht = xt * 2.0 - 0.3
    ((torch_F.linear(ht, Wt) * torch.from_numpy(g1)).sum() + (torch_F.relu(ht) * torch.from_numpy(g2)).sum()).backward()
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(W.grad, Wt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_leaky_relu_in_place_while_recording_equals_torch():
    rng = np.random.default_rng(3)
    x, xt = _leaf(rng.standard_normal((3, 4)))
    g = rng.standard_normal((3, 4))
    h = x * 1.5
    h_before = h.data.copy()
    (F.leaky_relu(h, 0.2, inplace=True) * g).sum().backward()
    np.testing.assert_array_equal(h.data, h_before)
    (torch_F.leaky_relu(xt * 1.5, 0.2) * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_add_in_place_while_recording_leaves_what_backward_needs():
    # The residual pattern: h = relu(x) keeps h, whose sign is its backward's mask; out = h + c
    # written into h would move that mask where h = 0 and c > 0. Recorded, it runs out of place.
    rng = np.random.default_rng(4)
    x, xt = _leaf(rng.standard_normal((2, 3, 4, 4)))
    c, ct = _leaf(rng.standard_normal((3, 1, 1)))
    g = rng.standard_normal((2, 3, 4, 4))
    h = F.relu(x)
    h_before = h.data.copy()
    out = F.add(h, c, inplace=True)
    assert out.data is not h.data
    (out * g).sum().backward()
    np.testing.assert_array_equal(h.data, h_before)
    ((torch_F.relu(xt) + ct) * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.grad, ct.grad.numpy(), rtol=1e-12, atol=1e-12)


def _shared_outputs(model, x):
    """For every ReLU module's call and every AddN: does its output share its first input's array?"""
    shared = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: shared.append(output.data is inputs[0].data))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    forward = basic.AddN.forward

    def recording_forward(self, *xs):
        y = forward(self, *xs)
        shared.append(y is xs[0])
        return y
    basic.AddN.forward = recording_forward
    try:
        output = model(x)
    finally:
        basic.AddN.forward = forward
        for hook in hooks:
            hook.remove()
    return output, shared


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_zoo_networks_write_in_place_in_eval_and_in_training(name):
    # Whether in place happens at all (the logits and the training step are checked against
    # torchvision in test_models_torchvision): every ReLU and residual add writes into its input,
    # an output of BatchNorm (which no backward keeps) or of an add, under no_grad and while a graph
    # is recorded; the image the user passed is in none, and the logits are the same numbers.
    tinycnn.manual_seed(0)
    model = models.create(name).eval()
    image = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    x = tinycnn.Tensor(image.copy())
    with tinycnn.no_grad():
        logits, shared = _shared_outputs(model, x)
    assert shared and all(shared)
    np.testing.assert_array_equal(x.data, image)
    recorded, shared = _shared_outputs(model, x)  # the parameters require gradients: a graph is recorded
    assert shared and all(shared)
    np.testing.assert_array_equal(x.data, image)
    np.testing.assert_array_equal(recorded.data, logits.data)


def test_in_place_on_batchnorms_output_while_training_equals_torch():
    # The end of a ResNet block in training: BatchNorm keeps its input, not its output, so the
    # shortcut is added into BatchNorm's output and the ReLU writes into the sum, as torch's
    # += and relu_ do; the gradients are torch's.
    rng = np.random.default_rng(6)
    x, xt = _leaf(rng.standard_normal((4, 3, 5, 5)))
    gamma, gamma_t = _leaf(rng.random(3) + 0.5)
    shortcut, shortcut_t = _leaf(rng.standard_normal((4, 3, 5, 5)))
    g = rng.standard_normal((4, 3, 5, 5))
    z = F.batch_norm(x, None, None, gamma, None, training=True)
    out = F.add(z, shortcut, inplace=True)
    y = F.relu(out, inplace=True)
    assert y.data is out.data is z.data
    (y * g).sum().backward()
    out_t = torch_F.batch_norm(xt, None, None, gamma_t, None, training=True)
    out_t += shortcut_t
    (torch_F.relu(out_t, inplace=True) * torch.from_numpy(g)).sum().backward()
    for ours, theirs in ((x, xt), (gamma, gamma_t), (shortcut, shortcut_t)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_an_add_into_relus_kept_output_runs_out_of_place():
    # ReLU keeps its output, whose sign is its backward's mask: the add after it cannot write there
    # (torch's += would make its backward fail on the version counter) and computes a new array.
    rng = np.random.default_rng(9)
    x, xt = _leaf(rng.standard_normal((2, 3, 4, 4)))
    c, ct = _leaf(rng.standard_normal((2, 3, 4, 4)))
    g = rng.standard_normal((2, 3, 4, 4))
    y = F.relu(x * 1.0, inplace=True)
    assert y.creator.name == "ReLU"
    y_before = y.data.copy()
    out = F.add(y, c, inplace=True)
    assert out.data is not y.data
    np.testing.assert_array_equal(y.data, y_before)
    (out * g).sum().backward()
    ((torch_F.relu(xt * 1.0) + ct) * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.grad, ct.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_memory_a_recorded_backward_keeps_is_not_overwritten_even_under_no_grad():
    # The image a trainable conv keeps for its weight's gradient requires no gradient itself; an
    # in-place ReLU on it (or on a view of it) under no_grad computes out of place, and the weight's
    # gradient is the one of the image as it was. Once backward has released the graph, the
    # memory is free to be written again.
    rng = np.random.default_rng(7)
    image = rng.standard_normal((2, 1, 6, 6))
    x = tinycnn.Tensor(image.copy())
    W, Wt = _leaf(rng.standard_normal((2, 1, 3, 3)))
    y = F.conv2d(x, W)
    with tinycnn.no_grad():
        assert F.relu(x, inplace=True).data is not x.data
        assert F.relu(x.reshape(2, 36), inplace=True).data is not x.data.reshape(2, 36).base
        assert F.add(x, x, inplace=True).data is not x.data
    np.testing.assert_array_equal(x.data, image)
    y.sum().backward()
    torch_F.conv2d(torch.from_numpy(image), Wt).sum().backward()
    np.testing.assert_allclose(W.grad, Wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    with tinycnn.no_grad():
        assert F.relu(x, inplace=True).data is x.data  # released: nothing keeps it any more


def test_memory_is_free_again_once_the_graph_is_dropped():
    rng = np.random.default_rng(8)
    W = tinycnn.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    h = tinycnn.Tensor(rng.standard_normal((2, 4)))
    loss = F.linear(h, W).sum()  # linear keeps h for W's gradient
    assert F.relu(h, inplace=True).data is not h.data
    del loss
    assert F.relu(h, inplace=True).data is h.data
