"""Hooks, against PyTorch: Tensor.register_hook, Module.register_forward_pre_hook,
register_forward_hook and register_full_backward_hook. Each test builds the same computation in
both frameworks (LeNet and a ResNet basic block with torch's weights copied in), registers the same
hooks, and compares what they saw, in which order, and what replacing a gradient does."""
import numpy as np
import pytest
import torch

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from benchmarks import twins
from tinycnn.models.resnet import BasicBlock, conv1x1
from tinycnn import nn

from support import assert_close, to_numpy

# torch warns when a module's backward hook fires from the output side (no input needs a gradient,
# as at the first layer); tinycnn does the same thing, silently.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def pair(array):
    """The same float64 leaf in both frameworks."""
    return tinycnn.tensor(array, requires_grad=True), torch.tensor(array, requires_grad=True)


class Recorder:
    """Hooks for both frameworks that note (label, gradient) in call order; `replace` maps a
    label to a function applied to the gradient the hook returns (None: the hook returns None)."""

    def __init__(self, replace=None):
        self.events = []
        self.replace = replace or {}

    def tensor_hook(self, label):
        def hook(grad):
            self.events.append((label, to_numpy(grad).copy()))
            if label in self.replace:
                return self.replace[label](grad)
            return None
        return hook

    def module_hook(self, label):
        def hook(module, grad_input, grad_output):
            self.events.append((label, [None if g is None else to_numpy(g).copy() for g in grad_input]
                                + [to_numpy(g).copy() for g in grad_output]))
            if label in self.replace:
                return tuple(None if g is None else self.replace[label](g) for g in grad_input)
            return None
        return hook

    def labels(self, prefix=""):
        return [label for label, _ in self.events if label.startswith(prefix)]


def assert_same_events(ours, theirs, dtype=np.float64):
    """The same hooks called in the same order with the same gradients."""
    assert [label for label, _ in ours] == [label for label, _ in theirs]
    for (label, a), (_, b) in zip(ours, theirs):
        if isinstance(a, list):
            assert len(a) == len(b), label
            for x, y in zip(a, b):
                assert (x is None) == (y is None), label
                if x is not None:
                    assert_close(x, y, dtype, what=label)
        else:
            assert_close(a, b, dtype, what=label)


def test_tensor_hooks_on_a_tensor_used_twice_see_the_complete_gradient_and_replace_it():
    rng = np.random.default_rng(0)
    x_array, w_array = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    results = []
    for lib, relu in ((tinycnn, F.relu), (torch, torch.relu)):
        x = lib.tensor(x_array, requires_grad=True)
        w = lib.tensor(w_array, requires_grad=True)
        recorder = Recorder(replace={"a": lambda g: g * 2, "w": lambda g: g + 1})
        a = x * w
        a.register_hook(recorder.tensor_hook("a"))
        a.retain_grad()
        x.register_hook(recorder.tensor_hook("x"))
        w.register_hook(recorder.tensor_hook("w"))
        b = relu(a) + a * 3  # a reaches the loss along two paths: its hook runs once, with both
        loss = (b * b).sum()
        loss.backward()
        results.append((recorder.events, a.grad, x.grad, w.grad))
    (ours, a_grad, x_grad, w_grad), (theirs, ta_grad, tx_grad, tw_grad) = results
    assert sorted(label for label, _ in ours) == ["a", "w", "x"]
    assert ours[0][0] == "a" == theirs[0][0]  # the non-leaf before the leaves
    assert_same_events(sorted(ours, key=lambda e: e[0]), sorted(theirs, key=lambda e: e[0]))
    assert_close(a_grad, ta_grad, what="retain_grad keeps the hooked gradient, as torch 2")
    assert_close(x_grad, tx_grad, what="x.grad after a's hook doubled the gradient")
    assert_close(w_grad, tw_grad, what="a leaf stores its hook's replacement")


def test_a_leaf_used_by_two_functions_runs_its_hook_once_after_its_last_use_as_torch():
    # w is read by the last multiplication and by the first: its gradient is complete only after
    # the first one's backward, so its hook runs then, once, after a's hook, as in torch.
    rng = np.random.default_rng(1)
    x_array, w_array = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    events = []
    for lib, relu in ((tinycnn, F.relu), (torch, torch.relu)):
        x = lib.tensor(x_array, requires_grad=True)
        w = lib.tensor(w_array, requires_grad=True)
        recorder = Recorder()
        w.register_hook(recorder.tensor_hook("w"))
        a = x * w
        a.register_hook(recorder.tensor_hook("a"))
        x.register_hook(recorder.tensor_hook("x"))
        (relu(a) * w).sum().backward()
        events.append(recorder.events)
    ours, theirs = events
    # x and w are completed by the same backward (a = x * w); the order of two leaves made ready
    # together is not specified in torch, so they are compared as a pair.
    for recorded in (ours, theirs):
        assert len(recorded) == 3 and recorded[0][0] == "a", recorded
        assert sorted(label for label, _ in recorded[1:]) == ["w", "x"]
    assert_same_events(ours[:1] + sorted(ours[1:], key=lambda e: e[0]), theirs[:1] + sorted(theirs[1:], key=lambda e: e[0]))


def test_leaf_hook_sees_this_backwards_gradient_not_the_accumulated_grad():
    seen = {}
    for lib in (tinycnn, torch):
        x = lib.tensor(np.arange(3.0), requires_grad=True)
        calls = []
        x.register_hook(lambda g: calls.append(to_numpy(g).copy()))
        (x * x).sum().backward()
        (x * 3).sum().backward()
        seen[lib.__name__] = (calls, to_numpy(x.grad))
    for ours, theirs in zip(seen["tinycnn"][0], seen["torch"][0]):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(seen["tinycnn"][1], seen["torch"][1])


def test_removed_hooks_are_not_called_and_hooks_run_in_registration_order():
    for lib in (tinycnn, torch):
        x = lib.tensor(np.ones(2), requires_grad=True)
        y = x * 2
        calls = []
        first = y.register_hook(lambda g: calls.append("first"))
        y.register_hook(lambda g: calls.append("second") or g * 10)
        y.register_hook(lambda g: calls.append(("third", g.sum().item())))
        first.remove()
        first.remove()  # removing twice is harmless, as torch
        y.sum().backward()
        assert calls == ["second", ("third", 20.0)], lib.__name__
        np.testing.assert_array_equal(to_numpy(x.grad), [20.0, 20.0])
    x = tinycnn.tensor(np.ones(2), requires_grad=True)
    calls = []
    with x.register_hook(lambda g: calls.append(1)):  # a handle is also a context manager
        x.sum().backward()
    x.sum().backward()
    assert calls == [1]


def test_a_hook_returning_the_wrong_shape_names_the_hook_and_both_shapes():
    x = tinycnn.tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2

    def halve_the_rows(grad):
        return grad[:1]

    y.register_hook(halve_the_rows)
    with pytest.raises(RuntimeError, match=r"halve_the_rows.*\(1, 3\).*\(2, 3\)"):
        y.sum().backward()

    conv = nn.Conv2d(1, 2, 3)

    def drop_the_batch(module, grad_input, grad_output):
        return (grad_input[0][0],)

    conv.register_full_backward_hook(drop_the_batch)
    x = tinycnn.tensor(np.ones((2, 1, 5, 5), dtype=np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"drop_the_batch.*\(1, 5, 5\).*\(2, 1, 5, 5\)"):
        conv(x).sum().backward()


def test_a_hook_may_return_a_numpy_array_which_takes_the_gradients_dtype():
    x = tinycnn.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x * 2
    y.register_hook(lambda grad: np.full(3, 0.5))  # float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])


def test_register_hook_needs_a_tensor_that_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tinycnn.tensor([1.0]).register_hook(print)


def test_forward_pre_hook_and_forward_hook_replace_arguments_and_output_as_torch():
    rng = np.random.default_rng(1)
    weight, x_array = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    outputs = []
    for lib, linear in ((tinycnn, nn.Linear(4, 3, bias=False)), (torch, torch.nn.Linear(4, 3, bias=False))):
        linear.load_state_dict({"weight": torch.tensor(weight)} if lib is torch else {"weight": weight})
        if lib is torch:
            linear = linear.double()
        else:
            linear.double()
        calls = []
        single = linear.register_forward_pre_hook(lambda m, args: calls.append("pre single") or args[0] * 2)
        linear.register_forward_pre_hook(lambda m, args: calls.append("pre tuple") or (args[0] + 1,))
        linear.register_forward_hook(lambda m, args, out: calls.append("post") or out * 10)
        first = linear(lib.tensor(x_array))
        single.remove()
        second = linear(lib.tensor(x_array))
        outputs.append((calls, to_numpy(first), to_numpy(second)))
    (calls, first, second), (torch_calls, torch_first, torch_second) = outputs
    assert calls == torch_calls == ["pre single", "pre tuple", "post", "pre tuple", "post"]
    assert_close(first, torch_first)
    assert_close(second, torch_second)


def copy_lenet(seed=0):
    """tinycnn's LeNet and its torch twin (benchmarks/twins.py) with the same float64 weights."""
    tinycnn.manual_seed(seed)
    ours = models.create("lenet").double()
    theirs = twins.lenet().double()
    theirs.load_state_dict({key: torch.tensor(value) for key, value in ours.state_dict().items()})
    return ours, theirs


def hook_everything(model, recorder, prefix=""):
    """A full backward hook on every module, a tensor hook on every module's output (from a
    forward hook) and one on every parameter; returns the handles."""
    handles = []
    for name, module in model.named_modules():
        name = name or "model"
        handles.append(module.register_full_backward_hook(recorder.module_hook(f"module {name}")))

        def on_output(module, args, output, name=name):
            output.register_hook(recorder.tensor_hook(f"output {name}"))
        handles.append(module.register_forward_hook(on_output))
    for name, parameter in model.named_parameters():
        handles.append(parameter.register_hook(recorder.tensor_hook(f"parameter {name}")))
    return handles


def test_hook_order_and_gradients_on_lenet_match_torch():
    ours, theirs = copy_lenet()
    rng = np.random.default_rng(2)
    x_array = rng.standard_normal((2, 1, 28, 28))
    labels = np.array([3, 7])
    recorders = []
    for lib, model, loss_fn in ((tinycnn, ours, F.cross_entropy), (torch, theirs, torch.nn.functional.cross_entropy)):
        recorder = Recorder()
        handles = hook_everything(model, recorder)
        loss_fn(model(lib.tensor(x_array)), lib.tensor(labels)).backward()
        recorders.append(recorder)
        for handle in handles:
            handle.remove()
    ours_recorder, torch_recorder = recorders
    # One sequence in both: module, output and parameter hooks interleaved in the order of the
    # backward pass, a parameter's hooks as soon as its gradient is complete. Within one layer the
    # parameters' hooks follow each framework's argument order (torch's addmm takes the bias before
    # the weight), so those runs are put in name order before comparing.
    ours_events, torch_events = in_layer_order(ours_recorder.events), in_layer_order(torch_recorder.events)
    assert len(ours_events) == 2 * len(list(ours.named_modules())) + 8
    assert [label for label, _ in ours_events] == [label for label, _ in torch_events]
    assert_same_events(ours_events, torch_events)
    # The hooks were removed: a second pass calls none of them.
    ours.zero_grad()
    F.cross_entropy(ours(tinycnn.tensor(x_array)), tinycnn.tensor(labels)).backward()
    assert len(ours_recorder.events) == len(ours_events)


def in_layer_order(events):
    """`events` with each run of consecutive parameter hooks of one layer sorted by name."""
    ordered, run = [], []
    for event in events + [("end", None)]:
        layer = event[0].rsplit(".", 1)[0] if event[0].startswith("parameter") else None
        if run and layer != run[0][0].rsplit(".", 1)[0]:
            ordered += sorted(run, key=lambda e: e[0])
            run = []
        if layer is None:
            ordered.append(event)
        else:
            run.append(event)
    return ordered[:-1]


def test_full_backward_hook_replacing_grad_input_on_lenet_matches_torch():
    ours, theirs = copy_lenet(seed=1)
    rng = np.random.default_rng(3)
    x_array = rng.standard_normal((2, 1, 28, 28))
    scale = {"module classifier.2": lambda g: g * 0.5, "module features.3": lambda g: -g}
    grads = []
    for lib, model, loss_fn in ((tinycnn, ours, F.cross_entropy), (torch, theirs, torch.nn.functional.cross_entropy)):
        recorder = Recorder(replace=scale)
        model.classifier[2].register_full_backward_hook(recorder.module_hook("module classifier.2"))
        model.features[3].register_full_backward_hook(recorder.module_hook("module features.3"))
        x = lib.tensor(x_array, requires_grad=True)
        loss_fn(model(x), lib.tensor(np.array([1, 2]))).backward()
        grads.append((recorder.events, x.grad, dict(model.named_parameters())))
    (events, x_grad, params), (torch_events, torch_x_grad, torch_params) = grads
    assert_same_events(events, torch_events)
    assert_close(x_grad, torch_x_grad, what="input gradient after the replaced grad_inputs")
    for name, parameter in params.items():
        assert_close(parameter.grad, torch_params[name].grad, what=name)


def copy_basic_block():
    """tinycnn's ResNet basic block with a strided 1x1 shortcut, and its torch twin
    (benchmarks/twins.py: torchvision's block without the in-place ReLU and `+=`, which torch's
    full backward hooks refuse), with the same float64 weights."""
    tinycnn.manual_seed(0)
    ours = BasicBlock(4, 8, stride=2, downsample=nn.Sequential(conv1x1(4, 8, 2), nn.BatchNorm2d(8))).double()
    theirs = twins.BasicBlock(4, 8, stride=2, downsample=torch.nn.Sequential(
        twins._conv1x1(4, 8, 2), torch.nn.BatchNorm2d(8))).double()
    rng = np.random.default_rng(4)
    state = {}
    for key, value in theirs.state_dict().items():
        if key.endswith(("weight", "bias")):  # BatchNorm's weight and bias too: not just ones and zeros
            value = torch.tensor(rng.standard_normal(tuple(value.shape)))
        state[key] = value
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    return ours, theirs


def test_hooks_on_a_resnet_basic_block_match_torch():
    ours, theirs = copy_basic_block()
    x_array = np.random.default_rng(5).standard_normal((2, 4, 6, 6))
    recorders, inputs = [], []
    for lib, block in ((tinycnn, ours), (torch, theirs)):
        recorder = Recorder(replace={"module conv2": lambda g: g * 3})
        hook_everything(block, recorder)
        x = lib.tensor(x_array, requires_grad=True)
        x.register_hook(recorder.tensor_hook("input"))  # used twice: by conv1 and by the shortcut
        (block(x) ** 2).sum().backward()
        recorders.append(recorder)
        inputs.append(x)
    ours_recorder, torch_recorder = recorders
    ours_events, torch_events = ours_recorder.events, torch_recorder.events
    # The shared ReLU runs twice in forward, so its hooks run twice in backward.
    assert ours_recorder.labels("module relu") == ["module relu"] * 2
    # Each hook ran as often as in torch, with the same gradients. The order between the two
    # branches is not fixed by the graph: torch runs the branch it computed last first, tinycnn
    # interleaves them by generation; within a branch the order is torch's, parameter hooks
    # included (each as soon as its gradient is complete).
    assert sorted(ours_recorder.labels()) == sorted(torch_recorder.labels())
    for branch in ("downsample", "conv1", "bn1", "relu", "conv2", "bn2", "input", "model"):
        assert_same_events([e for e in ours_events if branch in e[0]], [e for e in torch_events if branch in e[0]])
    main_branch = ["output bn2", "parameter bn2.weight", "parameter bn2.bias", "module bn2", "output conv2",
                   "parameter conv2.weight", "module conv2", "output relu", "module relu", "output bn1",
                   "parameter bn1.weight", "parameter bn1.bias", "module bn1", "output conv1",
                   "parameter conv1.weight", "module conv1"]
    for events in (ours_events, torch_events):
        assert [label for label, _ in events if label in main_branch] == ["output relu", "module relu"] + main_branch
        # The block's hook waits for both uses of its input (conv1, shortcut); the input's own
        # hook comes after it.
        assert [label for label, _ in events][-2:] == ["module model", "input"]
    assert_close(inputs[0].grad, inputs[1].grad, what="input gradient (conv2's grad_input tripled)")
    for name, parameter in ours.named_parameters():
        assert_close(parameter.grad, dict(theirs.named_parameters())[name].grad, what=name)
