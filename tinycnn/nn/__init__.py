"""Layers as Modules, with torch.nn's names, arguments and state_dict keys."""
from tinycnn.autograd import Parameter
from tinycnn.nn import init  # noqa: F401
from tinycnn.nn.module import Module, ModuleList, Sequential
from tinycnn.nn.layers import *  # noqa: F401,F403

__all__ = ["Module", "ModuleList", "Parameter", "Sequential", "init"]
