"""tinycnn.trace(): rows in backward order with module names, gradient norms and ratios checked
against PyTorch on LeNet; the memory kept for backward checked against an independent walk of the
graph (ResNet-50 at 224x224, every zoo network at its smallest input, a hand-made graph with views
and shared arrays); the report, the CSV and `tinycnn trace`."""
import csv
import math

import numpy as np
import pytest
import torch

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from benchmarks import twins
from tinycnn import autograd, cli
from tinycnn import train as training

from models_support import fast_init, skipped_init
from test_models import SMALL_KWARGS, small_input


def base_buffer(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def arrays_reachable(value):
    """Every NumPy array reachable from `value` through Tensors' data, tuples, lists and dicts."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, tinycnn.Tensor):
        yield value.data
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from arrays_reachable(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from arrays_reachable(item)


def graph_functions(output):
    """The Functions of the graph behind `output`, found by walking creators and inputs."""
    found, stack = {}, [output.creator]
    while stack:
        function = stack.pop()
        if id(function) in found:
            continue
        found[id(function)] = function
        stack.extend(x.creator for x in function.inputs if x is not None and x.creator is not None)
    return list(found.values())


def bytes_held_by_graph(output, model):
    """The independent count: the distinct buffers (a view counts as its base) reachable from
    every Function of the graph, less the model's parameters and buffers (model state)."""
    state = {id(base_buffer(p.data)) for p in model.parameters()}
    state |= {id(base_buffer(b)) for b in model.buffers()}
    held = {}
    for function in graph_functions(output):
        for array in arrays_reachable(vars(function)):
            buffer = base_buffer(array)
            if id(buffer) not in state:
                held[id(buffer)] = buffer
    return sum(buffer.nbytes for buffer in held.values())


def test_memory_kept_for_backward_by_resnet50_at_224_matches_an_independent_count():
    with fast_init():
        model = models.create("resnet50")
    x = tinycnn.tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    with tinycnn.trace() as t:
        loss = F.cross_entropy(model(x), tinycnn.tensor(np.array([7])))
    assert t.functions_recorded == len(graph_functions(loss))
    assert t.activation_bytes == bytes_held_by_graph(loss, model)
    assert t.parameter_bytes == sum(p.data.nbytes for p in model.parameters()) == 25_557_032 * 4
    # At least every convolution's float32 output is kept (BatchNorm reads it): a floor from the
    # architecture, so a count that misses whole arrays cannot pass.
    conv_outputs = []
    handles = [m.register_forward_hook(lambda m, a, out: conv_outputs.append(out.data.nbytes))
               for m in model.modules() if isinstance(m, tinycnn.nn.Conv2d)]
    with tinycnn.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert len(conv_outputs) == 53
    assert t.activation_bytes > sum(conv_outputs)


def test_views_and_shared_arrays_count_once_charged_to_the_first_function_that_holds_them():
    x = tinycnn.tensor(np.ones((4, 8), dtype=np.float32))  # 128 bytes each
    weight = tinycnn.Parameter(np.ones((4, 8), dtype=np.float32))
    with tinycnn.trace() as t:
        h = x * weight  # Mul saves x (kept) and the parameter (parameter memory)
        y = F.relu(h)  # saves y; h, its input, is not kept (the graph holds only h's GraphValue)
        z = y.reshape(2, 16)  # saves nothing
        loss = (z * z).sum()  # Mul saves z twice, a view of y's buffer: nothing new; Sum saves nothing
        loss.backward()
    rows = [(row.op, row.saved_bytes, row.new_bytes) for row in t.rows]
    assert rows == [("Sum", 0, 0), ("Mul", 128, 0), ("Reshape", 0, 0), ("ReLU", 128, 128), ("Mul", 128, 128)]
    assert t.activation_bytes == 128 + 128
    assert t.parameter_bytes == 128


def copy_lenet():
    tinycnn.manual_seed(0)
    ours = models.create("lenet").double()
    theirs = twins.lenet().double()
    theirs.load_state_dict({key: torch.tensor(value) for key, value in ours.state_dict().items()})
    return ours, theirs


def test_lenet_rows_follow_the_backward_with_torchs_gradient_norms_and_ratios():
    ours, theirs = copy_lenet()
    rng = np.random.default_rng(1)
    x_array, labels = rng.standard_normal((3, 1, 28, 28)), np.array([1, 5, 9])
    with tinycnn.trace() as t:
        F.cross_entropy(ours(tinycnn.tensor(x_array)), tinycnn.tensor(labels)).backward()

    outputs = {}  # torch: the gradient reaching each module's output, and the flattened features
    for name, module in theirs.named_modules():
        if name and not isinstance(module, (torch.nn.Sequential, torch.nn.Identity)):
            module.register_forward_hook(lambda m, a, out, name=name: outputs.setdefault(name, out).retain_grad())
    theirs.classifier.register_forward_pre_hook(lambda m, args: outputs.setdefault("flatten", args[0]).retain_grad())
    loss = torch.nn.functional.cross_entropy(theirs(torch.tensor(x_array)), torch.tensor(labels))
    loss.backward()

    expected = [("CrossEntropy", None, (), None), ("Linear", "classifier.2", (3, 10), "classifier.2"),
                ("ReLU", "classifier.1", (3, 500), "classifier.1"), ("Linear", "classifier.0", (3, 500), "classifier.0"),
                ("Flatten", "", (3, 800), "flatten"), ("MaxPool2d", "features.5", (3, 50, 4, 4), "features.5"),
                ("Conv2d", "features.3", (3, 50, 8, 8), "features.3"),
                ("MaxPool2d", "features.2", (3, 20, 12, 12), "features.2"),
                ("Conv2d", "features.0", (3, 20, 24, 24), "features.0")]
    assert [(row.op, row.module, row.output_shape) for row in t.rows] == [e[:3] for e in expected]
    for row, (_, _, _, torch_name) in zip(t.rows, expected):
        torch_norm = 1.0 if torch_name is None else outputs[torch_name].grad.norm().item()
        assert row.grad_norm == pytest.approx(torch_norm, rel=1e-9), row.module
        assert row.forward_time > 0 and row.backward_time > 0
    torch_parameters = dict(theirs.named_parameters())
    ratios = {name: ratio for row in t.rows for name, ratio in row.parameter_ratios.items()}
    assert sorted(ratios) == sorted(torch_parameters)
    for name, ratio in ratios.items():
        p = torch_parameters[name]
        assert ratio == pytest.approx((p.grad.norm() / p.norm()).item(), rel=1e-9), name
    assert t.rows[1].grad_weight_ratio == ratios["classifier.2.weight"]
    assert math.isnan(t.rows[2].grad_weight_ratio)  # ReLU has no parameter


def test_report_and_csv(tmp_path):
    ours, _ = copy_lenet()
    with tinycnn.trace() as t:
        F.cross_entropy(ours(tinycnn.tensor(np.ones((2, 1, 28, 28)))), tinycnn.tensor(np.array([0, 1]))).backward()
    text = str(t)
    assert text == t.report()
    assert "classifier.2" in text and "features.0" in text
    assert "Kept for backward (activation memory)" in text and "by 9 functions" in text
    top_time = text.split("Top 5 ops by time")[1].split("Top 5 ops by memory")[0].strip().splitlines()[1:]
    top_memory = text.split("Top 5 ops by memory")[1].strip().splitlines()[1:]
    assert len(top_time) == len(top_memory) == 5
    biggest = max(t.rows, key=lambda row: row.new_bytes)
    assert top_memory[0].split()[:3] == [f"#{t.rows.index(biggest)}", biggest.op, biggest.module]
    assert t.top("new_bytes")[0] is biggest
    assert sum(row.new_bytes for row in t.rows) == t.activation_bytes

    path = tmp_path / "trace.csv"
    t.to_csv(path)
    with open(path, newline="") as file:
        lines = list(csv.DictReader(file))
    assert len(lines) == 9
    assert [line["op"] for line in lines] == [row.op for row in t.rows]
    assert lines[8]["module"] == "features.0" and lines[8]["output_shape"] == "2x20x24x24"
    assert int(lines[8]["saved_bytes"]) == t.rows[8].saved_bytes == 2 * 28 * 28 * 8  # the float64 image
    assert float(lines[1]["grad_weight_ratio"]) == pytest.approx(t.rows[1].grad_weight_ratio)
    assert "classifier.2.weight=" in lines[1]["parameter_ratios"]


def test_trace_is_off_outside_the_block_even_after_an_error_and_does_not_nest():
    x = tinycnn.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        with tinycnn.trace():
            (x * 2).sum()
            1 / 0
    assert autograd.active_trace is None
    y = x * 2
    assert "trace_row" not in vars(y.creator)  # untraced ops carry nothing for the trace
    with tinycnn.trace():
        with pytest.raises(RuntimeError, match="already active"):
            with tinycnn.trace():
                pass


def test_a_retained_graph_run_twice_gives_a_row_per_backward():
    x = tinycnn.tensor(np.ones(3), requires_grad=True)
    with tinycnn.trace() as t:
        y = (x * 3).sum()
        y.backward(retain_graph=True)
        y.backward()
    assert [row.op for row in t.rows] == ["Sum", "Mul", "Sum", "Mul"]
    assert t.rows[0] is not t.rows[2]


def test_trace_with_a_module_backward_hook():
    ours, _ = copy_lenet()
    seen = []
    ours.classifier.register_full_backward_hook(lambda m, grad_input, grad_output: seen.append(grad_input[0].shape))
    with tinycnn.trace() as t:
        F.cross_entropy(ours(tinycnn.tensor(np.ones((2, 1, 28, 28)))), tinycnn.tensor(np.array([0, 1]))).backward()
    assert seen == [(2, 800)]
    # The hook's two identity Functions are ops of the graph like any other, inside `classifier`.
    assert [(row.op, row.module) for row in t.rows if row.op == "BackwardHookFunction"] == [
        ("BackwardHookFunction", "classifier"), ("BackwardHookFunction", "classifier")]
    assert len(t.rows) == 11


def constant_weights(model):
    """Weights 1/fan-in (biases 1/size): finite activations at any depth without drawing random
    numbers (the trace does not depend on the values; drawing VGG's would cost seconds)."""
    for parameter in model.parameters():
        parameter.data.fill(1.0 / (parameter.data[0].size if parameter.ndim > 1 else parameter.size))


@pytest.mark.parametrize("name", models.list())
def test_trace_of_every_zoo_network_at_its_smallest_input(name):
    with skipped_init():
        model = models.create(name, **SMALL_KWARGS.get(name, dict(num_classes=3)))
    constant_weights(model)
    shape = small_input(name)
    x = tinycnn.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with tinycnn.trace() as t:
        loss, _ = training.training_loss(model, model(x), tinycnn.tensor(np.zeros(shape[0], dtype=int)))
        functions = len(graph_functions(loss))
        kept = bytes_held_by_graph(loss, model)
        loss.backward()
    assert len(t.rows) == t.functions_recorded == functions
    assert t.activation_bytes == kept
    assert t.parameter_bytes == sum(p.data.nbytes for p in model.parameters())
    module_names = {name for name, _ in model.named_modules()}
    assert {row.module for row in t.rows} - module_names == {None}  # None: the loss, outside the model
    assert all(math.isfinite(row.grad_norm) for row in t.rows)
    ratios = {name for row in t.rows for name in row.parameter_ratios}
    assert ratios == {name for name, _ in model.named_parameters()}
    first_convolution = next(name for name, m in model.named_modules() if isinstance(m, tinycnn.nn.Conv2d))
    assert (t.rows[-1].op, t.rows[-1].module) == ("Conv2d", first_convolution)


def test_cli_trace_prints_the_table_and_writes_the_csv(tmp_path, capsys):
    path = tmp_path / "lenet.csv"
    assert cli.main(["trace", "lenet", "--batch-size", "3", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lenet on 3x1x28x28" in out and "classifier.0" in out and "Top 5 ops by memory" in out
    with open(path, newline="") as file:
        assert len(list(csv.DictReader(file))) == 9
    assert cli.main(["trace", "resnet20", "--input", "1,8,8"]) == 0  # a one-channel input: in_channels=1
    assert "resnet20 on 2x1x8x8" in capsys.readouterr().out


def test_cli_trace_errors_are_one_line(capsys):
    assert cli.main(["trace", "lenett"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn: error:") and "lenet" in err and err.count("\n") == 1
    assert cli.main(["trace", "lenet", "--input", "1,8,8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn: error: trace lenet at 2x1x8x8:") and err.count("\n") == 1
    assert cli.main(["trace", "lenet", "--batch-size", "0"]) == 2
