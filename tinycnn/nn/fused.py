"""Runs of layers computed as one kernel call: conv -> BatchNorm -> ReLU, the commonest run in the
model zoo, and concat -> BatchNorm -> ReLU, a DenseNet layer's first steps.

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

In training (BatchNorm in training mode) the convolution or the concatenation runs as its module
or op, and BatchNorm, the residual's add and the ReLU as one op, F.batch_norm_relu, with its own
backward (BatchNormReLU in tinycnn/functional/normalization.py): its forward writes the output
once where the three wrote it three times, and its backward applies the ReLU's mask as it reads
the gradient. It keeps what the three kept (BatchNorm's input, the ReLU's output), updates the
running statistics as BatchNorm does, and gives the same values and gradients (tests/test_fused.py).
Under the same conditions as above, but for the first two: a graph may be recorded, and BatchNorm
is in training mode.
"""
from tinycnn import autograd, backend, config, kernels
from tinycnn import functional as F
from tinycnn.autograd import Tensor
from tinycnn.functional.conv import Conv2d as Conv2dFunction
from tinycnn.functional.normalization import inference_statistics
from tinycnn.nn.activation import ReLU
from tinycnn.nn.conv import Conv2d
from tinycnn.nn.normalization import BatchNorm2d

__all__ = ["concat_bn_relu", "conv_bn_relu", "fusable", "fusable_in_training"]


def conv_bn_relu(conv, bn, relu, x, residual=None):
    """relu(bn(conv(x)) + residual): the modules conv, bn and relu (None for no ReLU) called in
    turn, and the residual (None for none) added in place before the ReLU, as a ResNet block adds
    its shortcut; as one kernel call in inference where `fusable` says so, and with bn, the add
    and relu as one op in training where `fusable_in_training` says so."""
    if fusable(conv, bn, relu, [x] + ([] if residual is None else [residual])):
        y = _conv_bn_relu_inference(conv, bn, relu is not None, x, residual)
        if y is not None:
            return y
    z = conv(x)
    if fusable_in_training(bn, relu, z, residual):
        return _bn_relu_training(bn, relu, z, residual)
    y = bn(z)
    if residual is not None:
        y = F.add(y, residual, inplace=True)
    return y if relu is None else relu(y)


def concat_bn_relu(bn, relu, features):
    """relu(bn(F.concat(features, axis=1))), relu a ReLU module or None; as one kernel call, which
    never makes the plain concatenation, in inference where `fusable` says so, and with bn and relu
    as one op in training where `fusable_in_training` says so."""
    features = list(features)
    if fusable(None, bn, relu, features) and _same_but_channels(features, bn.num_features):
        mean, inv_std = inference_statistics(bn.running_mean, bn.running_var, bn.eps, features[0].data.dtype)
        backend.get_array_module(*(x.data for x in features), bn.running_mean, where="batch_norm")  # one device
        return Tensor(kernels.concat_batch_norm_relu_inference(
            [x.data for x in features], _data(bn.weight), _data(bn.bias), mean, inv_std, relu is not None))
    x = F.concat(features, axis=1)
    if fusable_in_training(bn, relu, x, None):
        return _bn_relu_training(bn, relu, x, None)
    y = bn(x)
    return y if relu is None else relu(y)


def fusable_in_training(bn, relu, x, residual):
    """Whether bn (training mode), the residual's add and relu run as one op, F.batch_norm_relu:
    a ReLU or a residual to fuse, plain modules that nothing watches, the batch's statistics, and
    inputs whose shapes and dtypes agree."""
    if relu is None and residual is None:
        return False
    if not _plain(None, bn, relu) or not bn.training or _watched([bn, relu]):
        return False
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != bn.num_features:
        return False  # BatchNorm2d itself then says what is wrong
    if any(p.data.dtype != x.data.dtype for p in bn.parameters()):
        return False
    return residual is None or (isinstance(residual, Tensor) and residual.shape == x.shape
                                and residual.data.dtype == x.data.dtype)


def _bn_relu_training(bn, relu, x, residual):
    """F.batch_norm_relu with bn's settings, as BatchNorm2d.forward calls F.batch_norm in training."""
    momentum = bn._momentum_of_this_call()
    tracked = bn.track_running_stats
    return F.batch_norm_relu(x, bn.running_mean if tracked else None, bn.running_var if tracked else None,
                             bn.weight, bn.bias, residual, momentum, bn.eps, relu is not None)


def fusable(conv, bn, relu, inputs):
    """Whether the modules (conv None for concat_bn_relu) and the input Tensors make a fused call
    in inference (see the module docstring for why each condition)."""
    if not _plain(conv, bn, relu) or (conv is not None and isinstance(conv.padding, str)):
        return False
    if not inputs or not all(isinstance(x, Tensor) and x.ndim == 4 for x in inputs):
        return False
    modules = [m for m in (conv, bn, relu) if m is not None]
    parameters = [p for m in modules for p in m.parameters()]
    if config.enable_backprop and any(t.requires_grad for t in inputs + parameters):
        return False  # a graph would be recorded
    if bn.training or bn.running_mean is None:
        return False  # batch statistics
    if _watched(modules):
        return False
    dtype = inputs[0].data.dtype
    return (all(t.data.dtype == dtype for t in inputs + parameters)
            and (conv is None or bn.num_features == conv.out_channels))


def _plain(conv, bn, relu):
    """Whether the modules are tinycnn's own Conv2d (or None), BatchNorm2d and ReLU (or None): a
    subclass may have its own forward."""
    return (conv is None or type(conv) is Conv2d) and type(bn) is BatchNorm2d and (relu is None or type(relu) is ReLU)


def _watched(modules):
    """Whether anything would see the values between the modules: a hook on one of them (None
    entries skipped), a tinycnn.trace(), config.check_nan or config.shape_only."""
    if autograd.active_trace is not None or config.check_nan or config.shape_only:
        return True
    return any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks for m in modules if m is not None)


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
