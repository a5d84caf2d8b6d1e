"""Runs of layers that inference computes as one kernel call: conv -> BatchNorm -> ReLU, the
commonest run in the model zoo, and concat -> BatchNorm -> ReLU, a DenseNet layer's first steps.

    out = conv_bn_relu(self.conv1, self.bn1, self.relu, x)    # relu(bn1(conv1(x)))
    out = conv_bn_relu(self.conv2, self.bn2, None, out)       # bn2(conv2(out))
    out = conv_bn_relu(self.conv3, self.bn3, self.relu, out, residual=identity)
                                                              # relu(bn3(conv3(out)) + identity)
    z = concat_bn_relu(self.norm1, self.relu1, features)      # relu1(norm1(concat(features)))

In evaluation mode BatchNorm is a fixed affine map per channel, y = (z - mean) * inv_std * gamma +
beta with its running statistics, and ReLU is max(y, 0). Run as separate layers, each is a pass
over the whole output in memory: ResNet-50's inference at batch 8 spent 44 ms in BatchNorm, 15 in
ReLU and 11 in its residual adds beside 283 in its convolutions; DenseNet-121's 70 in BatchNorm,
25 in ReLU and 32 in concatenations beside 218. Fused, the conv kernel applies them to each chunk
of its output right after computing it, while it is still in the core's cache
(tinycnn.kernels.conv2d_batch_norm_relu_inference), and a concatenation is normalised as it is
copied (tinycnn.kernels.concat_batch_norm_relu_inference). The arithmetic is the layers' own, in
their order, so the output is the same to the last bit (tests/test_fused.py); the weights are not
touched (no BatchNorm folded into them, which would change the rounding and would need redoing
whenever the weights or the statistics change).

A fused call is made only when nothing could tell the difference; otherwise the modules run one
after the other, as a reader of the model expects:
- no graph is recorded (under tinycnn.no_grad(), or nothing requires a gradient): the fused calls
  have no backward, and training needs the intermediate values for BatchNorm's and ReLU's;
- the BatchNorm is in evaluation mode and keeps running statistics (else it uses the batch's);
- the modules are plain Conv2d, BatchNorm2d and ReLU (a subclass may change forward) and none has a
  hook: a hook would see, or replace, the intermediate values;
- no tinycnn.trace(), no config.check_nan (it checks every op's input) and no config.shape_only
  (a summary's shape-only run, which the layers answer without computing);
- the inputs are Tensors whose shapes and dtypes agree (any error then comes from the layers
  themselves, with their messages).
"""
from tinycnn import autograd, backend, config, kernels
from tinycnn import functional as F
from tinycnn.autograd import Tensor
from tinycnn.functional.conv import Conv2d as Conv2dFunction
from tinycnn.functional.normalization import inference_statistics
from tinycnn.nn.activation import ReLU
from tinycnn.nn.conv import Conv2d
from tinycnn.nn.normalization import BatchNorm2d

__all__ = ["concat_bn_relu", "conv_bn_relu", "fusable"]


def conv_bn_relu(conv, bn, relu, x, residual=None):
    """relu(bn(conv(x)) + residual): the modules conv, bn and relu (None for no ReLU) called in
    turn, and the residual (None for none) added in place before the ReLU, as a ResNet block adds
    its shortcut; as one kernel call where `fusable` says so."""
    if fusable(conv, bn, relu, [x] + ([] if residual is None else [residual])):
        y = _conv_bn_relu_inference(conv, bn, relu is not None, x, residual)
        if y is not None:
            return y
    y = bn(conv(x))
    if residual is not None:
        y = F.add(y, residual, inplace=True)
    return y if relu is None else relu(y)


def concat_bn_relu(bn, relu, features):
    """relu(bn(F.concat(features, axis=1))), relu a ReLU module or None; as one kernel call, which
    never makes the plain concatenation, where `fusable` says so."""
    features = list(features)
    if fusable(None, bn, relu, features) and _same_but_channels(features, bn.num_features):
        mean, inv_std = inference_statistics(bn.running_mean, bn.running_var, bn.eps, features[0].data.dtype)
        backend.get_array_module(*(x.data for x in features), bn.running_mean, where="batch_norm")  # one device
        return Tensor(kernels.concat_batch_norm_relu_inference(
            [x.data for x in features], _data(bn.weight), _data(bn.bias), mean, inv_std, relu is not None))
    y = bn(F.concat(features, axis=1))
    return y if relu is None else relu(y)


def fusable(conv, bn, relu, inputs):
    """Whether the modules (conv None for concat_bn_relu) and the input Tensors make a fused call
    (see the module docstring for why each condition)."""
    if not (conv is None or type(conv) is Conv2d) or type(bn) is not BatchNorm2d:
        return False
    if not (relu is None or type(relu) is ReLU):
        return False
    if conv is not None and isinstance(conv.padding, str):
        return False
    if not inputs or not all(isinstance(x, Tensor) and x.ndim == 4 for x in inputs):
        return False
    modules = [m for m in (conv, bn, relu) if m is not None]
    parameters = [p for m in modules for p in m.parameters()]
    if config.enable_backprop and any(t.requires_grad for t in inputs + parameters):
        return False  # a graph would be recorded
    if bn.training or bn.running_mean is None:
        return False  # batch statistics
    if autograd.active_trace is not None or config.check_nan or config.shape_only:
        return False
    if any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks for m in modules):
        return False
    dtype = inputs[0].data.dtype
    return (all(t.data.dtype == dtype for t in inputs + parameters)
            and (conv is None or bn.num_features == conv.out_channels))


def _data(parameter):
    return None if parameter is None else parameter.data


def _same_but_channels(features, channels):
    """Whether the (N, C_k, H, W) features join into `channels` channels."""
    N, _, H, W = features[0].shape
    return (all(x.shape[0] == N and x.shape[2:] == (H, W) for x in features)
            and sum(x.shape[1] for x in features) == channels)


def _conv_bn_relu_inference(conv, bn, relu, x, residual):
    """The fused call; None where the residual does not have the output's shape (the layers, called
    in turn, then say what is wrong, or broadcast it as F.add does)."""
    op = Conv2dFunction(conv.stride, conv.padding, conv.dilation, conv.groups)
    weight, bias = conv.weight.data, _data(conv.bias)
    residual = _data(residual)
    backend.get_array_module(x.data, weight, bias, bn.running_mean, residual, where="conv2d")  # one device
    N, _, OC, _, _, OH, OW = op._check(x.data, weight, bias)  # the conv layer's own checks and messages
    if residual is not None and tuple(residual.shape) != (N, OC, OH, OW):
        return None
    mean, inv_std = inference_statistics(bn.running_mean, bn.running_var, bn.eps, x.data.dtype)
    y = kernels.conv2d_batch_norm_relu_inference(
        x.data, weight, bias, op.SH, op.SW, op.PH, op.PW, op.DH, op.DW, op.groups,
        _data(bn.weight), _data(bn.bias), mean, inv_std, residual, relu)
    return Tensor(y)
