"""Plain ``normfast.<name>`` calls on torch tensors that need more than a NumPy view.

The dispatcher (``normfast._dispatch``) sends here the calls where a tensor argument
requires grad (with grad mode on) or x is bfloat16.  Forward operators go through
``normfast.torch``'s functions (registered ops, autograd, bfloat16); a call those cannot
express (``out=``, ``return_stats=``, ``num_batches_tracked=``, a backward function, moments)
warns once per function and runs on detached data, bfloat16 included (through float32).
"""
import warnings

import torch

from . import _functional as F

_SAME_ARGS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "normalize")
_CHANNEL_ARGS = ("batch_norm", "group_norm", "instance_norm")
_warned = set()


def _channel_call(name, args, kwargs):
    """batch/group/instance norm with normfast's ``channel_axis``: channels moved to dim 1 as a view."""
    ca = kwargs.pop("channel_axis", 1)
    x = args[0]
    ca = ca % x.dim()
    res = getattr(F, name)(x.movedim(ca, 1), *args[1:], **kwargs)
    return res.movedim(1, ca)


def call(name, args, kwargs):
    """The result of ``normfast.<name>(*args, **kwargs)`` with autograd / bfloat16 support,
    or NotImplemented when the caller should run the NumPy path on detached data."""
    if name in _SAME_ARGS and not kwargs:
        return getattr(F, name)(*args)
    if name in _CHANNEL_ARGS and set(kwargs) <= {"channel_axis"}:
        return _channel_call(name, args, dict(kwargs))
    if any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())) \
            and torch.is_grad_enabled() and name not in _warned:
        _warned.add(name)
        warnings.warn(f"normfast.{name}: this call (with {sorted(kwargs) or 'these arguments'}) has no autograd "
                      "formula, so its result does not require grad although an input does; use "
                      "normfast.torch's functions or modules for gradients", RuntimeWarning, stacklevel=4)
    return NotImplemented
