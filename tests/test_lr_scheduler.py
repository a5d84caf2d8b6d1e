"""Learning-rate schedulers: 30 steps of learning rates equal torch's, and a resume from
state_dict continues identically."""
import math
import pickle

import numpy as np
import pytest
import torch

from tinycnn import nn, optim

STEPS = 30
LRS = (0.5, 0.02)  # two param groups with different learning rates


class Decay:
    """A callable object: LambdaLR saves its attributes in state_dict (a lambda it cannot)."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return self.rate ** epoch


# name -> factory(lr_scheduler module, optimizer) -> scheduler; the same for tinycnn and torch.
SCHEDULERS = {
    "step": lambda m, o: m.StepLR(o, step_size=4),
    "step_gamma": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "multistep": lambda m, o: m.MultiStepLR(o, milestones=[3, 8, 8, 20], gamma=0.5),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=30),
    "cosine_eta_min_past_t_max": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
    "linear_warmup": lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=6),
    "linear_decay": lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=25),
    "linear_default": lambda m, o: m.LinearLR(o),
    "lambda": lambda m, o: m.LambdaLR(o, lambda epoch: 1 / (1 + epoch)),
    "lambda_per_group": lambda m, o: m.LambdaLR(o, [Decay(0.9), lambda epoch: epoch % 4 + 1]),
    "warmup_cosine": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.01, total_iters=5), m.CosineAnnealingLR(o, T_max=25, eta_min=1e-4)],
        milestones=[5]),
    "warmup_step_multistep": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.5, total_iters=3), m.StepLR(o, step_size=5, gamma=0.3),
            m.MultiStepLR(o, milestones=[2, 4])], milestones=[4, 15]),
    "constant_then_lambda": lambda m, o: m.SequentialLR(
        o, [m.LambdaLR(o, lambda epoch: 0.1), m.CosineAnnealingLR(o, T_max=10)], milestones=[8]),
}


def groups(params):
    return [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]


def ours(name):
    params = [nn.Parameter(np.zeros(2)) for _ in LRS]
    optimizer = optim.SGD(groups(params), lr=1.0, momentum=0.9)
    return params, optimizer, SCHEDULERS[name](optim.lr_scheduler, optimizer)


def train(params, optimizer, scheduler, steps):
    """The learning rates of each step, with the optimizer stepped before the scheduler as torch asks."""
    history = []
    for _ in range(steps):
        history.append(list(scheduler.get_last_lr()))
        assert [group["lr"] for group in optimizer.param_groups] == history[-1]
        for p in params:
            p.grad = np.ones(2)
        optimizer.step()
        scheduler.step()
    return history


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_learning_rates_match_torch(name):
    torch_params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    torch_optimizer = torch.optim.SGD(groups(torch_params), lr=1.0, momentum=0.9)
    torch_scheduler = SCHEDULERS[name](torch.optim.lr_scheduler, torch_optimizer)
    expected = []
    for _ in range(STEPS):
        expected.append(torch_scheduler.get_last_lr())
        for p in torch_params:
            p.grad = torch.ones(2)
        torch_optimizer.step()
        torch_scheduler.step()

    history = train(*ours(name), STEPS)
    np.testing.assert_allclose(history, expected, rtol=0, atol=1e-12, err_msg=name)


def test_two_schedulers_on_one_optimizer_compose_as_torchs():
    """The recursive rules let a StepLR and a LinearLR warm-up both act on one optimizer."""
    def chain(m, o):
        first, second = m.StepLR(o, step_size=5, gamma=0.5), m.LinearLR(o, start_factor=0.2, total_iters=4)

        class Both:  # what a training loop that steps two schedulers does
            def step(self):
                first.step()
                second.step()

            def get_last_lr(self):
                return second.get_last_lr()
        return Both()

    torch_params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    torch_optimizer = torch.optim.SGD(groups(torch_params), lr=1.0)
    torch_scheduler = chain(torch.optim.lr_scheduler, torch_optimizer)
    expected = []
    for _ in range(20):
        expected.append([group["lr"] for group in torch_optimizer.param_groups])
        torch_optimizer.step()
        torch_scheduler.step()

    params = [nn.Parameter(np.zeros(2)) for _ in LRS]
    optimizer = optim.SGD(groups(params), lr=1.0)
    np.testing.assert_allclose(train(params, optimizer, chain(optim.lr_scheduler, optimizer), 20), expected,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, formula", [
    ("step_gamma", lambda lr, e: lr * 0.5 ** (e // 3)),
    ("cosine_eta_min_past_t_max", lambda lr, e: 1e-3 + (lr - 1e-3) * (1 + math.cos(math.pi * e / 7)) / 2),
    ("linear_warmup", lambda lr, e: lr * (0.1 + 0.9 * min(e, 6) / 6)),
    ("warmup_cosine", lambda lr, e: lr * (0.01 + 0.99 * e / 5) if e < 5
     else 1e-4 + (lr - 1e-4) * (1 + math.cos(math.pi * (e - 5) / 25)) / 2),
])
def test_learning_rates_equal_the_closed_forms(name, formula):
    """Independent of torch: the formulas in the schedulers' docstrings, which the recursive rules
    reach up to round-off."""
    history = train(*ours(name), STEPS)
    expected = [[formula(lr, epoch) for lr in LRS] for epoch in range(STEPS)]
    np.testing.assert_allclose(history, expected, rtol=1e-12, atol=0, err_msg=name)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_resume_from_state_dict_continues_identically(name):
    params, optimizer, scheduler = ours(name)
    train(params, optimizer, scheduler, 12)
    checkpoint = pickle.dumps((optimizer.state_dict(), scheduler.state_dict(), [p.data.copy() for p in params]))
    uninterrupted = train(params, optimizer, scheduler, STEPS - 12)

    # Resume as a training script does: rebuild, load the scheduler, then the optimizer.
    resumed_params, resumed_optimizer, resumed_scheduler = ours(name)
    optimizer_state, scheduler_state, data = pickle.loads(checkpoint)
    resumed_scheduler.load_state_dict(scheduler_state)
    resumed_optimizer.load_state_dict(optimizer_state)
    for p, saved in zip(resumed_params, data):
        p.data[...] = saved
    assert train(resumed_params, resumed_optimizer, resumed_scheduler, STEPS - 12) == uninterrupted
    for p, q in zip(params, resumed_params):
        np.testing.assert_array_equal(q.data, p.data)


def test_lambda_lr_saves_callable_objects_but_not_functions():
    params = [nn.Parameter(np.zeros(2)) for _ in LRS]
    optimizer = optim.SGD(groups(params))
    decay = Decay(0.9)
    scheduler = optim.lr_scheduler.LambdaLR(optimizer, [decay, lambda epoch: 1.0])
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"rate": 0.9}, None]
    decay.rate = 0.5
    scheduler.load_state_dict(state)
    assert decay.rate == 0.9


def test_scheduler_exported_from_optim():
    assert optim.CosineAnnealingLR is optim.lr_scheduler.CosineAnnealingLR
    assert optim.SequentialLR is optim.lr_scheduler.SequentialLR


@pytest.mark.parametrize("make, error, message", [
    (lambda o: optim.lr_scheduler.LinearLR(o, start_factor=0.0), ValueError,
     r"LinearLR: start_factor must be in \(0, 1\]"),
    (lambda o: optim.lr_scheduler.LinearLR(o, end_factor=1.5), ValueError, r"LinearLR: end_factor must be in \[0, 1\]"),
    (lambda o: optim.lr_scheduler.SequentialLR(o, [optim.lr_scheduler.StepLR(o, 2)], milestones=[3]), ValueError,
     "SequentialLR: expected len"),
    (lambda o: optim.lr_scheduler.LambdaLR(o, [lambda e: 1.0]), ValueError, "LambdaLR: expected 2 lr_lambdas"),
    (lambda o: optim.lr_scheduler.StepLR("not an optimizer", 2), TypeError, "StepLR: expected an Optimizer, got str"),
    (lambda o: optim.lr_scheduler.StepLR(o, 2, last_epoch=5), KeyError, "no 'initial_lr'"),
])
def test_bad_arguments(make, error, message):
    params = [nn.Parameter(np.zeros(2)) for _ in LRS]
    with pytest.raises(error, match=message):
        make(optim.SGD(groups(params)))


def test_sequential_lr_rejects_a_scheduler_of_another_optimizer():
    first = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    second = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="scheduler 1 \\(StepLR\\) belongs to another optimizer"):
        schedulers = [optim.lr_scheduler.StepLR(first, 2), optim.lr_scheduler.StepLR(second, 2)]
        optim.lr_scheduler.SequentialLR(first, schedulers, milestones=[3])
