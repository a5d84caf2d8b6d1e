"""Optimizers: 20-step trajectories equal torch.optim's for every option, exact resume from a
state_dict, skipped and frozen parameters, param groups and argument errors."""
import pickle

import numpy as np
import pytest
import torch

import tinycnn
from tinycnn import nn, optim
from tinycnn.kernels import parallel
from support import assert_close

DTYPES = [np.float32, np.float64]

# name -> (optimizer class name, keyword arguments); the same for tinycnn.optim and torch.optim.
CONFIGS = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd_weight_decay": ("SGD", dict(lr=0.1, weight_decay=0.05)),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9)),
    "sgd_momentum_dampening": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    "sgd_nesterov_weight_decay_maximize": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1,
                                                       maximize=True)),
    "adam": ("Adam", dict(lr=0.01)),
    "adam_betas_eps": ("Adam", dict(lr=0.02, betas=(0.3, 0.6), eps=1e-3)),
    "adam_weight_decay": ("Adam", dict(lr=0.01, weight_decay=0.1)),
    "adam_amsgrad": ("Adam", dict(lr=0.01, amsgrad=True)),
    "adam_amsgrad_weight_decay_maximize": ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    "adamw": ("AdamW", dict(lr=0.01)),
    "adamw_weight_decay": ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    "adamw_amsgrad": ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.9))),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "rmsprop_alpha_eps": ("RMSprop", dict(lr=0.01, alpha=0.7, eps=1e-4)),
    "rmsprop_weight_decay": ("RMSprop", dict(lr=0.01, weight_decay=0.1)),
    "rmsprop_momentum": ("RMSprop", dict(lr=0.01, momentum=0.9)),
    "rmsprop_centered": ("RMSprop", dict(lr=0.01, centered=True)),
    "rmsprop_centered_momentum_weight_decay_maximize": ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5,
                                                                        weight_decay=0.1, maximize=True)),
}
SHAPES = [(3, 4), (4,), (2, 1, 2, 2)]
STEPS = 20


def draws(rng, dtype):
    """Initial values and STEPS gradients for each parameter shape."""
    initial = [rng.normal(size=shape).astype(dtype) for shape in SHAPES]
    gradients = [[rng.normal(size=shape).astype(dtype) for shape in SHAPES] for _ in range(STEPS)]
    return initial, gradients


def torch_trajectory(name, kwargs, initial, gradients):
    params = [torch.nn.Parameter(torch.tensor(x)) for x in initial]
    optimizer = getattr(torch.optim, name)(params, **kwargs)
    path = []
    for grads in gradients:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        optimizer.step()
        path.append([p.detach().numpy().copy() for p in params])
    return path


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_trajectory_matches_torch(xp, config, dtype, rng):
    name, kwargs = CONFIGS[config]
    initial, gradients = draws(rng, dtype)
    expected = torch_trajectory(name, kwargs, initial, gradients)
    params = [nn.Parameter(xp.asarray(x)) for x in initial]
    optimizer = getattr(optim, name)(params, **kwargs)
    for step, grads in enumerate(gradients):
        for p, g in zip(params, grads):
            p.grad = xp.asarray(g)
        optimizer.step()
        for i, p in enumerate(params):
            assert p.dtype == dtype
            assert_close(p.data, expected[step][i], dtype, f"{config} step {step} parameter {i}")


@pytest.mark.parametrize("config", [name for name in sorted(CONFIGS) if name.startswith("sgd")])
def test_sgd_on_big_and_odd_parameters_matches_torch(config, rng):
    # kernels.sgd_update (the Numba kernel by default) goes through a parameter of more than
    # parallel.SERIAL_WORK elements in chunks of CHUNK_WORK on the kernel threads: 2.5 chunks (the
    # last one partial) and 1.5; a transposed parameter and a Fortran-order gradient take the
    # reference's NumPy operations.
    name, kwargs = CONFIGS[config]
    chunk = parallel.CHUNK_WORK
    initial = [rng.normal(size=(5, chunk // 2)).astype(np.float32),
               rng.normal(size=(chunk // 4, 6)).astype(np.float32),
               rng.normal(size=(3, chunk // 8)).astype(np.float32).T]
    gradients = [[rng.normal(size=x.shape).astype(np.float32) for x in initial] for _ in range(5)]
    expected = torch_trajectory(name, kwargs, initial, gradients)
    params = [nn.Parameter(x.copy(order="K")) for x in initial]
    assert not params[2].data.flags.c_contiguous
    optimizer = getattr(optim, name)(params, **kwargs)
    for step, grads in enumerate(gradients):
        params[0].grad, params[1].grad, params[2].grad = grads[0].copy(), np.asfortranarray(grads[1]), grads[2]
        optimizer.step()
        for i, p in enumerate(params):
            assert_close(p.data, expected[step][i], np.float32, f"{config} step {step} parameter {i}")


# name -> (defaults, options of three param groups): each group its own lr, the last one option more.
GROUPS = {
    "SGD": (dict(momentum=0.9, weight_decay=0.01), [dict(lr=0.1), dict(lr=0.01), dict(lr=0.05, dampening=0.5)]),
    "Adam": (dict(weight_decay=0.01), [dict(lr=0.01), dict(lr=0.1), dict(lr=0.003, amsgrad=True)]),
    "AdamW": (dict(betas=(0.8, 0.95)), [dict(lr=0.01), dict(lr=0.1), dict(lr=0.003, weight_decay=0.5)]),
    "RMSprop": (dict(momentum=0.5), [dict(lr=0.01), dict(lr=0.001), dict(lr=0.02, centered=True)]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(GROUPS))
def test_param_groups_trajectory_matches_torch(name, dtype, rng):
    defaults, options = GROUPS[name]
    initial, gradients = draws(rng, dtype)
    # A fourth parameter, in the second group, has a gradient on even steps only: both libraries
    # must skip it on odd steps (no weight decay, no momentum or moment update).
    initial.append(rng.normal(size=2).astype(dtype))
    for step, grads in enumerate(gradients):
        grads.append(rng.normal(size=2).astype(dtype) if step % 2 == 0 else None)

    def groups(p):
        return [dict(options[0], params=[p[0]]), dict(options[1], params=[p[1], p[3]]), dict(options[2], params=[p[2]])]

    params = [nn.Parameter(x.copy()) for x in initial]
    twins = [torch.nn.Parameter(torch.tensor(x)) for x in initial]
    ours = getattr(optim, name)(groups(params), **defaults)
    theirs = getattr(torch.optim, name)(groups(twins), **defaults)
    for step, grads in enumerate(gradients):
        for p, twin, g in zip(params, twins, grads):
            p.grad = None if g is None else g.copy()
            twin.grad = None if g is None else torch.tensor(g)
        ours.step()
        theirs.step()
        for i, (p, twin) in enumerate(zip(params, twins)):
            assert_close(p.data, twin, dtype, f"{name} step {step} parameter {i}")
    assert [group["lr"] for group in ours.param_groups] == [group["lr"] for group in theirs.param_groups]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_torchs_state_dict_loads_and_continues_torchs_trajectory(config, rng):
    name, kwargs = CONFIGS[config]
    initial, gradients = draws(rng, np.float64)
    twins = [torch.nn.Parameter(torch.tensor(x)) for x in initial]
    theirs = getattr(torch.optim, name)(twins, **kwargs)
    for grads in gradients[:10]:
        for twin, g in zip(twins, grads):
            twin.grad = torch.tensor(g)
        theirs.step()

    params = [nn.Parameter(twin.detach().numpy().copy()) for twin in twins]
    ours = getattr(optim, name)(params)
    ours.load_state_dict(theirs.state_dict())  # torch tensors, and torch's float step counts
    for step, grads in enumerate(gradients[10:], 10):
        for p, twin, g in zip(params, twins, grads):
            p.grad, twin.grad = g.copy(), torch.tensor(g)
        ours.step()
        theirs.step()
        for i, (p, twin) in enumerate(zip(params, twins)):
            assert_close(p.data, twin, np.float64, f"{config} step {step} parameter {i}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_state_dict_resume_continues_identically(config, rng):
    name, kwargs = CONFIGS[config]
    initial, gradients = draws(rng, np.float64)

    def run(params, optimizer, steps):
        for grads in steps:
            for p, g in zip(params, grads):
                p.grad = g.copy()
            optimizer.step()

    params = [nn.Parameter(x.copy()) for x in initial]
    optimizer = getattr(optim, name)(params, **kwargs)
    run(params, optimizer, gradients[:10])
    checkpoint = pickle.dumps((optimizer.state_dict(), [p.data.copy() for p in params]))
    run(params, optimizer, gradients[10:])  # the uninterrupted run

    state, saved = pickle.loads(checkpoint)
    resumed = [nn.Parameter(x) for x in saved]
    fresh = getattr(optim, name)(resumed, lr=123.0) if name == "SGD" else getattr(optim, name)(resumed)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == kwargs["lr"]
    run(resumed, fresh, gradients[10:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(q.data, p.data)


def test_state_dict_format_is_torchs():
    params = [nn.Parameter(np.ones((2, 2))), nn.Parameter(np.ones(3))]
    twins = [torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64)),
             torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    ours, theirs = optim.Adam(params, lr=0.1), torch.optim.Adam(twins, lr=0.1)
    params[0].grad = np.ones((2, 2))
    twins[0].grad = torch.ones(2, 2, dtype=torch.float64)
    ours.step()
    theirs.step()
    state, expected = ours.state_dict(), theirs.state_dict()
    assert list(state["state"]) == list(expected["state"]) == [0]  # a parameter without a gradient has no state
    assert set(state["state"][0]) == set(expected["state"][0])
    assert state["param_groups"][0]["params"] == expected["param_groups"][0]["params"] == [0, 1]
    assert set(state["param_groups"][0]) <= set(expected["param_groups"][0])
    for key in ("exp_avg", "exp_avg_sq"):
        assert isinstance(state["state"][0][key], np.ndarray)
        assert_close(state["state"][0][key], expected["state"][0][key], np.float64, key)


def test_state_dict_is_not_changed_by_later_steps():
    p = nn.Parameter(np.ones(3))
    optimizer = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(3)
    optimizer.step()
    state = optimizer.state_dict()
    optimizer.step()
    optimizer.param_groups[0]["lr"] = 0.5
    np.testing.assert_array_equal(state["state"][0]["momentum_buffer"], np.ones(3))
    assert state["param_groups"][0]["lr"] == 0.1


def test_load_state_dict_rejects_other_layouts():
    state = optim.SGD([nn.Parameter(np.ones(2))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="SGD.load_state_dict: parameter group 0 has 1 parameters in the state "
                                         "dict, 2 here"):
        optim.SGD([nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))], lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="the state dict has 1 parameter groups, this optimizer 2"):
        optim.SGD([{"params": [nn.Parameter(np.ones(2))]}, {"params": [nn.Parameter(np.ones(2))]}],
                  lr=0.1).load_state_dict(state)

# Every optimizer with weight decay, which would move a parameter even with a zero gradient.
DECAYING = [
    lambda params: optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1),
    lambda params: optim.Adam(params, lr=0.1, weight_decay=0.1),
    lambda params: optim.AdamW(params, lr=0.1, weight_decay=0.1, amsgrad=True),
    lambda params: optim.RMSprop(params, lr=0.1, weight_decay=0.1, momentum=0.5, centered=True),
]
DECAYING_IDS = ["SGD", "Adam", "AdamW", "RMSprop"]


@pytest.mark.parametrize("make", DECAYING, ids=DECAYING_IDS)
def test_parameters_without_gradient_are_skipped(make):
    used, unused = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    optimizer = make([used, unused])
    used.grad = np.ones(2)
    optimizer.step()
    optimizer.step()
    np.testing.assert_array_equal(unused.data, np.ones(2))  # not even weight decay touches it
    assert unused not in optimizer.state and not np.array_equal(used.data, np.ones(2))


@pytest.mark.parametrize("make", DECAYING, ids=DECAYING_IDS)
def test_frozen_layer_is_unchanged_while_the_head_trains(make, rng):
    tinycnn.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    net[0].requires_grad_(False)
    frozen = {key: value for key, value in net.state_dict().items() if key.startswith("0.")}
    head = net[3].weight.data.copy()
    optimizer = make(net.parameters())
    x = tinycnn.tensor(rng.normal(size=(4, 1, 4, 4)).astype(np.float32))
    target = tinycnn.Tensor(np.array([0, 1, 2, 1]))
    for _ in range(3):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(net(x), target).backward()
        optimizer.step()
    for key, value in frozen.items():
        np.testing.assert_array_equal(net.state_dict()[key], value, err_msg=key)
    assert not np.array_equal(net[3].weight.data, head)


def test_zero_grad():
    p = nn.Parameter(np.ones(2))
    optimizer = optim.SGD([p], lr=0.1)
    p.grad = np.ones(2)
    optimizer.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, np.zeros(2))
    optimizer.zero_grad()
    assert p.grad is None


def test_param_groups_have_their_own_hyper_parameters():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    optimizer = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]
    assert optimizer.param_groups[1]["momentum"] == 0.9
    a.grad, b.grad = np.ones(2), np.ones(2)
    optimizer.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.5)


def test_step_with_closure_returns_the_loss():
    p = nn.Parameter(np.array([2.0]))
    optimizer = optim.SGD([p], lr=0.25)

    def closure():
        optimizer.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 4.0 and p.data[0] == 2.0 - 0.25 * 4.0


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), "SGD: invalid lr: expected >= 0, got -0.1"),
    (lambda p: optim.Adam(p, lr=-0.001), "Adam: invalid lr: expected >= 0, got -0.001"),
    (lambda p: optim.AdamW(p, lr=-1.0), "AdamW: invalid lr: expected >= 0, got -1.0"),
    (lambda p: optim.RMSprop(p, lr=-0.01), "RMSprop: invalid lr: expected >= 0, got -0.01"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.9), "SGD: invalid momentum: expected >= 0, got -0.9"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-0.1), "SGD: invalid weight_decay: expected >= 0, got -0.1"),
    (lambda p: optim.Adam(p, betas=(-0.1, 0.999)),
     r"Adam: invalid beta parameter at index 0: expected 0 <= beta < 1, got -0.1"),
    (lambda p: optim.AdamW(p, betas=(1.0, 0.999)), "AdamW: invalid beta parameter at index 0: .*got 1.0"),
    (lambda p: optim.AdamW(p, betas=(0.9, -0.5)), "AdamW: invalid beta parameter at index 1: .*got -0.5"),
    (lambda p: optim.RMSprop(p, alpha=-0.99), "RMSprop: invalid alpha: expected >= 0, got -0.99"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "SGD: Nesterov momentum requires a momentum > 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "Adam: invalid beta parameter at index 1"),
    (lambda p: optim.AdamW(p, eps=-1.0), "AdamW: invalid eps"),
    (lambda p: optim.RMSprop(p, momentum=-0.5), "RMSprop: invalid momentum"),
    (lambda p: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda p: optim.SGD([{"params": p}, {"params": p}], lr=0.1), "more than one parameter group"),
])
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(np.ones(2))])


def test_non_tensor_parameters_raise_type_error():
    with pytest.raises(TypeError, match="SGD: can only optimize Tensors, got ndarray"):
        optim.SGD([np.ones(2)], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(nn.Parameter(np.ones(2)), lr=0.1)


def test_defaults_equal_torchs():
    p = [nn.Parameter(np.ones(2))]
    t = [torch.nn.Parameter(torch.ones(2))]
    for name in ("SGD", "Adam", "AdamW", "RMSprop"):
        ours = getattr(optim, name)(p).param_groups[0]
        theirs = getattr(torch.optim, name)(t).param_groups[0]
        for key, value in ours.items():
            if key != "params":
                assert theirs[key] == value, f"{name} {key}"
