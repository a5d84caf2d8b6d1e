"""dtypes as PyTorch has them: Module.to(dtype) / .double() / .float() / .to(device, dtype),
Tensor.to(dtype), and gradcheck on a non-contiguous leaf."""
import numpy as np
import pytest
import torch

import tinycnn
import tinycnn.nn as nn
import tinycnn.optim as optim


def small_network():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def torch_twin(ours):
    twin = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    twin.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    return twin


@pytest.mark.parametrize("convert", [lambda m: m.double(), lambda m: m.to(np.float64),
                                     lambda m: m.to("cpu", np.float64), lambda m: m.to(dtype="float64")],
                         ids=["double", "to_dtype", "to_device_dtype", "to_keyword"])
def test_module_to_float64_casts_floating_parameters_and_buffers_as_torch(convert):
    ours = small_network()
    theirs = torch_twin(ours).double()
    assert convert(ours) is ours
    for (key, value), (torch_key, torch_value) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert key == torch_key
        assert value.dtype == torch_value.numpy().dtype, key  # num_batches_tracked stays int64
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    y = ours(tinycnn.tensor(x))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_float_converts_back_and_keeps_parameter_identity_for_an_optimizer():
    model = small_network()
    parameters = list(model.parameters())
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    model.double()
    assert [p is q for p, q in zip(parameters, model.parameters())] == [True] * len(parameters)
    assert all(p.dtype == np.float64 for p in parameters)
    before = model[4].weight.data.copy()
    x = tinycnn.tensor(np.random.default_rng(1).standard_normal((2, 2, 4, 4)))
    model(x).sum().backward()
    optimizer.step()  # the optimizer built before .double() updates the model's (converted) weights
    assert not np.array_equal(model[4].weight.data, before)
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    assert model[1].running_var.dtype == np.float32


def test_module_to_rejects_integer_and_unknown_dtypes():
    with pytest.raises(TypeError, match="only floating-point dtypes"):
        small_network().to(np.int32)
    with pytest.raises(TypeError, match="expected a device"):
        small_network().to("tpu")


def test_tensor_to_dtype_is_a_differentiable_cast():
    x = tinycnn.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to(np.float64)
    assert y.dtype == np.float64 and x.to("cpu") is x and x.to(np.float32) is x
    assert x.to("cpu", np.float64).dtype == np.float64
    (y * y).sum().backward()  # d/dx sum x^2 = 2x, returned in x's own dtype
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, 2 * x.data)
    assert x.double().dtype == np.float64 and x.double().float().dtype == np.float32


def test_gradcheck_perturbs_a_non_contiguous_leaf():
    # A transposed array is a view that reshape(-1) cannot flatten without copying: before the fix
    # gradcheck perturbed that copy, measured a numeric gradient of 0 and reported a failure.
    base = np.random.default_rng(0).standard_normal((3, 4))
    x = tinycnn.Tensor(base.T, requires_grad=True)
    assert not x.data.flags.c_contiguous
    assert tinycnn.gradcheck(lambda t: (t * t).sum(axis=0), [x])
    sliced = tinycnn.Tensor(np.random.default_rng(1).standard_normal((4, 6))[:, ::2], requires_grad=True)
    assert tinycnn.gradcheck(lambda t: t * t * t, [sliced])
