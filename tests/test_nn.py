"""Layers: forward and backward equal torch.nn's twin with the same weights, torch's default
initialisation, repr, train/eval behaviour, BatchNorm's running statistics, nn.init and Module."""
import math

import numpy as np
import pytest
import torch

import tinycnn
from tinycnn import nn
from support import assert_close, to_numpy

DTYPES = [np.float32, np.float64]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}

# name -> (factory(nn module, **dtype keyword) -> layer, input shape). The same factory builds
# the tinycnn layer and its torch twin, since names and arguments are torch's.
LAYERS = {
    "conv": (lambda m, **kw: m.Conv2d(2, 3, 3, **kw), (2, 2, 5, 5)),
    "conv_stride_pad": (lambda m, **kw: m.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2), **kw), (1, 2, 6, 5)),
    "conv_dilation_groups": (lambda m, **kw: m.Conv2d(4, 2, 3, dilation=2, groups=2, bias=False, **kw),
                             (2, 4, 7, 6)),
    "conv_same": (lambda m, **kw: m.Conv2d(2, 2, 4, padding="same", **kw), (1, 2, 5, 4)),
    "conv_valid": (lambda m, **kw: m.Conv2d(1, 2, 2, padding="valid", **kw), (2, 1, 4, 4)),
    "linear": (lambda m, **kw: m.Linear(5, 3, **kw), (4, 5)),
    "linear_no_bias_3d": (lambda m, **kw: m.Linear(4, 2, bias=False, **kw), (2, 3, 4)),
    "maxpool": (lambda m, **kw: m.MaxPool2d(2), (2, 3, 5, 4)),
    "maxpool_overlap_pad_ceil": (lambda m, **kw: m.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 2, 6, 7)),
    "maxpool_dilation": (lambda m, **kw: m.MaxPool2d(2, stride=1, dilation=2), (1, 2, 5, 5)),
    "avgpool": (lambda m, **kw: m.AvgPool2d(2), (2, 2, 4, 5)),
    "avgpool_pad": (lambda m, **kw: m.AvgPool2d(3, stride=2, padding=1), (1, 2, 5, 6)),
    "avgpool_pad_exclude_ceil": (lambda m, **kw: m.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                             count_include_pad=False), (1, 2, 6, 6)),
    "adaptive_avgpool": (lambda m, **kw: m.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    "adaptive_avgpool_1": (lambda m, **kw: m.AdaptiveAvgPool2d(1), (2, 3, 3, 4)),
    "batchnorm2d": (lambda m, **kw: m.BatchNorm2d(3, **kw), (3, 3, 2, 3)),
    "batchnorm2d_no_affine": (lambda m, **kw: m.BatchNorm2d(2, affine=False, momentum=None, **kw), (2, 2, 3, 3)),
    "batchnorm1d": (lambda m, **kw: m.BatchNorm1d(4, eps=1e-3, **kw), (5, 4)),
    "batchnorm1d_3d": (lambda m, **kw: m.BatchNorm1d(3, **kw), (2, 3, 4)),
    "lrn": (lambda m, **kw: m.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0), (2, 5, 3, 3)),
    "relu": (lambda m, **kw: m.ReLU(), (2, 3, 4)),
    "leaky_relu": (lambda m, **kw: m.LeakyReLU(0.2), (2, 3, 4)),
    "sigmoid": (lambda m, **kw: m.Sigmoid(), (2, 3)),
    "tanh": (lambda m, **kw: m.Tanh(), (2, 3)),
    "softmax": (lambda m, **kw: m.Softmax(dim=1), (2, 4, 3)),
    "log_softmax": (lambda m, **kw: m.LogSoftmax(dim=-1), (3, 4)),
    "flatten": (lambda m, **kw: m.Flatten(), (2, 3, 2, 2)),
    "flatten_middle": (lambda m, **kw: m.Flatten(1, 2), (2, 3, 2, 2)),
    "zeropad": (lambda m, **kw: m.ZeroPad2d((1, 0, 2, 1)), (1, 2, 3, 3)),
    "zeropad_int": (lambda m, **kw: m.ZeroPad2d(1), (1, 1, 2, 3)),
    "identity": (lambda m, **kw: m.Identity(54, unused="ignored"), (2, 3)),
    "dropout_eval_free": (lambda m, **kw: m.Dropout(0.0), (2, 3)),
}


def twins(factory, dtype):
    """A tinycnn layer and its torch twin holding the same weights and buffers."""
    ours = factory(nn, dtype=dtype)
    theirs = factory(torch.nn, dtype=TORCH_DTYPES[dtype])
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    return ours, theirs


def forward_backward(layer, x, gy, xp=np):
    """Output, input gradient and parameter gradients of a tinycnn layer."""
    x = tinycnn.Tensor(xp.asarray(x), requires_grad=True)
    y = layer(x)
    y.backward(xp.asarray(gy))
    return y, x.grad, {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_torch(xp, name, dtype, rng):
    factory, shape = LAYERS[name]
    ours, theirs = twins(factory, dtype)
    if xp is not np:
        ours.to("gpu")
    x = rng.uniform(-2, 2, size=shape).astype(dtype)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = theirs(x_torch)  # once only: a second forward would update BatchNorm's statistics again
    gy = rng.uniform(-1, 1, size=tuple(y_torch.shape)).astype(dtype)
    y_torch.backward(torch.tensor(gy))
    gx_torch, grads_torch = x_torch.grad, {name: p.grad for name, p in theirs.named_parameters()}
    y, gx, grads = forward_backward(ours, x, gy, xp)
    assert_close(y, y_torch, dtype, f"{name} forward")
    assert y.dtype == dtype
    assert_close(gx, gx_torch, dtype, f"{name} input gradient")
    assert grads.keys() == grads_torch.keys()
    for key in grads:
        assert_close(grads[key], grads_torch[key], dtype, f"{name} gradient of {key}")
    for key, buffer in theirs.named_buffers():
        assert_close(dict(ours.named_buffers())[key], buffer, dtype, f"{name} buffer {key} after forward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool_equals_torch_adaptive_avg_pool_1(dtype, rng):
    x = rng.uniform(-2, 2, size=(2, 3, 4, 5)).astype(dtype)
    y = nn.GlobalAvgPool2d()(tinycnn.tensor(x))
    expected = torch.nn.AdaptiveAvgPool2d(1)(torch.tensor(x))
    assert_close(y, expected, dtype, "GlobalAvgPool2d")


@pytest.mark.parametrize("dtype", DTYPES)
def test_local_response_norm_paper_convention(dtype, rng):
    # alpha_divided_by_size=False is torch's LRN with alpha multiplied by size.
    x = rng.uniform(-2, 2, size=(2, 6, 3, 3)).astype(dtype)
    y = nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0, alpha_divided_by_size=False)(tinycnn.tensor(x))
    expected = torch.nn.LocalResponseNorm(5, alpha=5e-2, beta=0.75, k=2.0)(torch.tensor(x))
    assert_close(y, expected, dtype, "LocalResponseNorm paper convention")


LOSSES = {
    "cross_entropy": (lambda m, w: m.CrossEntropyLoss(), "classes"),
    "cross_entropy_sum_smoothing": (lambda m, w: m.CrossEntropyLoss(reduction="sum", label_smoothing=0.2), "classes"),
    "cross_entropy_weight": (lambda m, w: m.CrossEntropyLoss(weight=w, label_smoothing=0.1), "classes"),
    "cross_entropy_none": (lambda m, w: m.CrossEntropyLoss(weight=w, reduction="none"), "classes"),
    "nll": (lambda m, w: m.NLLLoss(weight=w), "classes"),
    "mse": (lambda m, w: m.MSELoss(), "values"),
    "mse_sum": (lambda m, w: m.MSELoss(reduction="sum"), "values"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_layer_matches_torch(name, dtype, rng):
    factory, target_kind = LOSSES[name]
    x = rng.uniform(-2, 2, size=(4, 3)).astype(dtype)
    class_weight = rng.uniform(0.5, 2.0, size=3).astype(dtype)
    if target_kind == "classes":
        t = np.array([0, 2, 1, 2], dtype=np.int64)
    else:
        t = rng.uniform(-1, 1, size=x.shape).astype(dtype)
    xt = tinycnn.Tensor(x, requires_grad=True)
    loss = factory(nn, class_weight)(xt, tinycnn.Tensor(t))
    x_torch = torch.tensor(x, requires_grad=True)
    loss_torch = factory(torch.nn, torch.tensor(class_weight))(x_torch, torch.tensor(t))
    assert_close(loss, loss_torch, dtype, f"{name} loss")
    gy = np.ones(loss.shape, dtype=dtype)
    loss.backward(gy)
    loss_torch.backward(torch.tensor(gy))
    assert_close(xt.grad, x_torch.grad, dtype, f"{name} gradient")


def test_loss_class_weight_is_a_buffer_as_in_torch():
    loss = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert list(loss.state_dict()) == list(torch.nn.CrossEntropyLoss(weight=torch.ones(3)).state_dict()) == ["weight"]
    assert list(nn.CrossEntropyLoss().state_dict()) == []
    with pytest.raises(ValueError, match="CrossEntropyLoss.*reduction"):
        nn.CrossEntropyLoss(reduction="average")


REPRS = [
    lambda m: m.Conv2d(3, 8, 3),
    lambda m: m.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=1, bias=False),
    lambda m: m.Conv2d(4, 8, 3, padding="same", groups=2),
    lambda m: m.Linear(10, 5),
    lambda m: m.Linear(10, 5, bias=False),
    lambda m: m.MaxPool2d(3, 2, 1, ceil_mode=True),
    lambda m: m.MaxPool2d(2),
    lambda m: m.AvgPool2d(3, stride=1, padding=1),
    lambda m: m.AdaptiveAvgPool2d((6, 6)),
    lambda m: m.BatchNorm2d(16),
    lambda m: m.BatchNorm1d(16, eps=1e-3, momentum=None, affine=False, track_running_stats=False),
    lambda m: m.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
    lambda m: m.Dropout(0.3),
    lambda m: m.ReLU(),
    lambda m: m.ReLU(inplace=True),
    lambda m: m.LeakyReLU(0.1, inplace=True),
    lambda m: m.Sigmoid(),
    lambda m: m.Softmax(dim=1),
    lambda m: m.LogSoftmax(dim=1),
    lambda m: m.Flatten(),
    lambda m: m.ZeroPad2d((1, 2, 3, 4)),
    lambda m: m.Identity(),
    lambda m: m.CrossEntropyLoss(),
    lambda m: m.Sequential(m.Conv2d(1, 2, 3), m.ReLU(), m.Sequential(m.Flatten(), m.Linear(2, 1))),
]


@pytest.mark.parametrize("index", range(len(REPRS)))
def test_repr_matches_torch(index):
    assert repr(REPRS[index](nn)) == repr(REPRS[index](torch.nn))


def _fan_in_bound(layer):
    fan_in = math.prod(layer.weight.shape[1:])
    return 1 / math.sqrt(fan_in)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(16, 32, 3), lambda: nn.Conv2d(32, 24, (3, 2), groups=4),
                                  lambda: nn.Linear(300, 40)])
def test_default_init_is_torchs_uniform_fan_in_bound(make):
    # kaiming_uniform_(a=sqrt(5)) gives U(-b, b) with b = sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in).
    tinycnn.manual_seed(0)
    layer = make()
    bound = _fan_in_bound(layer)
    W, b = layer.weight.data, layer.bias.data
    assert W.dtype == b.dtype == np.float32
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(W).max() > 0.99 * bound  # fills the interval, not a narrower one
    assert abs(W.std() - bound / math.sqrt(3)) < 0.03 * bound  # the standard deviation of U(-b, b)
    assert abs(W.mean()) < 0.03 * bound
    assert np.unique(b).size == b.size


def test_init_uses_the_seeded_generator():
    tinycnn.manual_seed(3)
    first = nn.Conv2d(2, 3, 3).state_dict()
    tinycnn.manual_seed(3)
    second = nn.Conv2d(2, 3, 3).state_dict()
    third = nn.Conv2d(2, 3, 3).state_dict()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not np.array_equal(second["weight"], third["weight"])


def test_batchnorm_default_state_matches_torch():
    ours, theirs = nn.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].dtype == to_numpy(value).dtype, key
        np.testing.assert_array_equal(ours.state_dict()[key], to_numpy(value), err_msg=key)
    assert ours.num_batches_tracked.shape == () and ours.num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_running_stats_over_steps_match_torch(momentum, dtype, rng):
    ours, theirs = twins(lambda m, **kw: m.BatchNorm2d(3, momentum=momentum, **kw), dtype)
    for step in range(4):
        x = rng.normal(step, 1 + step, size=(3, 3, 2, 2)).astype(dtype)
        assert_close(ours(tinycnn.tensor(x)), theirs(torch.tensor(x)), dtype, f"train step {step}")
    for key, value in theirs.state_dict().items():
        if key == "num_batches_tracked":
            assert int(ours.num_batches_tracked) == int(value) == 4
        else:
            assert_close(ours.state_dict()[key], value, dtype, key)
    ours.eval()
    theirs.eval()
    x = rng.normal(size=(2, 3, 2, 2)).astype(dtype)
    assert_close(ours(tinycnn.tensor(x)), theirs(torch.tensor(x)), dtype, "eval with running statistics")
    assert int(ours.num_batches_tracked) == 4  # evaluation does not count batches


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_without_running_stats_uses_batch_stats_in_eval(dtype, rng):
    ours, theirs = twins(lambda m, **kw: m.BatchNorm2d(2, track_running_stats=False, **kw), dtype)
    assert ours.running_mean is None and list(ours.state_dict()) == ["weight", "bias"]
    ours.eval()
    theirs.eval()
    x = rng.normal(2, 3, size=(3, 2, 2, 2)).astype(dtype)
    assert_close(ours(tinycnn.tensor(x)), theirs(torch.tensor(x)), dtype, "eval without running stats")


def test_batchnorm_rejects_bad_rank_and_channels():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 4D input .*got 3D input of shape \(2, 3, 4\)"):
        nn.BatchNorm2d(3)(tinycnn.tensor(np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 3 channels .*shape \(2, 4, 2, 2\)"):
        nn.BatchNorm2d(3)(tinycnn.tensor(np.zeros((2, 4, 2, 2), np.float32)))
    with pytest.raises(ValueError, match="BatchNorm1d: expected 2D or 3D input"):
        nn.BatchNorm1d(3)(tinycnn.tensor(np.zeros((2, 3, 4, 4), np.float32)))


def test_train_eval_switch_dropout_and_batchnorm(rng):
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Dropout(0.5))
    x = tinycnn.tensor(rng.normal(3, 2, size=(200, 4)).astype(np.float32))
    assert net.training and net[1].training
    tinycnn.manual_seed(0)
    y = net(x).numpy()
    normalised = (x.numpy() - x.numpy().mean(0)) / np.sqrt(x.numpy().var(0) + 1e-5)
    dropped = y == 0
    assert 0.4 < dropped.mean() < 0.6  # about p of the elements zeroed
    np.testing.assert_allclose(y[~dropped], 2 * normalised[~dropped], rtol=1e-4, atol=1e-5)  # survivors / (1 - p)

    net.eval()
    assert not net.training and not net[0].training and not net[1].training
    running_mean, running_var = net[0].running_mean.copy(), net[0].running_var.copy()
    y = net(x).numpy()
    np.testing.assert_allclose(y, (x.numpy() - running_mean) / np.sqrt(running_var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(net[0].running_mean, running_mean)  # not updated in eval
    net.train()
    assert net[1].training


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match="Dropout: probability p must be between 0 and 1, got 1.5"):
        nn.Dropout(1.5)


def test_conv2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Conv2d: in_channels \(3\) must be divisible by groups \(2\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="Conv2d: padding='same' is not supported for strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Conv2d: padding must be"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(TypeError, match="Conv2d: expected kernel_size as an int or a pair"):
        nn.Conv2d(3, 4, (3, 3, 3))


def test_softmax_without_dim_uses_torchs_legacy_choice(rng):
    x = rng.normal(size=(2, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="Softmax: implicit dimension"):
        y = nn.Softmax()(tinycnn.tensor(x))
    assert_close(y, torch.softmax(torch.tensor(x), dim=1), np.float32, "Softmax legacy dim")


def test_float64_layers_keep_float64():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, dtype=np.float64), nn.BatchNorm2d(2, dtype=np.float64),
                        nn.Flatten(), nn.Linear(2, 1, dtype=np.float64))
    assert {value.dtype for key, value in net.state_dict().items() if "num_batches" not in key} == {np.dtype("f8")}
    assert net(tinycnn.tensor(np.ones((2, 1, 3, 3)))).dtype == np.float64


def test_sequential_indexing_and_layer_usage(rng):
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    assert len(net) == 5 and isinstance(net[-1], nn.Linear) and isinstance(net[1:3][0], nn.ReLU)
    y = net(tinycnn.tensor(rng.normal(size=(2, 1, 4, 4)).astype(np.float32)))
    assert y.shape == (2, 3)
    assert [name for name, _ in net.named_parameters()] == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert net.num_parameters() == 2 * 9 + 2 + 8 * 3 + 3


# nn.init


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 2), (6, 2, 3), (3, 1, 1, 1)])
def test_fan_in_and_fan_out_match_torch(shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert nn.init._calculate_fan_in_and_fan_out(np.empty(shape)) == expected


def test_fan_needs_two_dimensions():
    with pytest.raises(ValueError, match=r"fewer than 2 dimensions, got shape \(5,\)"):
        nn.init.xavier_uniform_(np.empty(5))


@pytest.mark.parametrize("nonlinearity, param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                                 ("tanh", None), ("relu", None), ("leaky_relu", None),
                                                 ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    assert nn.init.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(nonlinearity, param)


def test_calculate_gain_rejects_unknown():
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        nn.init.calculate_gain("swish")


# (tinycnn init, torch init, keyword arguments); drawn on a (64, 32, 3, 3) weight and compared by
# bound and standard deviation with torch's draws (different generators, same distribution).
INITS = {
    "kaiming_uniform_fan_out_relu": ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu")),
    "kaiming_uniform_a": ("kaiming_uniform_", dict(a=0.1)),
    "kaiming_normal_fan_out_relu": ("kaiming_normal_", dict(mode="fan_out", nonlinearity="relu")),
    "kaiming_normal_default": ("kaiming_normal_", {}),
    "xavier_uniform": ("xavier_uniform_", dict(gain=2.0)),
    "xavier_normal": ("xavier_normal_", {}),
    "normal": ("normal_", dict(mean=0.5, std=0.01)),
    "uniform": ("uniform_", dict(a=-0.3, b=0.1)),
    "trunc_normal": ("trunc_normal_", dict(mean=0.1, std=0.02, a=0.08, b=0.16)),
    "trunc_normal_default": ("trunc_normal_", {}),
}


@pytest.mark.parametrize("name", sorted(INITS))
def test_init_distribution_matches_torch(name):
    function, kwargs = INITS[name]
    tinycnn.manual_seed(0)
    torch.manual_seed(0)
    W = nn.Parameter(np.zeros((64, 32, 3, 3), np.float32))
    assert getattr(nn.init, function)(W, **kwargs) is W
    expected = getattr(torch.nn.init, function)(torch.empty(64, 32, 3, 3), **kwargs).numpy()
    ours = W.data
    spread = expected.std()
    assert ours.dtype == np.float32
    assert abs(ours.mean() - expected.mean()) < 0.03 * spread
    assert abs(ours.std() - spread) < 0.03 * spread
    assert expected.min() - 0.05 * spread <= ours.min() and ours.max() <= expected.max() + 0.05 * spread
    if "uniform" in name or "trunc" in name:  # bounded: both reach the same ends
        assert abs(ours.min() - expected.min()) < 0.05 * spread and abs(ours.max() - expected.max()) < 0.05 * spread


def test_trunc_normal_stays_in_bounds_and_rejects_empty_interval():
    W = np.zeros(1000)
    nn.init.trunc_normal_(W, mean=0.0, std=1.0, a=-0.5, b=0.25)
    assert W.min() >= -0.5 and W.max() <= 0.25 and np.unique(W).size == 1000
    with pytest.raises(ValueError, match="trunc_normal_: expected a < b"):
        nn.init.trunc_normal_(W, a=1.0, b=-1.0)


def test_constant_zeros_ones_in_place():
    p = nn.Parameter(np.full((2, 3), 7.0, np.float32))
    data = p.data
    nn.init.zeros_(p)
    assert p.data is data and not data.any()
    nn.init.ones_(p)
    assert (data == 1).all()
    nn.init.constant_(p, 0.25)
    assert (data == 0.25).all()


def test_init_on_float64_keeps_dtype():
    W = nn.Parameter(np.zeros((3, 4)))
    nn.init.kaiming_normal_(W)
    assert W.dtype == np.float64 and W.data.std() > 0


# Module


def test_module_buffers_stay_registered_when_reassigned():
    bn = nn.BatchNorm2d(2)
    bn.running_mean = np.full(2, 5.0, np.float32)  # a new array, as `self.running_mean = ...` would give
    assert "running_mean" in bn.state_dict() and bn.state_dict()["running_mean"][0] == 5.0
    assert [name for name, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]


def test_module_forward_hook_sees_output_and_can_be_removed(rng):
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    seen = []
    handle = net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    net(tinycnn.tensor(rng.normal(size=(4, 3)).astype(np.float32)))
    handle.remove()
    net(tinycnn.tensor(rng.normal(size=(4, 3)).astype(np.float32)))
    assert seen == [(4, 2)]


def test_requires_grad_false_freezes_parameters():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    net[0].requires_grad_(False)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]
    assert net.num_parameters(trainable_only=True) == 3
    y = net(tinycnn.tensor(np.ones((2, 3), np.float32))).sum()
    y.backward()
    assert net[0].weight.grad is None and net[1].weight.grad is not None

