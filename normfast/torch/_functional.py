"""``torch.nn.functional``-style functions on normfast's kernels.

Each call takes one of three paths, all computing with the same ``_impl`` function:

* compiling / exporting / tracing (``torch.compiler.is_compiling()``, fake or meta tensors,
  an active dispatch mode) or profiling: the registered op ``torch.ops.normfast.<name>``,
  so the graph has one node per norm and the profiler shows it by name;
* eager with autograd recording (a tensor argument requires grad): ``_ops.EAGER[name]``,
  an ``autograd.Function`` with the registered op's forward and gradient;
* otherwise: the ``_impl`` function directly (lowest per-call cost).
"""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _impl, _ops

_OP, _GRAD, _DIRECT = 0, 1, 2


def _path(x, *tensors):
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor or x.is_meta \
            or _get_current_dispatch_mode() is not None or torch.autograd.profiler._is_profiler_enabled:
        return _OP
    if not x.is_cpu:
        raise TypeError(f"normfast.torch: CPU tensors only, got a tensor on {x.device}; on CUDA use "
                        "normfast's functions on CuPy arrays or torch's own modules")
    if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in tensors)):
        return _GRAD
    return _DIRECT


def _shape(normalized_shape):
    return [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)


def _call(name, path, *args):
    if path == _OP:
        return _ops.OPS[name](*args)
    if path == _GRAD:
        return _ops.EAGER[name].apply(*args)
    return getattr(_impl, name)(*args)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.layer_norm`` (CPU tensors; float16/bfloat16/float32/float64)."""
    path = _path(input, weight, bias)
    if path == _DIRECT:
        return _impl.layer_norm_y(input, normalized_shape, weight, bias, eps)
    return _call("layer_norm", path, input, _shape(normalized_shape), weight, bias, eps)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """As ``torch.nn.functional.rms_norm`` (eps=None: the machine epsilon of input's dtype)."""
    path = _path(input, weight)
    if path == _DIRECT:
        return _impl.rms_norm_y(input, normalized_shape, weight, eps)
    return _call("rms_norm", path, input, _shape(normalized_shape), weight, eps)[0]


def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``h = input + residual; y = layer_norm(h)`` fused; returns ``(y, h)``.  Gradients reach
    input and residual (and the next block's gradient through h)."""
    path = _path(input, residual, weight, bias)
    y, h = _call("add_layer_norm", path, input, residual, _shape(normalized_shape), weight, bias, eps)[:2]
    return y, h


def add_rms_norm(input, residual, normalized_shape, weight=None, eps=None):
    """``h = input + residual; y = rms_norm(h)`` fused; returns ``(y, h)``."""
    path = _path(input, residual, weight)
    y, h = _call("add_rms_norm", path, input, residual, _shape(normalized_shape), weight, eps)[:2]
    return y, h


def normalize(input, axis=-1, weight=None, bias=None, eps=1e-5):
    """As :func:`normfast.normalize`: standardize over ``axis`` (int or tuple), with gradients."""
    path = _path(input, weight, bias)
    axes = [axis] if isinstance(axis, int) else list(axis)
    return _call("normalize", path, input, axes, weight, bias, eps)[0]


def _copy_back(path, training, buffers, updated):
    """On the op path the updated running statistics come back as new tensors."""
    if path == _OP and training:
        for buf, new in zip(buffers, updated):
            if buf is not None:
                buf.copy_(new.detach())


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.batch_norm`` (channels on dim 1; channels_last without a copy)."""
    path = _path(input, weight, bias)
    out = _call("batch_norm", path, input, weight, bias, running_mean, running_var, bool(training),
                float(momentum), eps)
    _copy_back(path, training, (running_mean, running_var), out[3:])
    return out[0]


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.group_norm`` (channels_last without a copy)."""
    path = _path(input, weight, bias)
    return _call("group_norm", path, input, num_groups, weight, bias, eps)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.instance_norm`` (channels_last without a copy)."""
    path = _path(input, weight, bias)
    out = _call("instance_norm", path, input, weight, bias, running_mean, running_var, bool(use_input_stats),
                float(momentum), eps)
    _copy_back(path, use_input_stats, (running_mean, running_var), out[3:])
    return out[0]
