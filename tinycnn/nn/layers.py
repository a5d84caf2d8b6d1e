"""Every layer, gathered from the family files (conv, linear, pooling, normalization, activation,
dropout, loss), so `from tinycnn.nn.layers import Conv2d` works as well as `nn.Conv2d`."""
from tinycnn.nn.activation import *  # noqa: F401,F403
from tinycnn.nn.conv import *  # noqa: F401,F403
from tinycnn.nn.dropout import *  # noqa: F401,F403
from tinycnn.nn.linear import *  # noqa: F401,F403
from tinycnn.nn.loss import *  # noqa: F401,F403
from tinycnn.nn.normalization import *  # noqa: F401,F403
from tinycnn.nn.pooling import *  # noqa: F401,F403
from tinycnn.nn import activation, conv, dropout, linear, loss, normalization, pooling

__all__ = (activation.__all__ + conv.__all__ + dropout.__all__ + linear.__all__ + loss.__all__
           + normalization.__all__ + pooling.__all__)
