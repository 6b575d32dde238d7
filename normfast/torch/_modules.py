"""Drop-in ``torch.nn`` norm modules on normfast's kernels, and ``patch(model)``.

Each class subclasses the torch module it replaces: same constructor, parameters, buffers
and ``state_dict`` keys (a torch checkpoint loads unchanged), every option honoured; only
``forward`` differs.  ``patch`` swaps the class of every supported module of a model in
place, so its Parameter and buffer objects (and hooks) are kept.
"""
from torch import nn

from . import _functional as F


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` on normfast's kernels."""

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` on normfast's kernels."""

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` on normfast's kernels (channels_last input stays channels_last)."""

    def forward(self, input):
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class _BatchNormMixin:
    def forward(self, input):
        # torch's _BatchNorm.forward, calling normfast's batch_norm
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:      # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if use_buffers else None,
                            self.running_var if use_buffers else None, self.weight, self.bias, bn_training,
                            factor, self.eps)


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on normfast's kernels."""


class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on normfast's kernels (channels_last stays channels_last, no copy)."""


class BatchNorm3d(_BatchNormMixin, nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on normfast's kernels (channels_last_3d stays, no copy)."""


class _InstanceNormMixin:
    def _apply_instance_norm(self, input):
        # torch's _InstanceNorm._apply_instance_norm; its forward (checks, unbatched input) is kept
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               self.training or not self.track_running_stats,
                               self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` on normfast's kernels."""


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` on normfast's kernels."""


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` on normfast's kernels."""


class AddLayerNorm(nn.LayerNorm):
    """Fused residual add + LayerNorm: ``forward(x, residual) -> (layer_norm(x + residual), x + residual)``.

    Same constructor, parameters and ``state_dict`` keys as ``torch.nn.LayerNorm`` (load a
    LayerNorm's weights into it).  One pass over memory instead of two; gradients reach x,
    residual and, through the returned sum, the next block.
    """

    def forward(self, x, residual):
        return F.add_layer_norm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps)


class AddRMSNorm(nn.RMSNorm):
    """Fused residual add + RMSNorm: ``forward(x, residual) -> (rms_norm(x + residual), x + residual)``."""

    def forward(self, x, residual):
        return F.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps)


SWAPS = {nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm, nn.GroupNorm: GroupNorm,
         nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
         nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d}


def patch(model):
    """Swap every torch norm module of ``model`` for normfast's, in place; returns ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Modules whose type is exactly one of ``torch.nn.LayerNorm``, ``RMSNorm``,
        ``GroupNorm``, ``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d`` get the normfast class
        (their parameters, buffers, hooks and attributes are the same objects, so optimizers
        built before keep working).  Subclasses of these (with their own ``forward``) and
        other modules are left alone.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        new = SWAPS.get(type(module))
        if new is not None:
            module.__class__ = new
    return model


def unpatch(model):
    """Undo :func:`patch`: normfast norm modules of ``model`` become the torch classes again."""
    back = {v: k for k, v in SWAPS.items()}
    for module in model.modules():
        old = back.get(type(module))
        if old is not None:
            module.__class__ = old
    return model
