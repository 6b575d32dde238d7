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
from .._docs import fill

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


@fill
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.layer_norm``, on normfast's kernels.

    Parameters
    ----------
    {input}
    {torch_ln_args}

    {torch_tail}

    {torch_examples}
    >>> x = torch.randn(3, 8, dtype=torch.float64)
    >>> torch.allclose(nft.layer_norm(x, (8,)), torch.nn.functional.layer_norm(x, (8,)))
    True
    """
    path = _path(input, weight, bias)
    if path == _DIRECT:
        return _impl.layer_norm_y(input, normalized_shape, weight, bias, eps)
    return _call("layer_norm", path, input, _shape(normalized_shape), weight, bias, eps)[0]


@fill
def rms_norm(input, normalized_shape, weight=None, eps=None):
    """As ``torch.nn.functional.rms_norm``, on normfast's kernels.

    Parameters
    ----------
    {input}
    {torch_rms_args}

    {torch_tail}

    {torch_examples}
    >>> nft.rms_norm(torch.tensor([[3.0, 4.0]]), [2], eps=0.0)
    tensor([[0.8485, 1.1314]])
    """
    path = _path(input, weight)
    if path == _DIRECT:
        return _impl.rms_norm_y(input, normalized_shape, weight, eps)
    return _call("rms_norm", path, input, _shape(normalized_shape), weight, eps)[0]


@fill
def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``h = input + residual; y = layer_norm(h)`` fused: one pass over memory.

    Gradients reach input and residual (and the next block's gradient through h).

    Parameters
    ----------
    {input}
    residual : torch.Tensor
        Of input's shape (converted to input's dtype).
    {torch_ln_args}

    {torch_add_tail}

    {torch_examples}
    >>> x, r = torch.randn(2, 4, requires_grad=True), torch.zeros(2, 4)
    >>> y, h = nft.add_layer_norm(x, r, 4)
    >>> y.sum().backward()                     # each row of y sums to 0 whatever x is
    >>> x.grad.abs().max().item() < 1e-6
    True
    """
    path = _path(input, residual, weight, bias)
    y, h = _call("add_layer_norm", path, input, residual, _shape(normalized_shape), weight, bias, eps)[:2]
    return y, h


@fill
def add_rms_norm(input, residual, normalized_shape, weight=None, eps=None):
    """``h = input + residual; y = rms_norm(h)`` fused: one pass over memory.

    Parameters
    ----------
    {input}
    residual : torch.Tensor
        Of input's shape (converted to input's dtype).
    {torch_rms_args}

    {torch_add_tail}

    {torch_examples}
    >>> y, h = nft.add_rms_norm(torch.ones(1, 3), torch.ones(1, 3), 3)
    >>> h
    tensor([[2., 2., 2.]])
    """
    path = _path(input, residual, weight)
    y, h = _call("add_rms_norm", path, input, residual, _shape(normalized_shape), weight, eps)[:2]
    return y, h


@fill
def normalize(input, axis=-1, weight=None, bias=None, eps=1e-5):
    """As :func:`normfast.normalize`: standardize over ``axis``, with gradients.

    Parameters
    ----------
    {input}
    axis : int or sequence of int, default -1
        The normalized dimensions (any, not only trailing ones).
    weight, bias : torch.Tensor of shape ``input.shape[axis]``, optional
        Affine over the normalized dimensions.
    {eps}

    {torch_tail}

    {torch_examples}
    >>> nft.normalize(torch.tensor([[1.0, 10.0], [3.0, 30.0]]), axis=0, eps=0.0)
    tensor([[-1., -1.],
            [ 1.,  1.]])
    """
    path = _path(input, weight, bias)
    axes = [axis] if isinstance(axis, int) else list(axis)
    return _call("normalize", path, input, axes, weight, bias, eps)[0]


def _copy_back(path, training, buffers, updated):
    """On the op path the updated running statistics come back as new tensors."""
    if path == _OP and training:
        for buf, new in zip(buffers, updated):
            if buf is not None:
                buf.copy_(new.detach())


@fill
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.batch_norm`` (channels on dim 1; channels_last without a copy).

    Parameters
    ----------
    {input}
    running_mean, running_var : torch.Tensor of shape (C,) or None
        Updated in place when training (unbiased variance), used to normalize otherwise.
    {torch_wb_C}
    training : bool, default False
        Normalize with the batch statistics (and update the running ones when given).
    {torch_running_tail}

    {torch_examples}
    >>> rm, rv = torch.zeros(2), torch.ones(2)
    >>> y = nft.batch_norm(torch.arange(8.0).reshape(4, 2), rm, rv, training=True)
    >>> rm
    tensor([0.3000, 0.4000])
    """
    path = _path(input, weight, bias)
    out = _call("batch_norm", path, input, weight, bias, running_mean, running_var, bool(training),
                float(momentum), eps)
    _copy_back(path, training, (running_mean, running_var), out[3:])
    return out[0]


@fill
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.group_norm`` (channels_last without a copy).

    Parameters
    ----------
    {input}
    num_groups : int
        Divides C (dim 1); statistics per sample and group of channels.
    {torch_wb_C}
    {eps}

    {torch_tail}

    {torch_examples}
    >>> nft.group_norm(torch.randn(2, 6, 4).to(torch.bfloat16), 3).dtype
    torch.bfloat16
    """
    path = _path(input, weight, bias)
    return _call("group_norm", path, input, num_groups, weight, bias, eps)[0]


@fill
def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.instance_norm`` (channels_last without a copy).

    Parameters
    ----------
    {input}
    running_mean, running_var : torch.Tensor of shape (C,), optional
        With ``use_input_stats``: updated in place (batch average of the instance statistics);
        without: used to normalize.
    {torch_wb_C}
    use_input_stats : bool, default True
        Normalize with each instance's own statistics.
    {torch_running_tail}

    {torch_examples}
    >>> x = torch.randn(2, 3, 7, 7)
    >>> torch.allclose(nft.instance_norm(x), torch.nn.functional.instance_norm(x), atol=1e-5)
    True
    """
    path = _path(input, weight, bias)
    out = _call("instance_norm", path, input, weight, bias, running_mean, running_var, bool(use_input_stats),
                float(momentum), eps)
    _copy_back(path, use_input_stats, (running_mean, running_var), out[3:])
    return out[0]
