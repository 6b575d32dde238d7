"""normfast: fast, numerically exact normalization kernels.

BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm (forward and backward) and the
single-pass mergeable mean/variance statistics under them.  Names and argument order
follow ``torch.nn.functional``.
"""
from ._add_norm import add_layer_norm, add_layer_norm_backward, add_rms_norm, add_rms_norm_backward
from ._threads import get_num_threads, set_num_threads
from ._precision import get_float32_precision, set_float32_precision
from ._batch_norm import batch_norm, batch_norm_backward
from ._group_norm import group_norm, group_norm_backward
from ._instance_norm import instance_norm, instance_norm_backward
from ._layer_norm import layer_norm, layer_norm_backward
from ._moments import Moments, moments
from ._normalize import normalize
from ._rms_norm import rms_norm, rms_norm_backward

from ._dispatch import backends, dispatch as _dispatch, get_backend, with_fast_path as _with_fast_path

__version__ = "0.1.0"

# Every public function picks its backend from the type of its first array argument.
(moments, normalize, layer_norm, rms_norm, batch_norm, group_norm, instance_norm, layer_norm_backward,
 rms_norm_backward, batch_norm_backward, group_norm_backward, instance_norm_backward, add_layer_norm,
 add_rms_norm, add_layer_norm_backward, add_rms_norm_backward) = (
    _dispatch(0)(f) for f in (
        moments, normalize, layer_norm, rms_norm, batch_norm, group_norm, instance_norm, layer_norm_backward,
        rms_norm_backward, batch_norm_backward, group_norm_backward, instance_norm_backward, add_layer_norm,
        add_rms_norm, add_layer_norm_backward, add_rms_norm_backward))
layer_norm = _with_fast_path(layer_norm, rms=False)
rms_norm = _with_fast_path(rms_norm, rms=True)

__all__ = [
    "Moments", "add_layer_norm", "add_layer_norm_backward", "add_rms_norm", "add_rms_norm_backward", "backends",
    "batch_norm", "batch_norm_backward", "get_backend", "get_float32_precision", "get_num_threads", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "layer_norm", "layer_norm_backward", "moments", "normalize",
    "rms_norm", "rms_norm_backward", "set_float32_precision", "set_num_threads",
]
