"""normfast's operators registered with torch: ``torch.ops.normfast.<name>``.

Every forward and every backward is a ``torch.library.custom_op`` with a fake (meta)
implementation, and every forward has its gradient registered (``register_autograd``)
through the matching backward op, so ``torch.compile(fullgraph=True)`` and
``torch.export`` see them as single nodes and ``torch.profiler`` shows them by name.

Eager calls skip the op layer (a Python custom op costs ~10 us per call on top of the
kernel): ``EAGER[name]`` is a ``torch.autograd.Function`` with the same forward (the same
``_impl`` function), the same saved tensors and the same backward formula, which calls the
``_impl`` backward directly instead of the registered backward op.
"""
import inspect
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _impl

NS = "normfast"
OPS = {}            # name -> registered op
EAGER = {}          # name -> autograd.Function with the same forward/backward


def _op(fake):
    """Decorator: register ``fn`` as the op ``normfast::<fn's name>`` with the fake (meta)
    implementation ``fake``, called with the op's arguments by name (it takes the ones it
    needs and ``**_``)."""
    def deco(fn):
        op = torch.library.custom_op(f"{NS}::{fn.__name__}", fn, mutates_args=())
        sig = inspect.signature(fn)
        op.register_fake(lambda *args, **kwargs: fake(**sig.bind(*args, **kwargs).arguments))
        OPS[fn.__name__] = op
        return op
    return deco


def _lead(x, ndims):
    return tuple(x.shape[:x.dim() - ndims])


def _grad_or_empty(cond, shape, like, dtype):
    return like.new_empty(shape, dtype=dtype) if cond else like.new_empty((0,), dtype=dtype)


def _pd(w, x):
    return x.dtype if w is None else w.dtype


# ------------------------------------------------------------------ fakes
def _or_empty(buf, like):
    return like.new_empty((0,)) if buf is None else buf


def _y(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _kept_shape(x, axis):
    _, kept = _impl.normalize_axes(axis, x.dim())
    return tuple(x.shape[d] for d in kept)


def _rows_fake(x, normalized_shape, **_):
    lead = _lead(x, len(normalized_shape))
    return _y(x), _impl.f64(lead, x), _impl.f64(lead, x)


def _rms_fake(x, normalized_shape, **_):
    return _y(x), _impl.f64(_lead(x, len(normalized_shape)), x)


def _add_rows_fake(x, normalized_shape, **_):
    return (_y(x),) + _rows_fake(x, normalized_shape)


def _add_rms_fake(x, normalized_shape, **_):
    return (_y(x),) + _rms_fake(x, normalized_shape)


def _normalize_fake(x, axis, **_):
    shape = _kept_shape(x, axis)
    return _y(x), _impl.f64(shape, x), _impl.f64(shape, x)


def _channels_fake(x, stats_shape):
    """y with x's layout (channels_last stays) and two float64 statistics."""
    xl, ca = _impl.channel_layout(x)
    return _impl.layout_like(xl, ca), _impl.f64(stats_shape, x), _impl.f64(stats_shape, x)


def _buffers_fake(running_mean, running_var, x):
    """The updated running buffers batch_norm / instance_norm return (empty when not given)."""
    return (_or_empty(None if running_mean is None else torch.empty_like(running_mean), x),
            _or_empty(None if running_var is None else torch.empty_like(running_var), x))


def _batch_norm_fake(x, running_mean, running_var, **_):
    return _channels_fake(x, (x.shape[1],)) + _buffers_fake(running_mean, running_var, x)


def _instance_norm_fake(x, running_mean, running_var, **_):
    return _channels_fake(x, (x.shape[0], x.shape[1])) + _buffers_fake(running_mean, running_var, x)


def _group_norm_fake(x, num_groups, **_):
    return _channels_fake(x, (x.shape[0], num_groups))


def _param_grads_fake(x, shape, weight, needs):
    """grad_weight (and grad_bias): the weight's dtype, empty where not needed or without a weight."""
    return tuple(_grad_or_empty(n and weight is not None, shape, x, _pd(weight, x)) for n in needs)


def _rows_grads_fake(x, normalized_shape, weight, output_mask, **_):
    """layer_norm_backward's (and, with a 2-entry mask, rms_norm_backward's) gradients."""
    gx = _grad_or_empty(output_mask[0], x.shape, x, x.dtype)
    return (gx,) + _param_grads_fake(x, normalized_shape, weight, output_mask[1:])


def _add_grads_fake(h, normalized_shape, weight, rms, **_):
    return (_y(h),) + _param_grads_fake(h, normalized_shape, weight, (True, not rms))


def _normalize_grads_fake(x, axis, weight, output_mask, **_):
    axes, _ = _impl.normalize_axes(axis, x.dim())
    return _rows_grads_fake(x, [x.shape[a] for a in axes], weight, output_mask)


def _channel_grads_fake(x, weight, output_mask, **_):
    xl, ca = _impl.channel_layout(x)
    gx = _impl.layout_like(xl, ca, x.dtype) if output_mask[0] else x.new_empty((0,))
    return (gx,) + _param_grads_fake(x, (x.shape[1],), weight, output_mask[1:])


# ------------------------------------------------------------------ forward ops
@_op(_rows_fake)
def layer_norm(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.layer_norm(x, normalized_shape, weight, bias, eps)


@_op(_rms_fake)
def rms_norm(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
             eps: Optional[float]) -> Tuple[Tensor, Tensor]:
    return _impl.rms_norm(x, normalized_shape, weight, eps)


@_op(_add_rows_fake)
def add_layer_norm(x: Tensor, residual: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _impl.add_layer_norm(x, residual, normalized_shape, weight, bias, eps)


@_op(_add_rms_fake)
def add_rms_norm(x: Tensor, residual: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                 eps: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.add_rms_norm(x, residual, normalized_shape, weight, eps)


@_op(_normalize_fake)
def normalize(x: Tensor, axis: List[int], weight: Optional[Tensor], bias: Optional[Tensor],
              eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.normalize(x, axis, weight, bias, eps)


def _updated(buf):
    """A copy of a running buffer for the functional ops to update (they return it)."""
    return None if buf is None else buf.clone()


def _with_buffers(impl, x, weight, bias, running_mean, running_var, flag, momentum, eps):
    """batch_norm / instance_norm (``impl``) as a functional op: the running buffers are updated
    on copies, which are returned (empty tensors when none are given)."""
    rm, rv = _updated(running_mean), _updated(running_var)
    y, mean, rstd = impl(x, weight, bias, rm, rv, flag, momentum, eps)
    return y, mean, rstd, _or_empty(rm, x), _or_empty(rv, x)


# Ops with registered gradients must be functional: batch_norm and instance_norm return the
# updated running statistics (empty tensors when none are given); the callers copy them
# into the module's buffers, which torch.compile / torch.export record as buffer mutations.
@_op(_batch_norm_fake)
def batch_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
               running_var: Optional[Tensor], training: bool, momentum: float,
               eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _with_buffers(_impl.batch_norm, x, weight, bias, running_mean, running_var, training, momentum, eps)


@_op(_group_norm_fake)
def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.group_norm(x, num_groups, weight, bias, eps)


@_op(_instance_norm_fake)
def instance_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                  running_var: Optional[Tensor], use_input_stats: bool, momentum: float,
                  eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _with_buffers(_impl.instance_norm, x, weight, bias, running_mean, running_var, use_input_stats,
                         momentum, eps)


# ----------------------------------------------------------------- backward ops
@_op(_rows_grads_fake)
def layer_norm_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, normalized_shape: List[int],
                        weight: Optional[Tensor], output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.layer_norm_backward(grad_out, x, mean, rstd, normalized_shape, weight, output_mask)


@_op(_rows_grads_fake)
def rms_norm_backward(grad_out: Tensor, x: Tensor, rstd: Tensor, normalized_shape: List[int],
                      weight: Optional[Tensor], output_mask: List[bool]) -> Tuple[Tensor, Tensor]:
    return _impl.rms_norm_backward(grad_out, x, rstd, normalized_shape, weight, output_mask)


@_op(_add_grads_fake)
def add_norm_backward(grad_y: Optional[Tensor], grad_h: Optional[Tensor], h: Tensor, mean: Optional[Tensor],
                      rstd: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                      rms: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.add_norm_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, rms)


@_op(_channel_grads_fake)
def batch_norm_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                        training: bool, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.batch_norm_backward(grad_out, x, mean, rstd, weight, training, output_mask)


@_op(_channel_grads_fake)
def group_norm_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, num_groups: int,
                        weight: Optional[Tensor], output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight, output_mask)


@_op(_channel_grads_fake)
def instance_norm_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                           use_input_stats: bool, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.instance_norm_backward(grad_out, x, mean, rstd, weight, use_input_stats, output_mask)


@_op(_normalize_grads_fake)
def normalize_backward(grad_out: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, axis: List[int],
                       weight: Optional[Tensor], output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _impl.normalize_backward(grad_out, x, mean, rstd, axis, weight, output_mask)


# -------------------------------------------------------------------- gradients
# Each rule: setup(ctx, inputs, output) saves what the backward needs; grads(ctx, B, *grad_outputs)
# returns one gradient per forward input, calling the backward ``B.<name>_backward`` (B: the
# registered ops while compiling, ``_impl`` in eager mode).
def _weight_for_grad(weight, bias, shape, like):
    """The weight the backward uses: ones when only a bias was given (bias grad still needed)."""
    if weight is None and bias is not None:
        return torch.ones(shape, dtype=bias.dtype, device=like.device)
    return weight


def _keep(g, need):
    return g if need else None


def _mask(ctx, ix, iw, ib):
    n = ctx.needs_input_grad
    return [bool(n[ix]), bool(n[iw]), bool(ib is not None and n[ib])]


def _setup_layer_norm(ctx, inputs, output):
    x, shape, weight, bias, _ = inputs
    ctx.shape = list(shape)
    ctx.save_for_backward(x, _weight_for_grad(weight, bias, shape, x), output[1], output[2])


def _grads_layer_norm(ctx, B, gy, *_):
    x, w, mean, rstd = ctx.saved_tensors
    m = _mask(ctx, 0, 2, 3)
    gx, gw, gb = B.layer_norm_backward(gy, x, mean, rstd, ctx.shape, w, m)
    return _keep(gx, m[0]), None, _keep(gw, m[1]), _keep(gb, m[2]), None


def _setup_rms_norm(ctx, inputs, output):
    x, shape, weight, _ = inputs
    ctx.shape = list(shape)
    ctx.save_for_backward(x, weight, output[1])


def _grads_rms_norm(ctx, B, gy, *_):
    x, w, rstd = ctx.saved_tensors
    m = _mask(ctx, 0, 2, None)[:2]
    gx, gw = B.rms_norm_backward(gy, x, rstd, ctx.shape, w, m)
    return _keep(gx, m[0]), None, _keep(gw, m[1]), None


def _setup_add_layer_norm(ctx, inputs, output):
    x, _, shape, weight, bias, _ = inputs
    ctx.shape = list(shape)
    ctx.save_for_backward(output[1], _weight_for_grad(weight, bias, shape, x), output[2], output[3])


def _grads_add_layer_norm(ctx, B, gy, gh, *_):
    h, w, mean, rstd = ctx.saved_tensors
    n = ctx.needs_input_grad
    gi, gw, gb = B.add_norm_backward(gy, gh, h, mean, rstd, ctx.shape, w, False)
    return _keep(gi, n[0]), _keep(gi, n[1]), None, _keep(gw, n[3]), _keep(gb, n[4]), None


def _setup_add_rms_norm(ctx, inputs, output):
    _, _, shape, weight, _ = inputs
    ctx.shape = list(shape)
    ctx.save_for_backward(output[1], weight, output[2])


def _grads_add_rms_norm(ctx, B, gy, gh, *_):
    h, w, rstd = ctx.saved_tensors
    n = ctx.needs_input_grad
    gi, gw, _ = B.add_norm_backward(gy, gh, h, None, rstd, ctx.shape, w, True)
    return _keep(gi, n[0]), _keep(gi, n[1]), None, _keep(gw, n[3]), None


def _setup_normalize(ctx, inputs, output):
    x, axis, weight, bias, _ = inputs
    axes, _ = _impl.normalize_axes(axis, x.dim())
    ctx.axis = list(axis)
    ctx.save_for_backward(x, _weight_for_grad(weight, bias, [x.shape[a] for a in axes], x), output[1], output[2])


def _grads_normalize(ctx, B, gy, *_):
    x, w, mean, rstd = ctx.saved_tensors
    m = _mask(ctx, 0, 2, 3)
    gx, gw, gb = B.normalize_backward(gy, x, mean, rstd, ctx.axis, w, m)
    return _keep(gx, m[0]), None, _keep(gw, m[1]), _keep(gb, m[2]), None


def _setup_channels(ctx, inputs, output, flag_index):
    x, weight, bias = inputs[:3]
    ctx.flag = inputs[flag_index]
    ctx.save_for_backward(x, _weight_for_grad(weight, bias, (x.shape[1],), x), output[1], output[2])


def _grads_channels(ctx, backward, gy, n_inputs):
    x, w, mean, rstd = ctx.saved_tensors
    m = _mask(ctx, 0, 1, 2)
    gx, gw, gb = backward(gy, x, mean, rstd, w, ctx.flag, m)
    return (_keep(gx, m[0]), _keep(gw, m[1]), _keep(gb, m[2])) + (None,) * (n_inputs - 3)


def _setup_batch_norm(ctx, inputs, output):
    _setup_channels(ctx, inputs, output, 5)


def _grads_batch_norm(ctx, B, gy, *_):
    return _grads_channels(ctx, B.batch_norm_backward, gy, 8)


def _setup_instance_norm(ctx, inputs, output):
    _setup_channels(ctx, inputs, output, 5)


def _grads_instance_norm(ctx, B, gy, *_):
    return _grads_channels(ctx, B.instance_norm_backward, gy, 8)


def _setup_group_norm(ctx, inputs, output):
    x, G, weight, bias, _ = inputs
    ctx.groups = G
    ctx.save_for_backward(x, _weight_for_grad(weight, bias, (x.shape[1],), x), output[1], output[2])


def _grads_group_norm(ctx, B, gy, *_):
    x, w, mean, rstd = ctx.saved_tensors
    m = _mask(ctx, 0, 2, 3)
    gx, gw, gb = B.group_norm_backward(gy, x, mean, rstd, ctx.groups, w, m)
    return _keep(gx, m[0]), None, _keep(gw, m[1]), _keep(gb, m[2]), None


class _RegisteredBackward:
    """The backward ops seen as one namespace (what the compiled graph records)."""

    def __getattr__(self, name):
        return OPS[name]


def _register(name):
    setup, grads = globals()[f"_setup_{name}"], globals()[f"_grads_{name}"]
    registered = _RegisteredBackward()

    def backward(ctx, *grad_outputs):
        return grads(ctx, registered, *grad_outputs)

    OPS[name].register_autograd(backward, setup_context=setup)
    forward_impl = getattr(_impl, name)

    n_stats = 1 if name in ("rms_norm", "add_rms_norm") else 2

    # forward(ctx, ...) style: Function.apply binds no signature (setup_context style costs
    # an inspect.signature per call, ~10 us)
    def eager_forward(ctx, *inputs):
        output = forward_impl(*inputs)
        ctx.mark_non_differentiable(*output[-n_stats:])
        setup(ctx, inputs, output)
        return output

    @once_differentiable          # no double backward: a clear error instead of a silent zero
    def eager_backward(ctx, *grad_outputs):
        return grads(ctx, _impl, *grad_outputs)

    # a class per op, named so that grad_fn reads e.g. NormfastLayerNormBackward
    title = "".join(p.title() for p in name.split("_"))
    Eager = type(f"Normfast{title}", (torch.autograd.Function,), {
        "forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)})
    EAGER[name] = Eager


for _name in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "normalize", "batch_norm",
              "group_norm", "instance_norm"):
    _register(_name)
