"""Plain ``normfast.<name>`` calls on torch tensors that need more than a NumPy view.

The dispatcher (``normfast._dispatch``) sends here the calls where a tensor argument requires
grad (with grad mode on), x is bfloat16, or torch.compile / torch.export is tracing.  Forward
operators go through ``normfast.torch``'s functions (registered ops, autograd, bfloat16); a
call those cannot express (``out=``, ``return_stats=``, ``momentum=None``, a backward function,
moments) warns once per function when an input requires grad and runs on detached data
(bfloat16 there: a TypeError from the dispatcher).
"""
import warnings

import torch

from . import _functional as F

# normfast's positional parameters (after x) and their defaults, in the order normfast.torch's
# functions take them; keyword-only options other than channel_axis need the NumPy path.
_PARAMS = {
    "layer_norm": (("normalized_shape", None), ("weight", None), ("bias", None), ("eps", 1e-5)),
    "rms_norm": (("normalized_shape", None), ("weight", None), ("eps", None)),
    "add_layer_norm": (("residual", None), ("normalized_shape", None), ("weight", None), ("bias", None),
                       ("eps", 1e-5)),
    "add_rms_norm": (("residual", None), ("normalized_shape", None), ("weight", None), ("eps", None)),
    "normalize": (("axis", -1), ("weight", None), ("bias", None), ("eps", 1e-5)),
    "batch_norm": (("running_mean", None), ("running_var", None), ("weight", None), ("bias", None),
                   ("training", False), ("momentum", 0.1), ("eps", 1e-5)),
    "group_norm": (("num_groups", None), ("weight", None), ("bias", None), ("eps", 1e-5)),
    "instance_norm": (("running_mean", None), ("running_var", None), ("weight", None), ("bias", None),
                      ("use_input_stats", True), ("momentum", 0.1), ("eps", 1e-5)),
}
_CHANNEL_OPS = ("batch_norm", "group_norm", "instance_norm")
_warned = set()


def _bind(name, args, kwargs):
    """normfast's (args, kwargs) as normfast.torch's positional arguments and channel_axis, or None."""
    params = _PARAMS.get(name)
    kwargs = dict(kwargs)
    ca = kwargs.pop("channel_axis", 1) if name in _CHANNEL_OPS else 1
    x = kwargs.pop("x", None) if not args else args[0]
    if params is None or x is None or len(args) > len(params) + 1:
        return None
    for k, default in (("out", None), ("return_stats", False)):     # given at their defaults: absent
        if k in kwargs and kwargs[k] is default:
            del kwargs[k]
    values = list(args[1:])
    for pname, default in params[len(values):]:
        values.append(kwargs.pop(pname, default))
    if kwargs or (name == "batch_norm" and values[5] is None):      # out=, return_stats=, momentum=None ...
        return None
    return x, values, ca


def call(name, args, kwargs):
    """The result of ``normfast.<name>(*args, **kwargs)`` with autograd / bfloat16 / registered ops,
    or NotImplemented when the caller should run the NumPy path on detached data."""
    bound = _bind(name, args, kwargs)
    if bound is not None:
        x, values, ca = bound
        if ca % x.dim() == 1:
            return getattr(F, name)(x, *values)
        ca = ca % x.dim()        # channels moved to dim 1 as a view (channels_last stays in place)
        return getattr(F, name)(x.movedim(ca, 1), *values).movedim(1, ca)
    if any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())) \
            and torch.is_grad_enabled() and name not in _warned:
        _warned.add(name)
        warnings.warn(f"normfast.{name}: this call (with {sorted(kwargs) or 'these arguments'}) has no autograd "
                      "formula, so its result does not require grad although an input does; use "
                      "normfast.torch's functions or modules for gradients", RuntimeWarning, stacklevel=4)
    return NotImplemented
