"""Inference's conv -> BatchNorm -> (+ residual) -> ReLU and concat -> BatchNorm -> ReLU as one kernel
call each (tinycnn/nn/fused.py, kernels.conv2d_batch_norm_relu_inference and
concat_batch_norm_relu_inference):

- every backend against PyTorch's conv2d, batch_norm (eval) and relu on drawn cases;
- the Numba kernel, at real layer sizes that reach each of its conv paths, equal to the bit to its
  own conv, BatchNorm, add and ReLU kernels run one after the other (the promise of the docstrings);
- nn.conv_bn_relu takes the fused path exactly when nothing can tell the difference, and gives the
  layers' result either way; whole networks under no_grad fuse every conv-BatchNorm pair and give
  the same logits to the bit. (Their logits against torchvision's, fused, are in
  tests/test_models_torchvision.py, which runs the eval forward under no_grad.)
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import assume, given, strategies as st

import tinycnn
import tinycnn.kernels.cpu
import tinycnn.models
from tinycnn import kernels, nn
from tinycnn.nn import fused

from support import assert_close
from test_kernel_backends import BACKENDS, DTYPES, _array, convolutions, reference, run


def _statistics(seed, C, dtype, affine):
    gamma = _array(seed, (C,), dtype) + 1.5 if affine else None
    beta = _array(seed + 1, (C,), dtype) if affine else None
    mean = _array(seed + 2, (C,), dtype)
    running_var = _array(seed + 3, (C,), dtype) + 1.5
    inv_std = (1 / np.sqrt(running_var + 1e-5)).astype(dtype)
    return gamma, beta, mean, running_var, inv_std


@pytest.mark.parametrize("backend", BACKENDS)
@given(convolutions(), DTYPES, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_kernel_equals_torch(backend, convolution, dtype, bias, affine, residual, relu, seed):
    x_shape, w_shape, window, groups = convolution
    SH, SW, PH, PW, DH, DW = window
    x, W = _array(seed, x_shape, dtype), _array(seed + 1, w_shape, dtype)
    b = _array(seed + 2, w_shape[:1], dtype) if bias else None
    gamma, beta, mean, running_var, inv_std = _statistics(seed + 3, w_shape[0], dtype, affine)
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    expected = torch_F.batch_norm(
        torch_F.conv2d(t(x), t(W), t(b), stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW), groups=groups),
        t(mean), t(running_var), t(gamma), t(beta), training=False, eps=1e-5)
    r = _array(seed + 8, tuple(expected.shape), dtype) if residual else None
    if residual:
        expected = expected + t(r)
    if relu:
        expected = torch_F.relu(expected)
    y = run(backend, "conv2d_batch_norm_relu_inference", x, W, b, *window, groups, gamma, beta, mean, inv_std, r,
            relu)
    assert y.dtype == dtype and y.shape == tuple(expected.shape)
    assert_close(y, expected, dtype, f"{x_shape} {w_shape} {window} groups={groups}")


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(1, 3), st.integers(1, 5), DTYPES,
       st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_concat_kernel_equals_torch(backend, channels, N, side, dtype, affine, relu, seed):
    xs = [_array(seed + k, (N, C, side, side + 1), dtype) * 2 for k, C in enumerate(channels)]
    gamma, beta, mean, running_var, inv_std = _statistics(seed + 10, sum(channels), dtype, affine)
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    expected = torch_F.batch_norm(torch.cat([t(x) for x in xs], dim=1), t(mean), t(running_var), t(gamma), t(beta),
                                  training=False, eps=1e-5)
    if relu:
        expected = torch_F.relu(expected)
    y = run(backend, "concat_batch_norm_relu_inference", xs, gamma, beta, mean, inv_std, relu)
    assert y.dtype == dtype and y.shape == tuple(expected.shape)
    assert_close(y, expected, dtype, f"{channels} N={N} side={side}")


@pytest.mark.parametrize("channels, side", [([64] + [32] * 23, 14), ([256], 56), ([3, 1, 2], 5), ([128] * 3, 28)])
def test_numba_concat_kernel_gives_the_bits_of_its_layers_in_turn(channels, side):
    cpu = tinycnn.kernels.cpu
    xs = [_array(k, (4, C, side, side), np.float32) * 2 for k, C in enumerate(channels)]
    gamma, beta, mean, _, inv_std = _statistics(100, sum(channels), np.float32, True)
    for relu in (False, True):
        y = cpu.batch_norm_forward_inference(np.concatenate(xs, axis=1), gamma, beta, mean, inv_std)
        y = cpu.relu_forward(y) if relu else y
        np.testing.assert_array_equal(cpu.concat_batch_norm_relu_inference(xs, gamma, beta, mean, inv_std, relu), y)


# (x shape, weight shape, stride, padding, groups): each reaches another of the Numba conv's paths.
LAYERS = {
    "winograd 3x3 64->64 at 28x28": ((4, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1),
    "winograd, odd size: a last tile sticking out": ((3, 16, 15, 15), (24, 16, 3, 3), 1, 1, 1),
    "1x1: a product per sample": ((4, 256, 14, 14), (64, 256, 1, 1), 1, 0, 1),
    "1x1 strided (a ResNet's downsample)": ((2, 64, 28, 28), (128, 64, 1, 1), 2, 0, 1),
    "7x7/2 stem: one sample's columns in blocks of rows": ((2, 3, 112, 112), (64, 3, 7, 7), 2, 3, 1),
    "pixel-major: narrow rows": ((8, 32, 7, 7), (48, 32, 3, 3), 1, 1, 1),
    "channel-major, several samples a chunk": ((16, 8, 9, 20), (12, 8, 3, 3), 1, 1, 1),
    "grouped (ResNeXt)": ((2, 128, 14, 14), (128, 4, 3, 3), 1, 1, 32),
    "3x3/2": ((2, 32, 17, 17), (32, 32, 3, 3), 2, 0, 1),
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("bias, residual, relu", [(False, False, True), (True, False, False), (False, True, True)])
def test_numba_kernel_gives_the_bits_of_its_layers_in_turn(layer, bias, residual, relu):
    x_shape, w_shape, stride, padding, groups = LAYERS[layer]
    cpu = tinycnn.kernels.cpu
    x, W = _array(0, x_shape, np.float32), _array(1, w_shape, np.float32) / 4
    b = _array(2, w_shape[:1], np.float32) if bias else None
    gamma, beta, mean, _, inv_std = _statistics(3, w_shape[0], np.float32, True)
    window = (stride, stride, padding, padding, 1, 1)
    y = cpu.batch_norm_forward_inference(cpu.conv2d_forward(x, W, b, *window, groups), gamma, beta, mean, inv_std)
    r = _array(9, y.shape, np.float32) if residual else None
    if residual:
        y = cpu.add_in_place(y, r)
    if relu:
        y = cpu.relu_forward(y)
    fused_y = cpu.conv2d_batch_norm_relu_inference(x, W, b, *window, groups, gamma, beta, mean, inv_std, r, relu)
    np.testing.assert_array_equal(fused_y, y, err_msg=layer)
    if relu:
        assert (y == 0).any() and (y > 0).any(), "the case must exercise the ReLU"


def _layers(seed=0, channels=6, out_channels=8, bias=False):
    conv = nn.Conv2d(channels, out_channels, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(out_channels)
    rng = np.random.default_rng(seed)
    bn.running_mean[...] = rng.standard_normal(out_channels)
    bn.running_var[...] = rng.random(out_channels) + 0.5
    bn.weight.data[...] = rng.random(out_channels) + 0.5
    bn.bias.data[...] = rng.standard_normal(out_channels)
    bn.eval()
    return conv, bn, nn.ReLU(inplace=True)


def _input(shape=(2, 6, 9, 9), seed=1):
    return tinycnn.tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _unfused(conv, bn, relu, x, residual=None):
    with tinycnn.no_grad():
        y = bn(conv(x))
        if residual is not None:
            y = tinycnn.functional.add(y, residual)
        return (y if relu is None else relu(y)).numpy()


@pytest.fixture
def fused_calls(monkeypatch):
    """The list of calls made to the two fused kernels, as (kernel name, arguments)."""
    calls = []

    def spying_on(name):
        original = getattr(kernels, name)

        def spy(*args):
            calls.append((name, args))
            return original(*args)
        monkeypatch.setattr(kernels, name, spy)
    spying_on("conv2d_batch_norm_relu_inference")
    spying_on("concat_batch_norm_relu_inference")
    return calls


@pytest.mark.parametrize("relu, residual", [(True, False), (False, False), (True, True)])
def test_conv_bn_relu_fuses_under_no_grad_in_eval(fused_calls, relu, residual):
    conv, bn, relu_module = _layers(bias=True)
    relu_module = relu_module if relu else None
    x = _input()
    r = _input((2, 8, 9, 9), seed=5) if residual else None
    expected = _unfused(conv, bn, relu_module, x, r)
    with tinycnn.no_grad():
        y = nn.conv_bn_relu(conv, bn, relu_module, x, residual=r)
    assert len(fused_calls) == 1
    np.testing.assert_array_equal(y.numpy(), expected)
    assert not y.requires_grad


def test_conv_bn_relu_fuses_a_frozen_model_without_no_grad(fused_calls):
    conv, bn, relu = _layers()
    for p in list(conv.parameters()) + list(bn.parameters()):
        p.requires_grad = False
    x = _input()
    np.testing.assert_array_equal(nn.conv_bn_relu(conv, bn, relu, x).numpy(), _unfused(conv, bn, relu, x))
    assert len(fused_calls) == 1


def _hook(module, name):
    seen = []
    if name == "forward_pre":
        module.register_forward_pre_hook(lambda m, args: seen.append(m))
    elif name == "forward":
        module.register_forward_hook(lambda m, args, out: seen.append(out))
    else:
        module.register_full_backward_hook(lambda m, gin, gout: None)
        seen.append("backward hook registered")
    return seen


# Each: how to set the stage so that the fused path must not be taken, run inside no_grad unless
# the case says otherwise. They return a context manager to run the call in.
def _recording(conv, bn, relu, x):
    return tinycnn.enable_grad()


def _training(conv, bn, relu, x):
    bn.train()
    return tinycnn.no_grad()


def _no_running_statistics(conv, bn, relu, x):
    bn.running_mean, bn.running_var = None, None
    bn._buffers["running_mean"] = bn._buffers["running_var"] = None
    return tinycnn.no_grad()


def _traced(conv, bn, relu, x):
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(tinycnn.no_grad())
    stack.enter_context(tinycnn.trace())
    return stack


def _checking_nan(conv, bn, relu, x):
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(tinycnn.no_grad())
    stack.enter_context(tinycnn.config.using(check_nan=True))
    return stack


@pytest.mark.parametrize("stage", [_recording, _training, _no_running_statistics, _traced, _checking_nan])
def test_conv_bn_relu_runs_the_layers_where_a_difference_could_show(fused_calls, stage):
    conv, bn, relu = _layers()
    x = _input()
    expected = _unfused(conv, bn, relu, x) if stage not in (_training, _no_running_statistics) else None
    with stage(conv, bn, relu, x):
        y = nn.conv_bn_relu(conv, bn, relu, x)
    assert fused_calls == []
    if expected is not None:
        np.testing.assert_array_equal(y.numpy(), expected)
    if stage is _recording:
        assert y.requires_grad and y.creator is not None  # a graph, for backward


@pytest.mark.parametrize("which", ["conv", "bn", "relu"])
@pytest.mark.parametrize("kind", ["forward_pre", "forward", "backward"])
def test_a_hook_on_any_of_the_three_modules_sees_its_layer_run(fused_calls, which, kind):
    conv, bn, relu = _layers()
    seen = _hook({"conv": conv, "bn": bn, "relu": relu}[which], kind)
    x = _input()
    expected = _unfused(conv, bn, relu, x)
    seen.clear() if kind != "backward" else None
    with tinycnn.no_grad():
        y = nn.conv_bn_relu(conv, bn, relu, x)
    assert fused_calls == []
    np.testing.assert_array_equal(y.numpy(), expected)
    if kind == "forward":
        assert len(seen) == 1 and seen[0].shape == (2, 8, 9, 9)


def test_subclasses_run_their_own_forward(fused_calls):
    class Doubled(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 2

    conv, bn, _ = _layers()
    x = _input()
    with tinycnn.no_grad():
        y = nn.conv_bn_relu(conv, bn, Doubled(), x)
    assert fused_calls == []
    np.testing.assert_array_equal(y.numpy(), 2 * _unfused(conv, bn, nn.ReLU(), x))


def test_a_residual_of_another_shape_is_broadcast_by_the_layers(fused_calls):
    conv, bn, relu = _layers()
    x, r = _input(), _input((1, 8, 1, 9), seed=3)
    with tinycnn.no_grad():
        y = nn.conv_bn_relu(conv, bn, relu, x, residual=r)
    assert fused_calls == []  # the fused kernel takes a residual of the output's shape only
    np.testing.assert_array_equal(y.numpy(), _unfused(conv, bn, relu, x, r))


def test_bad_input_gets_the_conv_layers_message():
    conv, bn, relu = _layers()
    with tinycnn.no_grad(), pytest.raises(ValueError, match=r"conv2d: input of shape \(2, 5, 9, 9\) has 5 channels"):
        nn.conv_bn_relu(conv, bn, relu, _input((2, 5, 9, 9)))


@pytest.mark.parametrize("relu", [True, False])
def test_concat_bn_relu_fuses_under_no_grad_in_eval(fused_calls, relu):
    _, bn, relu_module = _layers()
    relu_module = relu_module if relu else None
    features = [_input((2, 3, 5, 5), seed=1), _input((2, 4, 5, 5), seed=2), _input((2, 1, 5, 5), seed=3)]
    with tinycnn.no_grad():
        y = nn.concat_bn_relu(bn, relu_module, features)
        expected = bn(tinycnn.functional.concat(features, axis=1))
        expected = (expected if relu_module is None else relu_module(expected)).numpy()
    assert [name for name, _ in fused_calls] == ["concat_batch_norm_relu_inference"]
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("stage", [_recording, _training, _traced, _checking_nan])
def test_concat_bn_relu_runs_the_layers_where_a_difference_could_show(fused_calls, stage):
    _, bn, relu = _layers()
    features = [_input((2, 5, 5, 5), seed=1), _input((2, 3, 5, 5), seed=2)]
    seen = _hook(relu, "forward")
    with stage(None, bn, relu, features):
        y = nn.concat_bn_relu(bn, relu, features)
    assert fused_calls == [] and len(seen) == 1 and y.shape == (2, 8, 5, 5)


def test_concat_bn_relu_with_a_hook_or_channels_that_do_not_add_up_runs_the_layers(fused_calls):
    _, bn, relu = _layers()
    features = [_input((2, 5, 5, 5), seed=1), _input((2, 3, 5, 5), seed=2)]
    seen = _hook(bn, "forward")
    with tinycnn.no_grad():
        nn.concat_bn_relu(bn, relu, features)
    assert fused_calls == [] and len(seen) == 1
    _, bn, relu = _layers()
    with tinycnn.no_grad(), pytest.raises(ValueError, match=r"BatchNorm2d: expected 8 channels"):
        nn.concat_bn_relu(bn, relu, features[:1])


def _randomise_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features) * 0.1
            m.running_var[...] = rng.random(m.num_features) + 0.5
            m.weight.data[...] = rng.random(m.num_features) + 0.5
            m.bias.data[...] = rng.standard_normal(m.num_features) * 0.1
    return model.eval()


@pytest.mark.parametrize("name, side, batchnorms", [("resnet50", 64, 53), ("resnet18", 64, 20),
                                                    ("resnext50_32x4d", 64, 53), ("inception_v3", 75, 94),
                                                    ("googlenet", 64, 57), ("densenet121", 64, 58 + 58 + 3)])
def test_whole_networks_fuse_every_batchnorm_and_give_the_same_logits(fused_calls, monkeypatch, name, side,
                                                                     batchnorms):
    options = {"aux_logits": False} if name in ("inception_v3", "googlenet") else {}
    model = _randomise_batchnorm(tinycnn.models.create(name, **options))
    x = _input((2, 3, side, side))
    with tinycnn.no_grad():
        y = model(x).numpy()
    assert len(fused_calls) == batchnorms
    monkeypatch.setattr(fused, "fusable", lambda *args: False)
    with tinycnn.no_grad():
        expected = model(x).numpy()
    np.testing.assert_array_equal(y, expected)
    assert len(fused_calls) == batchnorms


# Training: F.batch_norm_relu (BatchNormReLU), and nn.conv_bn_relu / concat_bn_relu using it.

@st.composite
def batch_norm_relu_cases(draw):
    """x (N, C, H, W) with at least two values per channel, gamma or None, beta or None, a residual
    or None, relu; the values before the ReLU kept away from 0, where it has a kink."""
    H, W = draw(st.sampled_from([(1, 1), (1, 2), (2, 2), (3, 1), (2, 3)]))  # (1, 1): the kernels' own loops
    N, C = draw(st.integers(2 if H * W == 1 else 1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.uniform(-2.0, 2.0, size=(N, C, H, W))
    gamma = rng.uniform(0.5, 1.5, size=C) if draw(st.booleans()) else None
    beta = rng.uniform(-1.0, 1.0, size=C) if draw(st.booleans()) else None
    residual = rng.uniform(-1.0, 1.0, size=x.shape) if draw(st.booleans()) else None
    relu = draw(st.booleans())
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    z = (x - mean) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    z = z * (1 if gamma is None else gamma.reshape(1, C, 1, 1)) + (0 if beta is None else beta.reshape(1, C, 1, 1))
    assume(not relu or np.abs(z + (0 if residual is None else residual)).min() > 1e-3)
    return x, gamma, beta, residual, relu


def _call_batch_norm_relu(case):
    """(F.batch_norm_relu as a function of the present arrays, those arrays)."""
    x, gamma, beta, residual, relu = case
    present = [a for a in (x, gamma, beta, residual) if a is not None]

    def call(*tensors):
        tensors = iter(tensors)
        args = [None if a is None else next(tensors) for a in (x, gamma, beta, residual)]
        return tinycnn.functional.batch_norm_relu(args[0], None, None, args[1], args[2], args[3], relu=relu)
    return call, present


@given(batch_norm_relu_cases(), st.sampled_from(["auto", "numpy"]))
def test_batch_norm_relu_gradcheck(case, kernel_choice):
    call, present = _call_batch_norm_relu(case)
    with tinycnn.config.using(kernels=kernel_choice):
        assert tinycnn.gradcheck(call, [tinycnn.Tensor(a, requires_grad=True) for a in present])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(batch_norm_relu_cases(), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_batch_norm_relu_equals_torch(dtype, case, momentum, seed):
    x, gamma, beta, residual, relu = case
    C = x.shape[1]
    running = [np.zeros(C, dtype), np.ones(C, dtype)]
    running_t = [torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)]
    ours = {k: None if a is None else tinycnn.Tensor(a.astype(dtype), requires_grad=True)
            for k, a in zip(("x", "gamma", "beta", "residual"), (x, gamma, beta, residual))}
    theirs = {k: None if a is None else torch.tensor(a, requires_grad=True)
              for k, a in zip(("x", "gamma", "beta", "residual"), (x, gamma, beta, residual))}
    y = tinycnn.functional.batch_norm_relu(ours["x"], *running, ours["gamma"], ours["beta"], ours["residual"],
                                           momentum, 1e-5, relu)
    yt = torch_F.batch_norm(theirs["x"], *running_t, theirs["gamma"], theirs["beta"], True, momentum, 1e-5)
    if residual is not None:
        yt = yt + theirs["residual"]
    if relu:
        yt = torch_F.relu(yt)
    assert y.dtype == dtype
    assert_close(y.numpy(), yt, dtype, "batch_norm_relu y")
    w = np.random.default_rng(seed).standard_normal(x.shape)
    (y * tinycnn.Tensor(w.astype(dtype))).sum().backward()
    (yt * torch.from_numpy(w)).sum().backward()
    for name, tensor in ours.items():
        if tensor is not None:
            assert_close(tensor.grad, theirs[name].grad, dtype, f"batch_norm_relu g{name}")
    for statistic, expected in zip(running, running_t):
        assert_close(statistic, expected, dtype, "running statistic")


@pytest.mark.parametrize("backend", BACKENDS)
@given(batch_norm_relu_cases(), DTYPES, st.booleans(), st.integers(0, 2**16))
def test_batch_norm_relu_kernels_equal_the_reference(backend, case, dtype, needs_residual_grad, seed):
    x, gamma, beta, residual, relu = case
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    y, mean, var, inv_std = run(backend, "batch_norm_relu_forward_training", cast(x), cast(gamma), cast(beta), 1e-5,
                                cast(residual), relu)
    expected = reference.batch_norm_relu_forward_training(x, gamma, beta, 1e-5, residual, relu)
    for name, actual, wanted in zip(("y", "mean", "var", "inv_std"), (y, mean, var, inv_std), expected):
        assert_close(actual, wanted, dtype, name)
    gy = _array(seed, x.shape, np.float64)
    grads = run(backend, "batch_norm_relu_backward", gy.astype(dtype), y, cast(x), cast(gamma), mean, inv_std, relu,
                needs_residual_grad)
    wanted = reference.batch_norm_relu_backward(gy, expected[0], x, gamma, expected[1], expected[3], relu,
                                                needs_residual_grad)
    for name, actual, oracle in zip(("gx", "ggamma", "gbeta"), grads[:3], wanted[:3]):
        assert_close(actual, oracle, dtype, name)
    if needs_residual_grad:
        assert_close(grads[3], wanted[3], dtype, "gresidual")
    else:
        assert grads[3] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C", [(32, 512), (3, 7), (1, 5)])
def test_numba_batch_norm_relu_on_one_pixel_maps_gives_the_bits_of_the_general_loops(dtype, N, C):
    # Maps of one pixel take their own loops, along the channels (kernels/cpu_norm.py's _vectors
    # kernels): the same arithmetic in the same order as the general kernels, called here directly
    # on the same values, so the same bits, with and without a residual, ReLU and residual gradient.
    from tinycnn.kernels import cpu_norm
    rng = np.random.default_rng(N * C)
    x = (rng.standard_normal((N, C)) * 3 + 1).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    gy = rng.standard_normal((N, C)).astype(dtype)
    none2, none3 = np.empty((0, 0), dtype), np.empty((0, 0, 0), dtype)
    for residual, relu in [(False, False), (False, True), (True, True)]:
        r = rng.standard_normal((N, C)).astype(dtype) if residual else None
        results = []
        for vectors in (True, False):
            y, mean, var, inv_std = np.empty((N, C), dtype), *(np.empty(C, dtype) for _ in range(3))
            if vectors:
                cpu_norm._batch_norm_forward_vectors(x, gamma, beta, 1e-5, y, mean, var, inv_std,
                                                     none2 if r is None else r, relu, 0, C)
            else:
                cpu_norm._batch_norm_forward_training(x[:, :, None], gamma, beta, 1e-5, y[:, :, None], mean, var,
                                                      inv_std, none3 if r is None else r[:, :, None], relu, 0, C)
            gain = (gamma * inv_std).astype(dtype)
            for wants_residual_gradient in (False, True):
                gx, ggamma, gbeta = np.empty((N, C), dtype), np.empty(C, dtype), np.empty(C, dtype)
                g_out = np.empty((N, C), dtype) if wants_residual_gradient else none2
                if vectors:
                    cpu_norm._batch_norm_backward_vectors(gy, y if relu else none2, x, gain, mean, inv_std, gx, ggamma,
                                                          gbeta, g_out, 0, C)
                else:
                    cpu_norm._batch_norm_backward(gy[:, :, None], y[:, :, None] if relu else none3, x[:, :, None],
                                                  gain, mean, inv_std, gx[:, :, None], ggamma, gbeta,
                                                  g_out[:, :, None] if wants_residual_gradient else none3, 0, C)
                results.append((y, mean, var, inv_std, gx, ggamma, gbeta, g_out))
        half = len(results) // 2
        for ours, general in zip(results[:half], results[half:]):
            for name, a, b in zip(("y", "mean", "var", "inv_std", "gx", "ggamma", "gbeta", "gresidual"), ours, general):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}, residual {residual}, relu {relu}")


def test_batch_norm_relu_rejects_a_residual_of_another_shape():
    x = tinycnn.Tensor(np.ones((2, 3, 2, 2)), requires_grad=True)
    with pytest.raises(ValueError, match=r"batch_norm_relu: expected a residual of the input's shape \(2, 3, 2, 2\), "
                                         r"got \(2, 3, 1, 2\)"):
        tinycnn.functional.batch_norm_relu(x, None, None, residual=tinycnn.Tensor(np.ones((2, 3, 1, 2))))


def _training_layers(seed=0):
    tinycnn.manual_seed(seed)  # the same conv weights on every call
    conv, bn, relu = _layers(seed)
    bn.train()
    return conv, bn, relu


def _step(conv, bn, relu, x, residual, fuse):
    """One forward and backward through conv_bn_relu, fused or not (fusable_in_training forced off);
    returns the output, the gradients of x, the residual and every parameter, and the running
    statistics with the batch count."""
    original = fused.fusable_in_training
    if not fuse:
        fused.fusable_in_training = lambda *args: False
    try:
        y = nn.conv_bn_relu(conv, bn, relu, x, residual=residual)
    finally:
        fused.fusable_in_training = original
    w = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    (y * tinycnn.Tensor(w)).sum().backward()
    grads = [x.grad] + ([] if residual is None else [residual.grad]) + [p.grad for p in conv.parameters()] \
        + [p.grad for p in bn.parameters()]
    return y, grads, [bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked.copy()]


@pytest.mark.parametrize("with_residual", [False, True])
def test_conv_bn_relu_in_training_is_one_op_with_the_layers_gradients(with_residual):
    results = []
    for fuse in (True, False):
        conv, bn, relu = _training_layers()
        x = tinycnn.Tensor(_input().data, requires_grad=True)
        r = tinycnn.Tensor(_input((2, 8, 9, 9), seed=5).data, requires_grad=True) if with_residual else None
        y, grads, statistics = _step(conv, bn, relu, x, r, fuse)
        assert (y.creator.name == "BatchNormReLU") == fuse
        results.append((y.numpy(), grads, statistics))
    (y, grads, statistics), (y_layers, grads_layers, statistics_layers) = results
    np.testing.assert_array_equal(y, y_layers)  # the forward's arithmetic is the layers', in their order
    for ours, theirs in zip(grads + statistics, grads_layers + statistics_layers):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_conv_bn_relu_in_training_runs_the_layers_with_a_hook_or_a_trace():
    conv, bn, relu = _training_layers()
    seen = _hook(relu, "forward")
    y = nn.conv_bn_relu(conv, bn, relu, _input())
    assert y.creator.name == "ReLU" and len(seen) == 1
    conv, bn, relu = _training_layers()
    with tinycnn.trace():
        y = nn.conv_bn_relu(conv, bn, relu, _input())
    assert y.creator.name == "ReLU"


def test_concat_bn_relu_in_training_is_one_op():
    _, bn, relu = _training_layers()
    features = [tinycnn.Tensor(_input((2, 5, 5, 5), seed=1).data, requires_grad=True),
                tinycnn.Tensor(_input((2, 3, 5, 5), seed=2).data, requires_grad=True)]
    y = nn.concat_bn_relu(bn, relu, features)
    assert y.creator.name == "BatchNormReLU"
    y.sum().backward()
    assert all(f.grad is not None for f in features)
