"""Weight initialisation with torch.nn.init's names and formulas, in place on a Parameter's data.

Each function fills `tensor` (a Parameter, Tensor or array) with values drawn from
`tinycnn.random.generator()`, so `tinycnn.manual_seed` makes initialisation reproducible, and
returns it. The draws are made in NumPy and copied to the tensor's device and dtype.

The scale rules, for a weight of shape (out, in, *kernel):
    fan_in = in * prod(kernel), fan_out = out * prod(kernel)
    kaiming (He et al., 2015):   std = gain / sqrt(fan)          keeps activations' variance through ReLUs
    xavier (Glorot & Bengio, 2010): std = gain * sqrt(2 / (fan_in + fan_out))
and a uniform distribution U(-bound, bound) with bound = sqrt(3) * std has that standard deviation.
"""
import math

import numpy

from tinycnn import backend, random
from tinycnn.autograd import Tensor

__all__ = [
    "calculate_gain", "constant_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_",
    "trunc_normal_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_",
]


def _data(tensor):
    """The array behind a Parameter/Tensor, or the array itself."""
    array = tensor.data if isinstance(tensor, Tensor) else tensor
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise TypeError(f"init: expected a Tensor, Parameter or array, got {type(tensor).__name__}")
    return array


def _fill(tensor, values):
    """Copy NumPy `values` into the tensor's array, in place, keeping its dtype and device."""
    array = _data(tensor)
    xp = backend.get_array_module(array)
    array[...] = xp.asarray(values, dtype=array.dtype)
    return tensor


def calculate_gain(nonlinearity, param=None):
    """The factor that keeps the variance of activations constant through `nonlinearity`.

    linear, conv and sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu with negative slope a:
    sqrt(2 / (1 + a^2)) (a defaults to 0.01); selu: 3/4.
    """
    linear_functions = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d")
    if nonlinearity in linear_functions or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel), as torch computes them."""
    shape = tuple(_data(tensor).shape)
    if len(shape) < 2:
        raise ValueError(f"init: fan in and fan out can not be computed for a tensor with fewer than 2 "
                         f"dimensions, got shape {shape}")
    receptive_field_size = math.prod(shape[2:])
    fan_in = shape[1] * receptive_field_size
    fan_out = shape[0] * receptive_field_size
    return fan_in, fan_out


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b)."""
    return _fill(tensor, random.generator().uniform(a, b, size=_data(tensor).shape))


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std^2)."""
    return _fill(tensor, random.generator().normal(mean, std, size=_data(tensor).shape))


def constant_(tensor, val):
    _data(tensor)[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Fill with N(mean, std^2) truncated to [a, b] (a and b are absolute values, as in torch).

    torch draws by inverting the normal CDF; here out-of-range draws are redrawn (rejection), which
    samples the same truncated distribution without needing erfinv.
    """
    if not a < b:
        raise ValueError(f"trunc_normal_: expected a < b, got a={a}, b={b}")

    def norm_cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    accept = norm_cdf((b - mean) / std) - norm_cdf((a - mean) / std)  # probability a draw lands in [a, b]
    if accept < 1e-6:
        raise ValueError(f"trunc_normal_: [a, b] = [{a}, {b}] holds a probability of only {accept:.2e} under "
                         f"N({mean}, {std}^2); choose bounds nearer the mean")
    generator = random.generator()
    shape = _data(tensor).shape
    values = numpy.empty(math.prod(shape))
    filled = 0
    while filled < values.size:
        missing = values.size - filled
        draws = generator.normal(mean, std, size=int(missing / accept * 1.1) + 16)
        draws = draws[(draws >= a) & (draws <= b)][:missing]
        values[filled:filled + draws.size] = draws
        filled += draws.size
    return _fill(tensor, values.reshape(shape))


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """Fill with U(-bound, bound), bound = gain * sqrt(3 / fan) (He et al., 2015).

    `a` is the negative slope of the leaky ReLU that follows. Conv2d and Linear use a=sqrt(5),
    which gives bound = 1 / sqrt(fan_in), PyTorch's default layer initialisation.
    """
    if 0 in _data(tensor).shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def _default_layer_init_(weight, bias=None):
    """PyTorch's default initialisation of Linear and Conv2d, shared by their reset_parameters().

    weight: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias: the same
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so a unit's output starts at the same scale whatever its
    fan-in; a layer without inputs (fan_in 0) gets a zero bias.
    """
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = _calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(bias, -bound, bound)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """Fill with N(0, std^2), std = gain / sqrt(fan) (He et al., 2015)."""
    if 0 in _data(tensor).shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    return normal_(tensor, 0.0, std)


def xavier_uniform_(tensor, gain=1.0):
    """Fill with U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    """Fill with N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)
