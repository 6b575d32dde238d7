"""normfast: fast, numerically exact normalization kernels.

BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm (forward and backward) and the
single-pass mergeable mean/variance statistics under them.  Names and argument order
follow ``torch.nn.functional``.
"""
from ._threads import get_num_threads, set_num_threads
from .batch_norm import batch_norm
from .group_norm import group_norm
from .instance_norm import instance_norm
from .layer_norm import layer_norm
from .moments import Moments, moments
from .normalize import normalize
from .rms_norm import rms_norm

__version__ = "0.1.0"

__all__ = [
    "Moments", "batch_norm", "get_num_threads", "group_norm", "instance_norm", "layer_norm", "moments",
    "normalize", "rms_norm", "set_num_threads",
]
