"""torch.autograd adapters: use normfast's CPU forward and backward inside a PyTorch model.

    import normfast.torch as nft
    y = nft.layer_norm(x, (1024,), weight, bias)       # like torch.nn.functional.layer_norm
    y.sum().backward()                                   # gradients from normfast's backward kernels

Tensors cross zero-copy through DLPack (CPU tensors).  Imported only on request.
"""
import torch

import normfast as _nf


def _d(t):
    return None if t is None else t.detach()


def _saved_weight(weight, bias, shape, dtype):
    """The weight the backward uses: ones when only a bias was given, an empty tensor for none."""
    if weight is None and bias is not None:
        return torch.ones(shape, dtype=dtype)
    return torch.empty(0) if weight is None else weight.detach()


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        y, mean, rstd = _nf.layer_norm(_d(x), normalized_shape, _d(weight), _d(bias), eps, return_stats=True)
        ctx.save_for_backward(x, _saved_weight(weight, bias, normalized_shape, x.dtype), mean, rstd)
        ctx.normalized_shape = normalized_shape
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, mean, rstd = ctx.saved_tensors
        nx, _, nw, nb, _ = ctx.needs_input_grad
        gx, gw, gb = _nf.layer_norm_backward(gy.contiguous(), x.detach(), mean, rstd, ctx.normalized_shape,
                                             None if w.numel() == 0 else w, needs_input_grad=(nx, nw, nb))
        return gx, None, gw, gb, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        y, rstd = _nf.rms_norm(_d(x), normalized_shape, _d(weight), eps, return_stats=True)
        ctx.save_for_backward(x, _saved_weight(weight, None, normalized_shape, x.dtype), rstd)
        ctx.normalized_shape = normalized_shape
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, rstd = ctx.saved_tensors
        nx, _, nw, _ = ctx.needs_input_grad
        gx, gw = _nf.rms_norm_backward(gy.contiguous(), x.detach(), rstd, ctx.normalized_shape,
                                       None if w.numel() == 0 else w, needs_input_grad=(nx, nw))
        return gx, None, gw, None


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, training, momentum, eps):
        y, mean, rstd = _nf.batch_norm(_d(x), running_mean, running_var, _d(weight), _d(bias), training, momentum,
                                       eps, return_stats=True)
        ctx.save_for_backward(x, _saved_weight(weight, bias, x.shape[1], x.dtype), mean, rstd)
        ctx.training = training
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, mean, rstd = ctx.saved_tensors
        nx, _, _, nw, nb, _, _, _ = ctx.needs_input_grad
        gx, gw, gb = _nf.batch_norm_backward(gy.contiguous(), x.detach(), mean, rstd,
                                             None if w.numel() == 0 else w, ctx.training,
                                             needs_input_grad=(nx, nw, nb))
        return gx, None, None, gw, gb, None, None, None


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        y, mean, rstd = _nf.group_norm(_d(x), num_groups, _d(weight), _d(bias), eps, return_stats=True)
        ctx.save_for_backward(x, _saved_weight(weight, bias, x.shape[1], x.dtype), mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, mean, rstd = ctx.saved_tensors
        nx, _, nw, nb, _ = ctx.needs_input_grad
        gx, gw, gb = _nf.group_norm_backward(gy.contiguous(), x.detach(), mean, rstd, ctx.num_groups,
                                             None if w.numel() == 0 else w, needs_input_grad=(nx, nw, nb))
        return gx, None, gw, gb, None


def _shape(normalized_shape):
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm with normfast's kernels (CPU tensors)."""
    return _LayerNorm.apply(input.contiguous(), _shape(normalized_shape), weight, bias, eps)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """torch.nn.functional.rms_norm with normfast's kernels (CPU tensors)."""
    return _RMSNorm.apply(input.contiguous(), _shape(normalized_shape), weight, eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm with normfast's kernels (channels on dim 1, CPU tensors)."""
    return _BatchNorm.apply(input.contiguous(), running_mean, running_var, weight, bias, training, momentum, eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.group_norm with normfast's kernels (CPU tensors)."""
    return _GroupNorm.apply(input.contiguous(), num_groups, weight, bias, eps)
