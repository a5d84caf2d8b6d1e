"""Optimizers and learning-rate schedulers with torch.optim's update formulas."""
from tinycnn.optim.optimizers import *  # noqa: F401,F403
from tinycnn.optim.lr_scheduler import *  # noqa: F401,F403
from tinycnn.optim import lr_scheduler  # noqa: F401
