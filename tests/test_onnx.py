"""ONNX export checked by ONNX Runtime: every zoo network (small inputs; LeNet, ResNet-18 and
Inception v3 also at full size), each op's mapping on its own, the errors, and `tinycnn export`.

Every exported model passes onnx.checker.check_model(full_check=True), and ONNX Runtime's CPU
output equals the network's exact function (tinycnn's forward in float64) on the same input.
"""
import copy

import numpy as np
import onnx
import onnxruntime
import pytest

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
import tinycnn.onnx
from tinycnn import checkpoint, nn
from tinycnn.autograd import Function
from tinycnn.cli import main
from tinycnn.models.lenet import C3_TABLE, PartialConv2d, RBFOutput, rbf_codes

from models_support import canonical_input, tiled_init
from test_models import SMALL_KWARGS, small_input


def run_onnx(proto, x):
    """Check the model in full, then run it in ONNX Runtime on the CPU; returns the first output."""
    serialized = proto.SerializeToString()  # once, for the checker and the runtime
    onnx.checker.check_model(serialized, full_check=True)
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_exports_exactly(model, x, rtol=1e-4):
    """ONNX Runtime's float32 output on the exported graph equals the network's exact function to
    float32 rounding. The exact function is tinycnn's eval-mode forward of a float64 copy of the
    model, so that only the runtime's round-off is measured, not tinycnn's float32 kernels' as well:
    Winograd's F(4x4, 3x3) has several times im2col's (kernels/cpu_conv.py). Full-size Inception v3,
    largest logit error over the largest logit: ONNX Runtime 4.2e-5, tinycnn in float32 1.4e-4 (by
    F(2x2, 3x3) or im2col only, 4.0e-5). Returns tinycnn's float32 logits."""
    model.eval()
    with tinycnn.no_grad():
        ours = model(tinycnn.tensor(x)).numpy()
        exact = copy.deepcopy(model).double()(tinycnn.tensor(x.astype(np.float64))).numpy()
    got = run_onnx(tinycnn.onnx.to_onnx(model, x), x)
    assert got.shape == exact.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=rtol, atol=rtol * float(np.abs(exact).max()))
    return ours


def calibrated(model, x):
    """Set every BatchNorm's running statistics to those of the batch x (one training-mode forward
    with momentum 1). With fresh statistics (mean 0, variance 1) the deep networks map every input
    to nearly the same logits, and a comparison would check little; calibrated, each layer's
    activations keep unit scale in eval mode and the logits depend on the input."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with tinycnn.no_grad():
        model(tinycnn.tensor(x))
    for m in norms:
        m.momentum = 0.1
    return model


# The networks of more than 50M parameters: a few seconds each for the copies of their weights
# (initializers, serialisation, the checker, the runtime's session). Deselect with -m "not slow".
LARGE = {"alexnet", "alexnet_paper", "zfnet", "resnet152", "resnext101_32x8d", "inception_resnet_v2",
         "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name
                                  for name in models.list()])
def test_zoo_network_exports_and_onnx_runtime_matches_at_a_small_input(name):
    with tiled_init():
        model = models.create(name, **SMALL_KWARGS.get(name, dict(num_classes=3)))
    x = np.random.default_rng(0).standard_normal(small_input(name)).astype(np.float32)
    assert_exports_exactly(model, x)


@pytest.mark.parametrize("name", ["lenet", "resnet18", "inception_v3"])
def test_full_size_networks_match_onnx_runtime(name):
    with tiled_init():
        model = models.create(name)  # inception_v3 keeps its aux head: eval mode turns it off
    x = np.random.default_rng(1).standard_normal((2,) + canonical_input(name)).astype(np.float32)
    logits = assert_exports_exactly(calibrated(model, x), x)
    assert not np.allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3 * np.abs(logits).max()), \
        "the two images' logits agree: the comparison would not see the layers"


class Lambda(nn.Module):
    """A module whose forward is `function(self, x)`, with the given submodules."""

    def __init__(self, function, **modules):
        super().__init__()
        for key, module in modules.items():
            setattr(self, key, module)
        self.function = function

    def forward(self, x):
        return self.function(self, x)


def randomized(module, rng):
    """Non-trivial parameters and statistics: biases and BatchNorm's affine terms are not 0 and 1."""
    for parameter in module.parameters():
        parameter.data[...] = rng.uniform(-1, 1, parameter.shape).astype(parameter.dtype)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.uniform(-1, 1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2, m.running_var.shape)
    return module


# (id, module, input shape): each op the exporter maps, in its several forms.
OP_CASES = [
    ("conv_padding_stride", lambda: nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2)), (2, 3, 9, 8)),
    ("conv_groups_dilation", lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (2, 4, 9, 9)),
    ("conv_depthwise_no_bias", lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), (2, 4, 6, 6)),
    ("conv_same_even_kernel", lambda: Lambda(lambda m, x: F.conv2d(x, m.conv.weight, padding="same"),
                                             conv=nn.Conv2d(3, 2, 4)), (2, 3, 7, 7)),
    ("pad_asymmetric_and_crop", lambda: Lambda(lambda m, x: F.pad(x, (1, 2, -1, 3), value=0.5)), (2, 3, 5, 5)),
    ("zero_pad", lambda: nn.ZeroPad2d(2), (2, 1, 4, 4)),
    ("max_pool_ceil_mode", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 8, 8)),
    # PyTorch's ceil mode drops a last window that would start in the right padding: 5 -> 3, not 4.
    ("max_pool_ceil_mode_dropped_window", lambda: nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    ("max_pool_padding_dilation", lambda: nn.MaxPool2d(3, 1, padding=1, dilation=2), (2, 3, 7, 7)),
    ("avg_pool_ceil_mode_include_pad", lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 8, 8)),
    ("avg_pool_ceil_mode_exclude_pad",
     lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), (2, 3, 8, 8)),
    ("avg_pool_dropped_window", lambda: nn.AvgPool2d(2, 2, padding=1, ceil_mode=True), (2, 3, 5, 5)),
    ("adaptive_avg_pool_overlapping_bins", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("adaptive_avg_pool_even_bins", lambda: nn.AdaptiveAvgPool2d(2), (2, 3, 6, 6)),
    ("adaptive_avg_pool_to_1x1", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 3)),
    ("global_avg_pool", lambda: nn.GlobalAvgPool2d(), (2, 3, 5, 3)),
    ("batch_norm_eval", lambda: nn.BatchNorm2d(3), (2, 3, 4, 4)),
    ("batch_norm_1d_no_affine", lambda: nn.BatchNorm1d(5, affine=False), (3, 5)),
    ("lrn_pytorch_convention", lambda: nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=2.0), (2, 7, 3, 3)),
    ("lrn_paper_convention", lambda: nn.LocalResponseNorm(5, alpha=0.1, beta=0.75, k=2.0,
                                                          alpha_divided_by_size=False), (2, 7, 3, 3)),
    ("lrn_even_size", lambda: nn.LocalResponseNorm(4, alpha=0.5, beta=0.75, k=1.0), (2, 6, 3, 3)),
    ("linear_2d", lambda: nn.Linear(6, 4), (3, 6)),
    ("linear_3d_no_bias", lambda: nn.Linear(6, 4, bias=False), (2, 3, 6)),
    ("linear_3d", lambda: nn.Linear(6, 4), (2, 3, 6)),
    ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2)),
    ("flatten_middle_axes", lambda: nn.Flatten(1, 2), (2, 3, 2, 4)),
    ("dropout_in_eval", lambda: nn.Dropout(0.5), (2, 3, 4)),
    ("activations", lambda: Lambda(lambda m, x: F.relu(x) + F.leaky_relu(x, 0.2) * F.sigmoid(x) - F.tanh(x)),
     (2, 3, 4)),
    ("softmax_log_softmax", lambda: Lambda(lambda m, x: F.softmax(x, 1) + F.log_softmax(x, -1)), (2, 3, 4)),
    ("concat_and_residual_add", lambda: Lambda(lambda m, x: F.add(F.concat([m.a(x), m.b(x)], axis=1), x, x),
                                               a=nn.Conv2d(4, 1, 1), b=nn.Conv2d(4, 3, 3, padding=1)),
     (2, 4, 5, 5)),
    ("arithmetic", lambda: Lambda(lambda m, x: ((x * 2.0 - 1.0) / (x * x + 1.0)) ** 3 + (-x).exp()
                                  + (x * x + 0.5).log()), (2, 3, 4)),
    ("reductions", lambda: Lambda(lambda m, x: x.sum(axis=1, keepdims=True) + x.max(axis=(1, 2), keepdims=True)
                                  + x.mean() + x.sum()), (2, 3, 4)),
    ("reshape_permute_matmul", lambda: Lambda(lambda m, x: x.reshape(2, 4, 3).permute(0, 2, 1) @ x.reshape(2, 4, 3)),
     (2, 3, 4)),
    ("getitem_slices_and_integers", lambda: Lambda(lambda m, x: x[:, 1, 1:4:2, ::2] + x[1, 0, 1:3, -3:]), (2, 3, 5, 5)),
    ("cast", lambda: Lambda(lambda m, x: x.astype(np.float64).sum(axis=1).astype(np.float32)), (2, 3)),
    # LeNet-5's partial C3 connections (a weight spread by indexing, folded to a constant) and its
    # RBF output (squared distances to fixed codes).
    ("lenet5_partial_connections", lambda: PartialConv2d(C3_TABLE, 5), (2, 6, 9, 9)),
    ("lenet5_rbf_output", lambda: RBFOutput(rbf_codes()), (2, 84)),
]


@pytest.mark.parametrize("make, shape", [case[1:] for case in OP_CASES], ids=[case[0] for case in OP_CASES])
def test_each_op_matches_onnx_runtime(make, shape):
    rng = np.random.default_rng(0)
    model = randomized(make(), rng)
    assert_exports_exactly(model, rng.standard_normal(shape).astype(np.float32))


def test_a_module_with_hooks_exports_as_without():
    model = randomized(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()), np.random.default_rng(0))
    model[0].register_full_backward_hook(lambda module, grad_input, grad_output: None)
    model[1].register_forward_hook(lambda module, args, output: output * 2.0)
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    assert_exports_exactly(model, x)


def test_lrn_exports_as_one_lrn_node_with_pytorch_alpha():
    model = nn.LocalResponseNorm(5, alpha=0.1, beta=0.75, k=2.0, alpha_divided_by_size=False)
    (node,) = tinycnn.onnx.to_onnx(model, np.ones((1, 7, 2, 2), np.float32)).graph.node
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    # The paper's alpha multiplies each square; ONNX's, as PyTorch's, is divided by size first.
    assert node.op_type == "LRN" and attributes["size"] == 5
    assert attributes["alpha"] == pytest.approx(0.5) and attributes["bias"] == pytest.approx(2.0)


def test_parameters_and_buffers_are_initializers_named_by_state_dict_keys():
    model = models.resnet20()
    proto = tinycnn.onnx.to_onnx(model, np.zeros((1, 3, 32, 32), np.float32))
    names = {initializer.name for initializer in proto.graph.initializer}
    assert {"conv1.weight", "bn1.running_mean", "bn1.running_var", "fc.weight", "fc.bias"} <= names
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert sorted({node.op_type for node in proto.graph.node}) == [
        "BatchNormalization", "Concat", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "Relu", "Slice", "Sum"]


def test_export_writes_a_file_traces_in_eval_mode_and_restores_training(tmp_path):
    tinycnn.manual_seed(0)
    model = models.googlenet(num_classes=4)  # aux heads on in training mode
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "googlenet.onnx"
    tinycnn.onnx.export(model, tinycnn.tensor(x), path, opset=13)
    assert model.training and all(m.training for m in model.modules())
    loaded = onnx.load(str(path))
    assert loaded.opset_import[0].version == 13 and len(loaded.graph.output) == 1
    model.eval()
    with tinycnn.no_grad():
        expected = model(tinycnn.tensor(x)).numpy()
    np.testing.assert_allclose(run_onnx(loaded, x), expected, rtol=1e-4, atol=1e-5)


class Cube(Function):
    def forward(self, x):
        return x ** 3

    def backward(self, gy):
        raise NotImplementedError


@pytest.mark.parametrize("forward, text", [
    (lambda m, x: Cube()(m.linear(x)), "the op Cube has no ONNX form"),
    (lambda m, x: F.dropout(m.linear(x), 0.5, training=True), "Dropout in training mode"),
    (lambda m, x: F.batch_norm(m.linear(x), None, None, training=True), "BatchNorm in training mode"),
    (lambda m, x: F.batch_norm_relu(m.linear(x), None, None), "batch_norm_relu uses the batch's statistics"),
    (lambda m, x: m.linear(x)[:, [0, 2, 1]], "GetItem: the index"),
    (lambda m, x: m.linear(x)[:, ::-1], "negative step"),
], ids=["custom_function", "dropout_training", "batch_norm_training", "batch_norm_relu", "fancy_index",
        "negative_step"])
def test_an_op_without_an_onnx_form_raises_naming_it(forward, text):
    model = Lambda(forward, linear=nn.Linear(3, 3))
    with pytest.raises(tinycnn.onnx.ExportError, match=text):
        tinycnn.onnx.to_onnx(model, np.ones((2, 3), np.float32))


def test_bad_arguments_raise():
    with pytest.raises(tinycnn.onnx.ExportError, match="opset 18 is not supported"):
        tinycnn.onnx.to_onnx(nn.ReLU(), np.ones((1, 2), np.float32), opset=18)
    with pytest.raises(tinycnn.onnx.ExportError, match="floating-point example input, got dtype int64"):
        tinycnn.onnx.to_onnx(nn.ReLU(), np.ones((1, 2), np.int64))


def test_cli_export_with_weights(tmp_path, capsys):
    tinycnn.manual_seed(0)
    model = models.lenet5()
    weights, path = tmp_path / "lenet5.npz", tmp_path / "lenet5.onnx"
    models.save_weights(model, weights)
    assert main(["export", "lenet5", "--onnx", path, "--checkpoint", weights]) == 0
    assert capsys.readouterr().out == f"wrote {path}: lenet5, input 1x1x32x32, 36 nodes, opset 17\n"
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with tinycnn.no_grad():
        expected = model.eval()(tinycnn.tensor(x)).numpy()
    np.testing.assert_allclose(run_onnx(onnx.load(str(path)), x), expected, rtol=1e-4, atol=1e-4)


def test_cli_export_from_a_run_checkpoint_takes_its_data_sets_input(tmp_path, capsys):
    tinycnn.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)  # as `tinycnn train resnet20` builds it
    settings = {"model": "resnet20", "dataset": "mnist", "model_args": {}}
    checkpoint.save({"settings": settings, "model": model.state_dict(), "epoch": 1}, tmp_path / "last.ckpt")
    path = tmp_path / "resnet20.onnx"
    assert main(["export", "resnet20", "--onnx", path, "--checkpoint", tmp_path / "last.ckpt"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path}: resnet20, input 1x1x28x28, ")
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with tinycnn.no_grad():
        expected = model.eval()(tinycnn.tensor(x)).numpy()
    np.testing.assert_allclose(run_onnx(onnx.load(str(path)), x), expected, rtol=1e-4, atol=1e-4)
    assert main(["export", "resnet32", "--onnx", path, "--checkpoint", tmp_path / "last.ckpt"]) == 1
    assert capsys.readouterr().err == (f"tinycnn: error: export --checkpoint {tmp_path / 'last.ckpt'} is a checkpoint "
                                       "of 'resnet20', not of 'resnet32'\n")


def test_cli_export_input_shape_and_opset(tmp_path, capsys):
    path = tmp_path / "resnet20.onnx"
    assert main(["export", "resnet20", "--onnx", path, "--input", "3,16,24", "--opset", "15"]) == 0
    proto = onnx.load(str(path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 24]
    assert proto.opset_import[0].version == 15
    assert run_onnx(proto, np.ones((1, 3, 16, 24), np.float32)).shape == (1, 10)


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "lenet", "--onnx", tmp_path / "x.onnx", "--input", "1,8,8"]) == 1
    assert capsys.readouterr().err.startswith("tinycnn: error: export lenet --input 1,8,8: conv2d: kernel")
    models.save_weights(models.lenet(), tmp_path / "lenet.npz")
    assert main(["export", "lenet5", "--onnx", tmp_path / "x.onnx", "--checkpoint", tmp_path / "lenet.npz"]) == 1
    assert capsys.readouterr().err.startswith(f"tinycnn: error: export --checkpoint {tmp_path / 'lenet.npz'} "
                                              "does not fit lenet5")
    assert not (tmp_path / "x.onnx").exists()
