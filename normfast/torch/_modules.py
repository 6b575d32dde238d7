"""Drop-in ``torch.nn`` norm modules on normfast's kernels, and ``patch(model)``.

Each class subclasses the torch module it replaces: same constructor, parameters, buffers
and ``state_dict`` keys (a torch checkpoint loads unchanged), every option honoured; only
``forward`` differs.  ``patch`` swaps the class of every supported module of a model in
place, so its Parameter and buffer objects (and hooks) are kept.
"""
from torch import nn

from . import _functional as F
from .._docs import fill


@fill
class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` on normfast's kernels.

    {torch_ln_params}

    {torch_examples}
    >>> m = nft.LayerNorm(8)
    >>> x = torch.randn(4, 8, requires_grad=True)
    >>> m(x).sum().backward()
    >>> x.grad.shape, m.weight.grad.shape
    (torch.Size([4, 8]), torch.Size([8]))
    """

    @fill
    def forward(self, input):
        """Layer-normalize ``input`` over its trailing ``normalized_shape`` dimensions.

        {forward}
        """
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


@fill
class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` on normfast's kernels.

    {torch_rms_params}

    {torch_examples}
    >>> m = nft.RMSNorm([2, 3], eps=1e-6)
    >>> round(m(torch.ones(5, 2, 3)).sum().item(), 3)
    30.0
    """

    @fill
    def forward(self, x):
        """``x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape`` dimensions.

        {forward}
        """
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


@fill
class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` on normfast's kernels (channels_last input stays channels_last).

    Parameters
    ----------
    num_groups : int
        Groups the channels are split into; divides ``num_channels``.
    num_channels : int
        C, the size of dim 1.
    {eps}
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    {torch_factory}

    {module_raises}

    {torch_examples}
    >>> m = nft.GroupNorm(2, 4)
    >>> y = m(torch.randn(3, 4, 5))
    >>> y.reshape(3, 2, -1).mean(-1).abs().max().item() < 1e-5
    True
    """

    @fill
    def forward(self, input):
        """Normalize ``input`` (N, C, *) per sample and group of channels.

        {forward}
        """
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class _BatchNormMixin:
    @fill
    def forward(self, input):
        """Batch-normalize ``input`` (N, C, *): batch statistics when training, else running ones.

        {forward}
        """
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


@fill
class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on normfast's kernels: input (N, C) or (N, C, L).

    {torch_running}

    {torch_examples}
    >>> bn = nft.BatchNorm1d(3)
    >>> y = bn(torch.arange(24.0).reshape(4, 3, 2))
    >>> bn.running_mean
    tensor([0.9500, 1.1500, 1.3500])
    """


@fill
class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on normfast's kernels (channels_last stays channels_last, no copy).

    {torch_running}

    {torch_examples}
    >>> x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    >>> nft.BatchNorm2d(3)(x).is_contiguous(memory_format=torch.channels_last)
    True
    """


@fill
class BatchNorm3d(_BatchNormMixin, nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on normfast's kernels (channels_last_3d stays, no copy).

    {torch_running}

    {torch_examples}
    >>> bn = nft.BatchNorm3d(2).eval()            # running statistics: mean 0, variance 1
    >>> x = torch.ones(1, 2, 2, 2, 2)
    >>> torch.allclose(bn(x), x / (1 + bn.eps) ** 0.5)
    True
    """


class _InstanceNormMixin:
    def _apply_instance_norm(self, input):
        # torch's _InstanceNorm._apply_instance_norm; its forward (checks, unbatched input) is kept
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               self.training or not self.track_running_stats,
                               self.momentum if self.momentum is not None else 0.0, self.eps)


@fill
class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` on normfast's kernels: input (N, C, L) or (C, L).

    {torch_running}

    {torch_examples}
    >>> y = nft.InstanceNorm1d(3)(torch.randn(2, 3, 10))
    >>> y.mean(-1).abs().max().item() < 1e-5
    True
    """


@fill
class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` on normfast's kernels (affine and running statistics off by default).

    {torch_running}

    {torch_examples}
    >>> m = nft.InstanceNorm2d(2, affine=True, track_running_stats=True)
    >>> _ = m(torch.randn(4, 2, 5, 5))
    >>> m.running_var.shape, m.weight.shape
    (torch.Size([2]), torch.Size([2]))
    """


@fill
class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` on normfast's kernels: input (N, C, D, H, W) or (C, D, H, W).

    {torch_running}

    {torch_examples}
    >>> nft.InstanceNorm3d(2)(torch.randn(2, 3, 3, 3)).shape      # unbatched
    torch.Size([2, 3, 3, 3])
    """


@fill
class AddLayerNorm(nn.LayerNorm):
    """Fused residual add + LayerNorm: ``forward(x, residual) -> (layer_norm(x + residual), x + residual)``.

    Same constructor, parameters and ``state_dict`` keys as ``torch.nn.LayerNorm`` (load a
    LayerNorm's weights into it).  One pass over memory instead of two; gradients reach x,
    residual and, through the returned sum, the next block.

    {torch_ln_params}

    {torch_examples}
    >>> m = nft.AddLayerNorm(16)
    >>> x, r = torch.randn(2, 16), torch.randn(2, 16)
    >>> y, h = m(x, r)
    >>> torch.equal(h, x + r), torch.allclose(y, torch.nn.functional.layer_norm(x + r, (16,)), atol=1e-5)
    (True, True)
    """

    @fill
    def forward(self, x, residual):
        """``h = x + residual``, then ``y = layer_norm(h)``, in one pass.

        {forward_add}
        """
        return F.add_layer_norm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps)


@fill
class AddRMSNorm(nn.RMSNorm):
    """Fused residual add + RMSNorm: ``forward(x, residual) -> (rms_norm(x + residual), x + residual)``.

    Same constructor, parameters and ``state_dict`` keys as ``torch.nn.RMSNorm``.

    {torch_rms_params}

    {torch_examples}
    >>> m = nft.AddRMSNorm(4)
    >>> y, h = m(torch.ones(1, 4), torch.ones(1, 4))
    >>> h.tolist(), round(y.sum().item(), 4)
    ([[2.0, 2.0, 2.0, 2.0]], 4.0)
    """

    @fill
    def forward(self, x, residual):
        """``h = x + residual``, then ``y = rms_norm(h)``, in one pass.

        {forward_add}
        """
        return F.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps)


SWAPS = {nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm, nn.GroupNorm: GroupNorm,
         nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
         nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d}


@fill
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

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.

    {torch_examples}
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    >>> type(nft.patch(model)[1]).__module__
    'normfast.torch._modules'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        new = SWAPS.get(type(module))
        if new is not None:
            module.__class__ = new
    return model


@fill
def unpatch(model):
    """Undo :func:`patch`: normfast norm modules of ``model`` become the torch classes again.

    Parameters
    ----------
    model : torch.nn.Module
        Its normfast norm modules (exact types) get the torch class back, in place.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    {torch_examples}
    >>> model = nft.patch(torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    >>> type(nft.unpatch(model)[0]) is torch.nn.BatchNorm1d
    True
    """
    back = {v: k for k, v in SWAPS.items()}
    for module in model.modules():
        old = back.get(type(module))
        if old is not None:
            module.__class__ = old
    return model
