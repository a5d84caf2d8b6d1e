"""DenseNet: Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017 (arXiv:1608.06993), Table 1 (ImageNet) and section 4 (CIFAR DenseNet-BC).

Inside a dense block every layer receives the concatenation of all earlier maps of the block and
adds k ("growth rate") new ones: layer l sees k0 + (l - 1) k maps. A layer is BN-ReLU-1x1 conv (4k
maps, the "B" bottleneck) -BN-ReLU-3x3 conv (k maps). Between blocks a transition (BN-ReLU-1x1 conv
to half the maps, the "C" compression with theta = 0.5, then 2x2 average pooling) halves the grid.

The ImageNet networks (`densenet121`, 161, 169, 201, 264) follow torchvision's `models/densenet.py`
and its state_dict keys (`features.conv0.weight`, `features.denseblock1.denselayer1.norm1.weight`,
`features.transition1.conv.weight`, `features.norm5.*`, `classifier.*`), so its weights load.
DenseNet-264 (k=32, blocks 6-12-64-48) is Table 1's deepest network, built with the same class
(torchvision does not ship it). As the paper: 7x7/2 conv of 2k maps (96 for DenseNet-161, whose
k is 48), 3x3/2 max pool, four dense blocks, a final BN-ReLU, global average pool and fc.
Departure, as torchvision: the final BatchNorm is `features.norm5` and its ReLU is applied in
forward; `drop_rate` adds dropout after each 3x3 conv (0 by default; the paper uses 0.2 on CIFAR
without data augmentation only).

`memory_efficient=True` (every factory takes it; the option of torchvision's DenseNet, after Pleiss
et al., "Memory-Efficient Implementation of DenseNets", arXiv:1707.06990) keeps less for backward
and computes the same function and the same gradients. A plain dense layer keeps three arrays as
wide as all the maps before it: the concatenation (held by norm1), norm1's output (held by relu1)
and relu1's output (held by conv1), so a block's memory grows with the square of its depth. The
memory-efficient layer runs concat-BN-ReLU-1x1 conv as one Function (`RecomputedBottleneck`) that
keeps only its inputs, the earlier layers' k-map outputs that the block holds anyway, and
recomputes the three wide arrays in its backward, one layer at a time: about a third more
arithmetic in that part for about half of DenseNet-121's activation memory.

`densenet_bc_100()` is the CIFAR DenseNet-BC with L = 100, k = 12 (section 4, Table 2): a 3x3
conv of 2k = 24 maps, three dense blocks of (L - 4) / 6 = 16 bottleneck layers on 32x32, 16x16
and 8x8 maps, transitions with compression 0.5, BN-ReLU, global average pool, fc; 769,162
parameters for CIFAR-10 and 800,032 for CIFAR-100 (osmr imgclsmob's counts).
"""
from collections import OrderedDict

import tinycnn.functional as F
from tinycnn import autograd, config, nn
from tinycnn.autograd import Function, Tensor
from tinycnn.models.common import register

__all__ = ["densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "densenet_bc_100"]

# Table 1: (growth rate k, layers per dense block, stem channels, bottleneck width factor).
CONFIGS = {
    121: (32, (6, 12, 24, 16), 64, 4),
    161: (48, (6, 12, 36, 24), 96, 4),
    169: (32, (6, 12, 32, 32), 64, 4),
    201: (32, (6, 12, 48, 32), 64, 4),
    264: (32, (6, 12, 64, 48), 64, 4),
}
# Section 4: DenseNet-BC for CIFAR with depth L and growth k: three blocks of (L - 4) / 6 layers.
CIFAR_BC_100 = (12, (16, 16, 16), 24, 4)
COMPRESSION = 0.5


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size * k) -BN-ReLU-3x3 conv (k) on the concatenation of the inputs.

    memory_efficient: when a graph is recorded, run concat-norm1-relu1-conv1 as a
    RecomputedBottleneck (see the module docstring); norm1, relu1 and conv1 then run in forward
    under no_grad, so their forward hooks see outputs cut from the graph and their backward hooks
    are not called.
    """

    def __init__(self, in_channels, growth_rate, bn_size, drop_rate=0.0, memory_efficient=False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, features):
        """conv1(relu1(norm1(concat(features)))), the memory-efficient layer's recomputed part."""
        x = nn.concat_bn_relu(self.norm1, self.relu1, features)  # N x (k0 + (l-1) k) x H x W
        return self.conv1(x)  # N x 4k x H x W

    def forward(self, features):
        # In inference the concat, norm1 and relu1 are one kernel call, and so are conv1, norm2
        # and relu2 (nn.concat_bn_relu, nn.conv_bn_relu); otherwise the modules run in turn.
        if self.memory_efficient and config.enable_backprop:
            x = RecomputedBottleneck(self)(*features, self.norm1.weight, self.norm1.bias, self.conv1.weight)
            x = self.relu2(self.norm2(x))
        else:
            x = nn.concat_bn_relu(self.norm1, self.relu1, features)  # N x (k0 + (l-1) k) x H x W
            x = nn.conv_bn_relu(self.conv1, self.norm2, self.relu2, x)  # relu2(norm2(conv1(x)))
        # N x 4k x H x W
        x = self.conv2(x)
        # N x k x H x W
        return self.dropout(x)


class RecomputedBottleneck(Function):
    """A dense layer's concat-BN-ReLU-1x1 conv, keeping only its inputs for backward.

    Inputs: the layer's input maps (any number), then norm1's weight and bias and conv1's weight,
    so that the engine delivers their gradients. Forward runs the layer's own modules under
    no_grad: the running statistics are updated once, here, and nothing is recorded. Backward
    builds that sub-graph again from the saved inputs and runs the engine through it:

        x = concat(features),  z = relu(batch_norm(x)),  y = conv1x1(z)

    Step by step, gy -> gz (conv's backward) -> gx (ReLU's mask, then BatchNorm's backward with the
    batch statistics recomputed from x, the same as forward's) -> each feature's slice of gx
    (concat's backward), with the parameter gradients on the way: the plain layer's chain rule,
    on the same numbers, so the same gradients.
    """

    def __init__(self, layer):
        self.layer = layer  # its modules' settings; the parameters arrive as inputs

    def forward(self, *arrays):
        features = arrays[:-3]
        self.save_for_backward(*arrays)  # the earlier layers' outputs (held by the block anyway), the parameters
        with config.no_grad():
            return self.layer.bottleneck([Tensor(a) for a in features]).data

    def backward(self, gy):
        leaves = [Tensor(a, requires_grad=needed) for a, needed in zip(self.saved_arrays, self.needs_input_grad)]
        # Inside `with tinycnn.trace()` this Function stays one row, as in forward: the sub-graph
        # rebuilt here lives only during this backward and is not memory the graph keeps.
        trace, autograd.active_trace = autograd.active_trace, None
        try:
            with config.enable_grad():
                y = self.recompute(*leaves)
            y.backward(gy)
        finally:
            autograd.active_trace = trace
        return tuple(leaf.grad if needed else None for leaf, needed in zip(leaves, self.needs_input_grad))

    def recompute(self, *inputs):
        """The forward again, on Tensors, recording a graph; norm1's running statistics untouched."""
        *features, weight, bias, conv_weight = inputs
        norm = self.layer.norm1
        # Batch statistics exactly when norm1 used them in forward (BatchNorm2d.forward), but
        # passing no running buffers, so that they are not updated a second time.
        use_batch_stats = norm.training or norm.running_mean is None
        x = F.concat(features, axis=1)
        if use_batch_stats:
            x = F.batch_norm(x, None, None, weight, bias, True, 0.0, norm.eps)
        else:
            x = F.batch_norm(x, norm.running_mean, norm.running_var, weight, bias, False, 0.0, norm.eps)
        return F.conv2d(F.relu(x), conv_weight)


class DenseBlock(nn.Module):
    """`num_layers` dense layers named denselayer1, denselayer2, ...; returns all maps concatenated."""

    def __init__(self, num_layers, in_channels, growth_rate, bn_size, drop_rate=0.0, memory_efficient=False):
        super().__init__()
        for index in range(num_layers):
            layer = DenseLayer(in_channels + index * growth_rate, growth_rate, bn_size, drop_rate, memory_efficient)
            setattr(self, f"denselayer{index + 1}", layer)
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x):
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return F.concat(features, axis=1)  # N x (k0 + num_layers k) x H x W


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compressed) -2x2 average pool, keys norm/relu/conv/pool as torchvision."""

    def __init__(self, in_channels, out_channels):
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(in_channels)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
            ("pool", nn.AvgPool2d(2, stride=2)),
        ]))

    def forward(self, x):
        x = nn.concat_bn_relu(self.norm, self.relu, [x])  # relu(norm(x)), one pass in inference
        return self.pool(self.conv(x))


class DenseNet(nn.Module):
    """DenseNet-BC; `stem="imagenet"` (7x7/2 conv + max pool) or "cifar" (one 3x3 conv);
    `memory_efficient`: recompute each dense layer's concat-BN-ReLU-1x1 conv in backward (see the
    module docstring)."""

    def __init__(self, growth_rate, block_config, num_init_features, bn_size=4, num_classes=1000, in_channels=3,
                 drop_rate=0.0, stem="imagenet", compression=COMPRESSION, memory_efficient=False):
        super().__init__()
        if stem == "imagenet":
            layers = OrderedDict([
                ("conv0", nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
            ])
        elif stem == "cifar":
            layers = OrderedDict([("conv0", nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False))])
        else:
            raise ValueError(f"DenseNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, drop_rate, memory_efficient)
            layers[f"denseblock{index + 1}"] = block
            channels = block.out_channels
            if index != len(block_config) - 1:
                compressed = int(channels * compression)
                layers[f"transition{index + 1}"] = Transition(channels, compressed)
                channels = compressed
        layers["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(channels, num_classes)
        self.num_features = channels

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x):
        # N x 3 x 224 x 224 (32 x 32 for the CIFAR stem)
        x = self.features(x)
        # N x 1024 x 7 x 7 for DenseNet-121 (blocks at 56, 28, 14, 7; CIFAR: 32, 16, 8)
        x = F.relu(x, inplace=True)
        x = F.flatten(self.avgpool(x), 1)
        # N x num_features
        x = self.classifier(x)
        # N x num_classes
        return x


def _densenet(depth, **kwargs):
    growth_rate, block_config, num_init_features, bn_size = CONFIGS[depth]
    return DenseNet(growth_rate, block_config, num_init_features, bn_size, **kwargs)


@register("densenet121")
def densenet121(**kwargs):
    """DenseNet-121 (torchvision), 7,978,856 parameters; 1024 final maps."""
    return _densenet(121, **kwargs)


@register("densenet161")
def densenet161(**kwargs):
    """DenseNet-161 (torchvision, k=48), 28,681,000 parameters; 2208 final maps."""
    return _densenet(161, **kwargs)


@register("densenet169")
def densenet169(**kwargs):
    """DenseNet-169 (torchvision), 14,149,480 parameters; 1664 final maps."""
    return _densenet(169, **kwargs)


@register("densenet201")
def densenet201(**kwargs):
    """DenseNet-201 (torchvision), 20,013,928 parameters; 1920 final maps."""
    return _densenet(201, **kwargs)


@register("densenet264")
def densenet264(**kwargs):
    """DenseNet-264 (Table 1, built with torchvision's class), 33,337,704 parameters; 2688 final maps."""
    return _densenet(264, **kwargs)


@register("densenet_bc_100", input_shape=(3, 32, 32))
def densenet_bc_100(num_classes=10, **kwargs):
    """CIFAR DenseNet-BC (L=100, k=12), 769,162 parameters for 10 classes (800,032 for 100);
    input N x 3 x 32 x 32."""
    growth_rate, block_config, num_init_features, bn_size = CIFAR_BC_100
    return DenseNet(growth_rate, block_config, num_init_features, bn_size, num_classes=num_classes,
                    stem="cifar", **kwargs)
