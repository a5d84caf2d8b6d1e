"""Layers as Modules, with torch.nn's names, arguments and state_dict keys.

One file per layer family: conv (Conv2d, ZeroPad2d), linear (Linear, Flatten, Identity), pooling,
normalization (BatchNorm1d/2d, LocalResponseNorm), syncbatchnorm (SyncBatchNorm, for
tinycnn.distributed), activation, dropout, loss; module.py holds the
Module base class and the containers; init.py the weight initialisers; fused.py conv_bn_relu, conv ->
BatchNorm -> ReLU in one kernel call for inference.
"""
from tinycnn.autograd import Parameter
from tinycnn.nn import init  # noqa: F401
from tinycnn.nn.module import Module, ModuleList, Sequential
from tinycnn.nn.layers import *  # noqa: F401,F403
from tinycnn.nn import layers as _layers
from tinycnn.nn.syncbatchnorm import SyncBatchNorm
from tinycnn.nn.fused import concat_bn_relu, conv_bn_relu

__all__ = (["Module", "ModuleList", "Parameter", "Sequential", "SyncBatchNorm", "concat_bn_relu", "conv_bn_relu",
            "init"] + _layers.__all__)
