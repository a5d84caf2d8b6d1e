"""Comparing a tinycnn network with its PyTorch reference (a torchvision/timm model or a twin
written from the paper): randomised BatchNorm, eval logits in float32, and one float64 training
step (outputs, every parameter gradient, the input gradient, BatchNorm's running statistics).

Shared by tests/test_models_torchvision.py and tests/test_models_twins.py.
"""
import numpy as np
import torch

import tinycnn
import tinycnn.models as models
from tinycnn import nn


def randomize_batchnorm(module, seed=0):
    """Running statistics and affine parameters away from their 0/1 initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return module


def assert_logits_close(actual, expected, rtol=1e-3):
    """float32 logits: relative 1e-3, and 1e-4 of the largest logit for those near zero."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-4 * scale)


def compare_eval_logits(ours, theirs, x, tmp_path, device="cpu"):
    """Save `theirs`' state_dict as a .pth with torch, read it with models.load_weights (strict),
    then compare eval-mode float32 logits on the float32 batch `x`."""
    theirs.eval()
    path = tmp_path / "reference.pth"
    torch.save(theirs.state_dict(), path)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    models.load_weights(ours, path)
    ours.eval().to(device)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    given = tinycnn.tensor(x, device=device)
    with tinycnn.no_grad():  # the zoo's ReLUs and residual adds write in place here
        actual = ours(given).numpy()
    np.testing.assert_array_equal(given.numpy(), x, err_msg="the forward overwrote the input it was given")
    assert actual.shape == expected.shape
    assert_logits_close(actual, expected)


def dropout_off(ours, theirs):
    """p = 0 in every Dropout module of both (their random masks cannot be made equal)."""
    for m in ours.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for m in theirs.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def outputs_as_list(output):
    """[logits, aux...] from ours (ModelOutputs(logits, (aux1, aux2))), torchvision's
    GoogLeNetOutputs(logits, aux_logits2, aux_logits1) and InceptionOutputs, a twin's tuple, or
    plain logits."""
    if isinstance(output, models.ModelOutputs):
        return [output.logits, *output.aux_logits]
    if hasattr(output, "aux_logits1"):
        return [output.logits, output.aux_logits1, output.aux_logits2]
    if hasattr(output, "aux_logits"):
        return [output.logits, output.aux_logits]
    if isinstance(output, tuple):  # a twin's (logits, (aux1, aux2))
        return [output[0], *output[1]]
    return [output]


def compare_training_step(ours, theirs, x, seed=1):
    """One forward/backward in train mode, float64, of L = sum_k w_k * y_k over every output
    (fixed random w): parameter and input gradients, and the running statistics, must agree."""
    ours.load_state_dict(theirs.state_dict())
    ours.double().train()
    theirs.double().train()
    theirs_x = torch.from_numpy(x).requires_grad_(True)
    our_x = tinycnn.tensor(x, requires_grad=True)
    their_outputs = outputs_as_list(theirs(theirs_x))
    our_outputs = outputs_as_list(ours(our_x))
    assert len(our_outputs) == len(their_outputs)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(tuple(y.shape)) for y in their_outputs]
    sum(((y * torch.from_numpy(w)).sum() for y, w in zip(their_outputs, weights))).backward()
    our_loss = None
    for y, w in zip(our_outputs, weights):
        term = (y * tinycnn.tensor(w)).sum()
        our_loss = term if our_loss is None else our_loss + term
    our_loss.backward()

    for ours_y, their_y in zip(our_outputs, their_outputs):
        assert_float64_close(ours_y.numpy(), their_y.detach().numpy(), "output")
    their_parameters = dict(theirs.named_parameters())
    our_parameters = dict(ours.named_parameters())
    assert sorted(our_parameters) == sorted(their_parameters)
    for key, parameter in our_parameters.items():
        assert_float64_close(parameter.grad, their_parameters[key].grad.numpy(), f"gradient of {key}")
    assert_float64_close(our_x.grad, theirs_x.grad.numpy(), "input gradient")
    their_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert_float64_close(value, their_state[key].numpy(), key)


def assert_float64_close(actual, expected, what):
    """Equal to float64 round-off, amplified where a train-mode BatchNorm normalises only a few
    values (2 samples x 1 x 1 in the last stage of an Inception at 75x75): relative 1e-6, and an
    absolute 1e-7 of the array's largest entry (a conv bias before a BatchNorm has a gradient that is
    exactly 0 in exact arithmetic, round-off noise in both frameworks). A wrong layer changes
    entries by the order of the largest one."""
    rtol = 1e-6
    scale = max(float(expected.max()), -float(expected.min())) if expected.size else 0.0
    atol = 1e-7 * scale + 1e-12
    if actual.shape == expected.shape and _close_in_chunks(actual.reshape(-1), expected.reshape(-1), rtol, atol):
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)  # writes the message


def _close_in_chunks(actual, expected, rtol, atol, chunk=1 << 20):
    """|actual - expected| <= atol + rtol |expected| everywhere (False on NaN), a million entries at
    a time: VGG's fc6 gradient has 10^8, and whole-array temporaries cost more than the check."""
    for start in range(0, expected.size, chunk):
        a, e = actual[start:start + chunk], expected[start:start + chunk]
        if not (np.abs(a - e) <= atol + rtol * np.abs(e)).all():
            return False
    return True
