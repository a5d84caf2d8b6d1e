"""Empty batches and wrong dtypes at the op boundary, as PyTorch has them.

- N=0 goes through every op of tinycnn.functional, forward and backward, with PyTorch's output
  and gradient shapes (and values: empty, zeros, or NaN for a mean over nothing), and through every
  network of the zoo.
- An integer or float16 input to a floating-point op raises a TypeError naming the op (never a
  Numba traceback, never silent zeros); a float64 batch into a float32 network says to call
  .double() or convert the input.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import tinycnn
import tinycnn.functional as F
import tinycnn.models as models
from tinycnn import nn
from tinycnn.functional import activation, basic, conv, loss, normalization, pooling
from tinycnn.models import ModelOutputs

from models_support import skipped_init
from test_models import SMALL_KWARGS, small_input

# The package attribute `dropout` is the function, so its module's one op is named here.
PUBLIC_OPS = sorted(set(activation.__all__ + basic.__all__ + conv.__all__ + ["dropout"] + loss.__all__
                        + normalization.__all__ + pooling.__all__))


def labels(n):
    return np.zeros(n, dtype=np.int64)


# op -> (input shapes, integer labels or None, tinycnn call, torch call). The first input is the
# batch; every floating input requires grad. Hyper-parameters chosen to exercise padding, groups
# and windows, so an empty batch meets the same code as a full one.
CASES = {
    "conv2d": ([(0, 4, 5, 5), (6, 2, 3, 3), (6,)], None,
               lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
               lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1, groups=2)),
    "pad": ([(0, 3, 5, 5)], None, lambda x: F.pad(x, (1, 2, 0, 3)), lambda x: TF.pad(x, (1, 2, 0, 3))),
    "max_pool2d": ([(0, 3, 5, 5)], None, lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   lambda x: TF.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "avg_pool2d": ([(0, 3, 5, 5)], None, lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: TF.avg_pool2d(x, 3, 2, 1)),
    "adaptive_avg_pool2d": ([(0, 3, 5, 7)], None, lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
                            lambda x: TF.adaptive_avg_pool2d(x, (2, 3))),
    "global_avg_pool2d": ([(0, 3, 5, 5)], None, lambda x: F.global_avg_pool2d(x),
                          lambda x: TF.adaptive_avg_pool2d(x, 1)),
    "batch_norm": ([(0, 3, 4, 4), (3,), (3,)], None,
                   lambda x, g, b: F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), g, b,
                                                training=True),
                   lambda x, g, b: TF.batch_norm(x, torch.zeros(3), torch.ones(3), g, b, training=True)),
    "batch_norm_relu": ([(0, 3, 4, 4), (3,), (3,), (0, 3, 4, 4)], None,
                        lambda x, g, b, r: F.batch_norm_relu(x, np.zeros(3, np.float32), np.ones(3, np.float32),
                                                             g, b, r),
                        lambda x, g, b, r: TF.relu(TF.batch_norm(x, torch.zeros(3), torch.ones(3), g, b,
                                                                 training=True) + r)),
    "local_response_norm": ([(0, 6, 3, 3)], None, lambda x: F.local_response_norm(x, 3),
                            lambda x: TF.local_response_norm(x, 3)),
    "linear": ([(0, 7), (4, 7), (4,)], None, F.linear, TF.linear),
    "concat": ([(0, 2, 3), (0, 1, 3)], None, lambda a, b: F.concat([a, b], axis=1),
               lambda a, b: torch.cat([a, b], 1)),
    "cat": ([(0, 2, 3), (0, 2, 3)], None, lambda a, b: F.cat([a, b]), lambda a, b: torch.cat([a, b])),
    "add": ([(0, 3), (3,)], None, lambda a, b: F.add(a, b), lambda a, b: a + b),
    "flatten": ([(0, 3, 2, 2)], None, F.flatten, lambda x: torch.flatten(x, 1)),
    "relu": ([(0, 3)], None, F.relu, TF.relu),
    "leaky_relu": ([(0, 3)], None, F.leaky_relu, TF.leaky_relu),
    "sigmoid": ([(0, 3)], None, F.sigmoid, torch.sigmoid),
    "tanh": ([(0, 3)], None, F.tanh, torch.tanh),
    "softmax": ([(0, 3)], None, lambda x: F.softmax(x, 1), lambda x: TF.softmax(x, 1)),
    "log_softmax": ([(0, 3)], None, lambda x: F.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1)),
    "dropout": ([(0, 3)], None, lambda x: F.dropout(x, 0.5), lambda x: TF.dropout(x, 0.5)),
    "cross_entropy": ([(0, 3)], labels(0), F.cross_entropy, TF.cross_entropy),  # a mean over nothing: NaN
    "nll_loss": ([(0, 3, 2)], np.zeros((0, 2), np.int64), lambda x, t: F.nll_loss(x, t, reduction="sum"),
                 lambda x, t: TF.nll_loss(x, t, reduction="sum")),
    "mse_loss": ([(0, 3), (0, 3)], None, F.mse_loss, TF.mse_loss),
}


def test_every_public_op_has_an_empty_batch_case():
    assert sorted(CASES) == PUBLIC_OPS


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns of its 0 / 0 in a mean over nothing
@pytest.mark.parametrize("op", sorted(CASES))
def test_an_empty_batch_goes_through_forward_and_backward_as_in_pytorch(op):
    shapes, target, ours, theirs = CASES[op]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    ours_in = [tinycnn.tensor(a, requires_grad=True) for a in arrays]
    theirs_in = [torch.tensor(a, requires_grad=True) for a in arrays]
    extra_ours = [] if target is None else [tinycnn.tensor(target)]
    extra_theirs = [] if target is None else [torch.from_numpy(target)]
    y = ours(*ours_in, *extra_ours)
    expected = theirs(*theirs_in, *extra_theirs)
    assert y.shape == tuple(expected.shape)
    np.testing.assert_allclose(y.numpy(), expected.detach().numpy(), equal_nan=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(gy)
    expected.backward(torch.from_numpy(gy))
    for index, (x, x_theirs) in enumerate(zip(ours_in, theirs_in)):
        assert x.grad is not None and x.grad.shape == tuple(x_theirs.grad.shape), f"{op}: input {index}"
        np.testing.assert_allclose(x.grad, x_theirs.grad.numpy(), equal_nan=True, err_msg=f"{op}: input {index}")


def test_an_empty_batch_leaves_batch_norms_running_statistics_as_pytorch():
    ours, theirs = nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    ours(tinycnn.tensor(np.zeros((0, 3, 2, 2), np.float32)))
    theirs(torch.zeros(0, 3, 2, 2))
    np.testing.assert_array_equal(ours.running_mean, theirs.running_mean.numpy())
    np.testing.assert_array_equal(ours.running_var, theirs.running_var.numpy())


@pytest.mark.parametrize("name", models.list())
def test_an_empty_batch_goes_through_every_network(name):
    with skipped_init():  # an empty batch reads no weight: skip drawing them
        model = models.create(name, **SMALL_KWARGS.get(name, dict(num_classes=3)))
    shape = (0,) + small_input(name)[1:]
    x = tinycnn.tensor(np.zeros(shape, np.float32), requires_grad=True)
    output = model(x)  # training mode: BatchNorm sees the empty batch too
    logits = output.logits if isinstance(output, ModelOutputs) else output
    assert logits.shape == (0, 10 if name == "lenet5" else 3)
    logits.sum().backward()
    assert x.grad.shape == shape
    for parameter_name, parameter in model.named_parameters():
        if parameter.grad is not None:  # an empty batch contributes nothing to any gradient
            assert parameter.grad.shape == parameter.shape and not parameter.grad.any(), parameter_name
    model.eval()
    with tinycnn.no_grad():
        assert model(tinycnn.tensor(np.zeros(shape, np.float32))).shape == (0, 10 if name == "lenet5" else 3)


# op -> a call of the op on input x (weights float32).
FLOATING_OPS = {
    "conv2d": lambda x: F.conv2d(x, tinycnn.tensor(np.ones((2, 3, 3, 3), np.float32))),
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "adaptive_avg_pool2d": lambda x: F.adaptive_avg_pool2d(x, 2),
    "global_avg_pool2d": F.global_avg_pool2d,
    "batch_norm": lambda x: F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32)),
    "batch_norm_relu": lambda x: F.batch_norm_relu(x, None, None),
    "local_response_norm": lambda x: F.local_response_norm(x, 3),
    "linear": lambda x: F.linear(x, tinycnn.tensor(np.ones((2, 4), np.float32))),
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax": lambda x: F.softmax(x, 1),
    "log_softmax": lambda x: F.log_softmax(x, 1),
    "dropout": F.dropout,
    "cross_entropy": lambda x: F.cross_entropy(x.reshape(2, -1), tinycnn.tensor(labels(2))),
    "nll_loss": lambda x: F.nll_loss(x.reshape(2, -1), tinycnn.tensor(labels(2))),
    "mse_loss": lambda x: F.mse_loss(x, x),
}


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("op", sorted(FLOATING_OPS))
def test_an_integer_input_to_a_floating_point_op_raises_naming_the_op(op, dtype):
    x = tinycnn.tensor(np.ones((2, 3, 4, 4) if op != "linear" else (2, 4), dtype=dtype))
    with pytest.raises(TypeError, match=rf"^{op}: expected a floating-point input \(float32 or float64\), "
                                        rf"got dtype {np.dtype(dtype)}"):
        FLOATING_OPS[op](x)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_int64_raises_instead_of_returning_zeros(training):
    x = tinycnn.tensor(np.arange(24, dtype=np.int64).reshape(2, 3, 2, 2))
    with pytest.raises(TypeError, match="batch_norm: expected a floating-point input"):
        F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), training=training)
    with pytest.raises(TypeError, match="batch_norm: expected a floating-point input"):
        nn.BatchNorm2d(3)(x)


@pytest.mark.parametrize("op", sorted(FLOATING_OPS))
def test_float16_gets_a_clear_type_error_at_the_op(op):
    x = tinycnn.tensor(np.ones((2, 3, 4, 4) if op != "linear" else (2, 4), dtype=np.float16))
    with pytest.raises(TypeError, match=rf"^{op}: input has dtype float16, which tinycnn does not compute in") as info:
        FLOATING_OPS[op](x)
    # Raised at the op's boundary (tinycnn/functional/_checks.py), not from inside a kernel.
    assert info.traceback[-1].path.name == "_checks.py"


def test_float16_into_a_network_names_the_first_layer():
    with pytest.raises(TypeError, match="conv2d: input has dtype float16"):
        models.lenet()(tinycnn.tensor(np.ones((1, 1, 28, 28), np.float16)))


@pytest.mark.parametrize("network, shape, op", [
    (lambda: models.lenet(), (2, 1, 28, 28), "conv2d"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (2, 3, 2, 2), "linear"),
    (lambda: nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)), (3, 4), "batch_norm"),
], ids=["lenet_conv2d", "mlp_linear", "batch_norm_first"])
def test_a_float64_batch_into_a_float32_network_says_to_call_double_or_convert(network, shape, op):
    model = network()
    x = np.random.default_rng(0).standard_normal(shape)  # NumPy's default: float64
    with pytest.raises(TypeError, match=rf"^{op}: input and weight must have the same dtype, got float64 and "
                                        r"float32; call model\.double\(\).*convert the input with \.float\(\)"):
        model(tinycnn.tensor(x))
    assert model(tinycnn.tensor(x.astype(np.float32))).dtype == np.float32  # converting the input works
    assert model.double()(tinycnn.tensor(x)).dtype == np.float64  # and so does a float64 model


def test_mixed_dtypes_inside_an_op_name_both_arrays():
    x = tinycnn.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="linear: input and bias must have the same dtype, got float32 and float64"):
        F.linear(x, tinycnn.tensor(np.ones((2, 3), np.float32)), tinycnn.tensor(np.ones(2)))
    with pytest.raises(TypeError, match="mse_loss: input and target must have the same dtype, got float32 and float64"):
        F.mse_loss(x, tinycnn.tensor(np.ones((2, 3))))
