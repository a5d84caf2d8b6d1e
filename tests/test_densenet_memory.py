"""DenseNet's memory_efficient option (models/densenet.py, RecomputedBottleneck): the same function
and the same gradients as the plain network, in float64 to round-off, against the plain tinycnn
network with the same weights and against torchvision's DenseNet-121; and at most 60% of the plain
network's memory kept for backward, counted by tinycnn.trace() and by an independent walk of the
graph (tests/test_trace.py)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinycnn
import tinycnn.models as models
from models_support import skipped_init
from reference_comparison import compare_training_step, dropout_off, randomize_batchnorm
from test_models_torchvision import reference_network
from test_trace import bytes_held_by_graph
from tinycnn import nn
from tinycnn.models.densenet import DenseLayer

# DenseNet-121's activation memory with memory_efficient=True over the plain network's (issue 14).
MEMORY_RATIO_BOUND = 0.6


def run_step(model, x, output_weights):
    """One float64 forward/backward of L = sum(w * y): the output, the input gradient, {parameter
    name: gradient}, and what the trace saw: the bytes kept for backward by its count and by the
    independent count (both read after forward, before backward), its count at the end, the
    number of rows (Functions run backward) and of Functions recorded in forward."""
    x = tinycnn.tensor(x, requires_grad=True)
    with tinycnn.trace() as t:
        y = model(x)
        # The trace counts a leaf that requires a gradient, here the input, as a parameter.
        kept = dict(traced=t.activation_bytes, counted=bytes_held_by_graph(y, model) - x.data.nbytes)
        (y * tinycnn.tensor(output_weights)).sum().backward()
    kept.update(traced_at_end=t.activation_bytes, rows=len(t.rows), recorded=t.functions_recorded)
    grads = {name: p.grad for name, p in model.named_parameters()}
    return y.numpy(), x.grad, grads, kept


def assert_equal_to_round_off(actual, expected, what):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * scale, err_msg=what)


@pytest.fixture(scope="module")
def densenet121_pair():
    """The plain and memory-efficient DenseNet-121 with the same weights and randomised BatchNorm,
    each after one step on the same 2 x 3 x 64 x 64 float64 batch."""
    with skipped_init():
        plain = models.create("densenet121")
        efficient = models.create("densenet121", memory_efficient=True)
    rng = np.random.default_rng(0)
    for m in plain.modules():  # BatchNorm away from 0/1, so that a swapped scale or shift shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features) * 0.1
            m.running_var[...] = rng.random(m.num_features) + 0.5
            m.weight.data[...] = rng.random(m.num_features) + 0.5
            m.bias.data[...] = rng.standard_normal(m.num_features) * 0.1
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight.data[0].size
            m.weight.data[...] = rng.standard_normal(m.weight.shape) * np.sqrt(2.0 / fan_in)
            if m.bias is not None:
                m.bias.data[...] = 0.1 * rng.standard_normal(m.bias.shape)
    plain.double().train()
    efficient.load_state_dict(plain.state_dict())
    efficient.double().train()
    x = rng.standard_normal((2, 3, 64, 64))
    output_weights = rng.standard_normal((2, 1000))
    return dict(plain=(plain, run_step(plain, x, output_weights)),
                efficient=(efficient, run_step(efficient, x, output_weights)))


def test_state_dict_keys_are_unchanged():
    with skipped_init():
        plain = models.create("densenet121")
        efficient = models.create("densenet121", memory_efficient=True)
    assert list(efficient.state_dict()) == list(plain.state_dict())
    assert all(layer.memory_efficient for layer in efficient.modules() if isinstance(layer, models.densenet.DenseLayer))


def test_output_input_and_parameter_gradients_equal_the_plain_network(densenet121_pair):
    _, (y, gx, grads, _) = densenet121_pair["plain"]
    _, (y_efficient, gx_efficient, grads_efficient, _) = densenet121_pair["efficient"]
    assert_equal_to_round_off(y_efficient, y, "output")
    assert_equal_to_round_off(gx_efficient, gx, "input gradient")
    assert sorted(grads_efficient) == sorted(grads)
    for name, grad in grads.items():
        assert grads_efficient[name] is not None, name
        assert_equal_to_round_off(grads_efficient[name], grad, f"gradient of {name}")


def test_running_statistics_are_updated_once_as_in_the_plain_network(densenet121_pair):
    # The backward recomputes BatchNorm with the batch statistics but must not update the
    # running ones a second time.
    plain_state = densenet121_pair["plain"][0].state_dict()
    efficient_state = densenet121_pair["efficient"][0].state_dict()
    for key, value in plain_state.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert_equal_to_round_off(np.asarray(efficient_state[key], dtype=np.float64),
                                      np.asarray(value, dtype=np.float64), key)


def test_activation_memory_is_at_most_60_percent_of_the_plain_network(densenet121_pair):
    plain, efficient = densenet121_pair["plain"][1][3], densenet121_pair["efficient"][1][3]
    traced, traced_efficient = plain["traced"], efficient["traced"]
    assert traced == plain["counted"] and traced_efficient == efficient["counted"]
    assert traced_efficient <= MEMORY_RATIO_BOUND * traced, traced_efficient / traced
    # A floor from the architecture: every dense layer's k new maps and 4k bottleneck maps stay
    # (2 x 64 x 16 x 16 x 8 bytes per 64 maps at the first block), so a count that dropped whole
    # arrays cannot pass: 58 layers, k = 32, at 16, 8, 4 and 2 pixels a side.
    floor = sum(layers * (32 + 128) * 2 * side * side * 8
                for layers, side in zip((6, 12, 24, 16), (16, 8, 4, 2)))
    assert traced_efficient > floor


def test_the_trace_sees_one_row_per_recomputed_bottleneck_and_not_its_recomputed_arrays(densenet121_pair):
    # The backward's recomputed sub-graphs are neither rows nor memory the graph keeps: after the
    # step the trace adds, in both networks alike, only what the loss's own ops keep.
    plain, efficient = densenet121_pair["plain"][1][3], densenet121_pair["efficient"][1][3]
    assert efficient["rows"] == efficient["recorded"] and plain["rows"] == plain["recorded"]
    assert plain["recorded"] - efficient["recorded"] == 58 * 3  # concat, norm1, relu1, conv1 -> one Function
    assert efficient["traced_at_end"] - efficient["traced"] == plain["traced_at_end"] - plain["traced"]


def test_training_step_equals_torchvisions_densenet121():
    """The memory-efficient network against torchvision's plain DenseNet-121 (float64, 64x64): the
    outputs, every parameter gradient, the input gradient and the running statistics."""
    theirs = randomize_batchnorm(reference_network("densenet121"))
    with skipped_init():
        ours = models.create("densenet121", memory_efficient=True)
    dropout_off(ours, theirs)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    compare_training_step(ours, theirs, x)


def small_densenet(memory_efficient):
    return models.densenet.DenseNet(4, (2, 3), 8, bn_size=2, num_classes=5, stem="cifar",
                                    memory_efficient=memory_efficient)


def test_eval_mode_input_gradient_uses_the_running_statistics():
    """In eval mode (say, a saliency map of a trained network) the recomputed BatchNorm must use
    the running statistics, as norm1 did in forward."""
    tinycnn.manual_seed(0)
    plain = small_densenet(False).double()
    efficient = small_densenet(True).double()
    rng = np.random.default_rng(1)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.random(m.num_features) + 0.5
    efficient.load_state_dict(plain.state_dict())
    x = rng.standard_normal((2, 3, 8, 8))
    output_weights = rng.standard_normal((2, 5))
    plain_result = run_step(plain.eval(), x, output_weights)
    efficient_result = run_step(efficient.eval(), x, output_weights)
    assert_equal_to_round_off(efficient_result[0], plain_result[0], "output")
    assert_equal_to_round_off(efficient_result[1], plain_result[1], "input gradient")
    for name, grad in plain_result[2].items():
        assert_equal_to_round_off(efficient_result[2][name], grad, f"gradient of {name}")



@given(widths=st.lists(st.integers(1, 3), min_size=1, max_size=3), side=st.integers(1, 3),
       training=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_recomputed_bottleneck_passes_gradcheck(widths, side, training, seed):
    """Finite differences through one memory-efficient dense layer, with respect to each input
    map, norm1's weight and bias and conv1's weight (the RecomputedBottleneck's inputs), in
    training mode (batch statistics) and eval mode (running statistics)."""
    tinycnn.manual_seed(seed)
    layer = DenseLayer(sum(widths), growth_rate=2, bn_size=2, memory_efficient=True).double().train(training)
    rng = np.random.default_rng(seed)
    layer.norm1.running_mean[...] = rng.standard_normal(sum(widths))
    layer.norm1.running_var[...] = rng.random(sum(widths)) + 0.5
    features = [tinycnn.tensor(rng.standard_normal((2, width, side + 1, side)), requires_grad=True)
                for width in widths]
    parameters = [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight]

    def forward(*inputs):  # the parameters are the layer's own, perturbed in place by gradcheck
        return layer(list(inputs[:len(widths)]))
    assert tinycnn.gradcheck(forward, [*features, *parameters])
