"""conv -> BatchNorm -> ReLU, the commonest run of layers in the model zoo, as one kernel call when
it only serves inference.

    out = conv_bn_relu(self.conv1, self.bn1, self.relu, x)    # relu(bn1(conv1(x)))
    out = conv_bn_relu(self.conv2, self.bn2, None, out)       # bn2(conv2(out))
    out = conv_bn_relu(self.conv3, self.bn3, self.relu, out, residual=identity)
                                                              # relu(bn3(conv3(out)) + identity)

In evaluation mode BatchNorm is a fixed affine map per channel, y = (z - mean) * inv_std * gamma +
beta with its running statistics, and ReLU is max(y, 0). Run as three layers, each is a pass over
the whole output in memory: ResNet-50's inference at batch 8 spent 44 ms in BatchNorm and 15 in
ReLU beside 283 in its convolutions (and 11 in its residual adds). Fused, the kernel applies them to each chunk of the
convolution's output right after computing it, while it is still in the core's cache
(tinycnn.kernels.conv2d_batch_norm_relu_inference). The arithmetic is the layers' own, in their
order, so the output is the same to the last bit (tests/test_fused.py); the weights are not
touched (no BatchNorm folded into them, which would change the rounding and need updating whenever
the weights or statistics change).

It takes the fused path only when nothing could tell the difference, and otherwise calls the three
modules in turn, as a reader of the model expects:
- no graph is recorded (under tinycnn.no_grad(), or nothing requires a gradient): the fused call
  has no backward, and training needs z and y for BatchNorm's and ReLU's;
- bn is in evaluation mode and keeps running statistics (otherwise it normalises with the batch's);
- the modules are plain Conv2d, BatchNorm2d and ReLU (a subclass may change forward) and none has a
  hook: a hook would see, or replace, the intermediate values;
- no tinycnn.trace(), no config.check_nan (it checks every op's input) and no config.shape_only
  (a summary's shape-only run, which the layers answer without computing);
- the inputs are Tensors and the shapes and dtypes agree (any error comes from the layers
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

__all__ = ["conv_bn_relu", "fusable"]


def conv_bn_relu(conv, bn, relu, x, residual=None):
    """relu(bn(conv(x)) + residual): the modules conv, bn and relu (None for no ReLU) called in
    turn, and the residual (None for none) added in place before the ReLU, as a ResNet block adds
    its shortcut; as one kernel call where `fusable` says so."""
    if fusable(conv, bn, relu, x, residual):
        y = _conv_bn_relu_inference(conv, bn, relu is not None, x, residual)
        if y is not None:
            return y
    y = bn(conv(x))
    if residual is not None:
        y = F.add(y, residual, inplace=True)
    return y if relu is None else relu(y)


def fusable(conv, bn, relu, x, residual=None):
    """Whether conv_bn_relu takes the fused path for these modules and these inputs (see the module
    docstring for why each condition)."""
    if type(conv) is not Conv2d or type(bn) is not BatchNorm2d or not (relu is None or type(relu) is ReLU):
        return False
    if not isinstance(x, Tensor) or x.ndim != 4 or isinstance(conv.padding, str):
        return False
    if residual is not None and not (isinstance(residual, Tensor) and residual.data.dtype == x.data.dtype):
        return False
    parameters = [p for p in (conv.weight, conv.bias, bn.weight, bn.bias) if p is not None]
    watched = [x] + parameters + ([] if residual is None else [residual])
    if config.enable_backprop and any(t.requires_grad for t in watched):
        return False  # a graph would be recorded
    if bn.training or bn.running_mean is None:
        return False  # batch statistics
    if autograd.active_trace is not None or config.check_nan or config.shape_only:
        return False
    if any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks for m in (conv, bn, relu) if m is not None):
        return False
    dtype = x.data.dtype
    return bn.num_features == conv.out_channels and all(p.data.dtype == dtype for p in parameters)


def _conv_bn_relu_inference(conv, bn, relu, x, residual):
    """The fused call; None where the residual does not have the output's shape (the layers, called
    in turn, then say what is wrong, or broadcast it as F.add does)."""
    op = Conv2dFunction(conv.stride, conv.padding, conv.dilation, conv.groups)
    weight, bias = conv.weight.data, None if conv.bias is None else conv.bias.data
    residual = None if residual is None else residual.data
    backend.get_array_module(x.data, weight, bias, bn.running_mean, residual, where="conv2d")  # one device
    N, _, OC, _, _, OH, OW = op._check(x.data, weight, bias)  # the conv layer's own checks and messages
    if residual is not None and tuple(residual.shape) != (N, OC, OH, OW):
        return None
    mean, inv_std = inference_statistics(bn.running_mean, bn.running_var, bn.eps, x.data.dtype)
    y = kernels.conv2d_batch_norm_relu_inference(
        x.data, weight, bias, op.SH, op.SW, op.PH, op.PW, op.DH, op.DW, op.groups,
        None if bn.weight is None else bn.weight.data, None if bn.bias is None else bn.bias.data,
        mean, inv_std, residual, relu)
    return Tensor(y)
