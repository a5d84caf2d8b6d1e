"""Differentiable operations with torch.nn.functional's names and argument order.

One file per op family; each holds the Function classes (forward and backward on arrays) and the
snake_case function that is the public face.
"""
from tinycnn.functional.activation import *  # noqa: F401,F403
from tinycnn.functional.basic import *  # noqa: F401,F403
from tinycnn.functional.conv import *  # noqa: F401,F403
from tinycnn.functional.dropout import *  # noqa: F401,F403
from tinycnn.functional.loss import *  # noqa: F401,F403
from tinycnn.functional.normalization import *  # noqa: F401,F403
from tinycnn.functional.pooling import *  # noqa: F401,F403
