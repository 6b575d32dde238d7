"""The computations behind every registered op: torch CPU tensors in, torch tensors out.

Each function reads its tensors as zero-copy NumPy views, calls normfast's NumPy operator
(``normfast._layer_norm.layer_norm`` ...) and wraps the NumPy results back without a copy.
The registered ops (``_ops.py``) and the eager autograd functions both call these, so the
compiled and the eager path give identical results.

Layouts: channel-wise ops (batch/group/instance norm) read an input whose
``x.movedim(1, -1)`` is contiguous (channels_last, channels_last_3d, an (N, L, C) tensor
seen as (N, C, L)) with ``channel_axis=-1``: no copy, and the result has x's strides.
``layout_like`` gives the same strides for the fake (meta) implementations.

Dtypes: the kernels take float16/32/64.  bfloat16 is converted to float32 here (one copy
in, one rounding copy out; statistics and math in float64 as for every dtype); results
come back in the input dtype.  Parameters and running buffers may have another dtype than
x (float32 weights with bfloat16 activations, as mixed-precision code has them).
"""
import math

import numpy as np
import torch

from .. import _add_norm, _batch_norm, _group_norm, _instance_norm, _layer_norm, _normalize, _rms_norm
from .._core import apply_affine as _core_apply_affine
from .._cpu import _backward
from .._engine_cpu import empty_aligned as _empty_aligned
from .._running import running_stats as _running_stats
from .._cpu._normalize import rows_fast
from .._threads import get_num_threads

_NATIVE = (torch.float16, torch.float32, torch.float64)
_FAST = (torch.float32, torch.float64)


def _np(t):
    """A tensor (x, weight, grad) as a NumPy array the kernels take; None stays None."""
    if t is None:
        return None
    if not t.is_cpu:
        raise TypeError(f"normfast.torch: CPU tensors only, got a tensor on {t.device}")
    if t.dtype not in _NATIVE:
        t = t.float()
    return _view(t)


def _back(a, dtype):
    """A NumPy result as a tensor of ``dtype`` (no copy when the dtype already matches)."""
    t = torch.from_numpy(a)
    return t if t.dtype == dtype else t.to(dtype)


def _stat(a):
    """Statistics (float64) as a contiguous tensor: the kernels may return strided views."""
    return torch.from_numpy(np.ascontiguousarray(a))


def _opt_back(a, dtype):
    return torch.empty(0, dtype=dtype) if a is None else _back(a, dtype)


def _tup(shape):
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _pdtype(p, x):
    return x.dtype if p is None else p.dtype


def channel_layout(x):
    """(tensor whose memory is C-contiguous, channel_axis) for a channel-wise op."""
    if x.dim() > 2 and not x.is_contiguous():
        xl = x.movedim(1, -1)
        if xl.is_contiguous():
            return xl, -1
    return x.contiguous(), 1


def layout_like(xl, ca, dtype=None):
    """An empty tensor with the strides the real implementation returns for ``x``."""
    y = torch.empty_like(xl, dtype=dtype, memory_format=torch.contiguous_format)
    return y.movedim(-1, 1) if ca == -1 else y


def _from_channel_layout(y, ca, dtype):
    t = _back(y, dtype)
    return t.movedim(-1, 1) if ca == -1 else t


class _Buffer:
    """A running-statistics buffer as a NumPy view updated in place (through a float32 copy
    written back for bfloat16 buffers)."""

    def __init__(self, t):
        self.t = t
        self.a = None if t is None else _np(t)

    def write_back(self):
        if self.t is not None and self.t.dtype not in _NATIVE:
            self.t.copy_(torch.from_numpy(self.a))


def f64(shape, like):
    return like.new_empty(shape, dtype=torch.float64)


# ----------------------------------------------------------------- row-wise ops
def layer_norm(x, normalized_shape, weight, bias, eps):
    r = rows_fast(x, normalized_shape, weight, bias, eps, None, True, False)   # the common call
    if r is not NotImplemented:
        return r
    xc = x.contiguous()
    y, mean, rstd = _layer_norm.layer_norm(_np(xc), _tup(normalized_shape), _np(weight), _np(bias), eps,
                                           return_stats=True)
    return _back(y, x.dtype), _stat(mean), _stat(rstd)


def layer_norm_backward(grad_out, x, mean, rstd, normalized_shape, weight, output_mask):
    r = _rows_backward_direct(grad_out, x, mean, rstd, normalized_shape, weight, output_mask)
    if r is not None:
        return r
    gx, gw, gb = _layer_norm.layer_norm_backward(
        _np(grad_out.contiguous()), _np(x.contiguous()), _np(mean), _np(rstd), _tup(normalized_shape),
        _np(weight), needs_input_grad=tuple(output_mask))
    pd = _pdtype(weight, x)
    return _opt_back(gx, x.dtype), _opt_back(gw, pd), _opt_back(gb, pd)


def _rows_backward_direct(grad_out, x, mean, rstd, normalized_shape, weight, output_mask):
    """The common eager backward of layer_norm / rms_norm (mean None) straight to the kernel:
    contiguous float32/float64 tensors of one dtype, statistics as the forward saved them.  The
    same kernel call, on the same arrays, as the general path (``normfast.layer_norm_backward``),
    without its argument parsing (~20 us for a (16, 768) call); None for any other call."""
    dt = x.dtype
    if (dt not in _FAST or not x.is_cpu or grad_out.dtype is not dt
            or (weight is not None and (weight.dtype is not dt or not weight.is_contiguous()))
            or rstd.dtype is not torch.float64 or not rstd.is_contiguous()
            or (mean is not None and (mean.dtype is not torch.float64 or not mean.is_contiguous()))):
        return None
    shape = _tup(normalized_shape)
    k = len(shape)
    if k == 0 or x.dim() < k or tuple(x.shape[x.dim() - k:]) != shape or grad_out.shape != x.shape:
        return None
    N = math.prod(shape)
    M = x.numel() // N if N else 0
    if N == 0 or M == 0 or rstd.numel() != M or (mean is not None and mean.numel() != M):
        return None
    xa, ga = _view(x.contiguous()), _view(grad_out.contiguous())
    need_dx, need_dw, need_db = (bool(v) for v in output_mask)
    need_dw, need_db = need_dw and weight is not None, need_db and weight is not None
    w = np.ones(N) if weight is None else _view(weight).astype(np.float64).reshape(N)
    dx = np.empty(xa.shape, xa.dtype) if need_dx else None
    dw = np.empty(N) if need_dw else None
    db = np.empty(N) if need_db else None
    _backward.rows_backward(xa, ga, None, M, N, None if mean is None else _view(mean), _view(rstd), w, dx, dw, db,
                            get_num_threads())
    pd = _pdtype(weight, x)
    return (_opt_back(dx, dt), _opt_back(None if dw is None else dw.reshape(shape), pd),
            _opt_back(None if db is None else db.reshape(shape), pd))


def _view(t):
    """NumPy view of a native-dtype CPU tensor: the cheapest route (detach / resolve only when needed)."""
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    return t.numpy()


def layer_norm_y(x, normalized_shape, weight, bias, eps):
    """``layer_norm``'s y alone, for eager calls without autograd: the same kernel call, less
    per-call work (no statistics wrapped, parameters read as they are); the common call takes
    the kernels' C-level fast path."""
    y = rows_fast(x, normalized_shape, weight, bias, eps, None, False, False)
    if y is not NotImplemented:
        return y
    if x.dtype not in _NATIVE or x.dtype != _pdtype(weight, x) or not x.is_contiguous():
        return layer_norm(x, normalized_shape, weight, bias, eps)[0]
    return torch.from_numpy(_layer_norm.layer_norm(_view(x), normalized_shape, _view(weight), _view(bias), eps))


def rms_norm_y(x, normalized_shape, weight, eps):
    """``rms_norm``'s y alone, for eager calls without autograd (as ``layer_norm_y``)."""
    y = rows_fast(x, normalized_shape, weight, None, eps, None, False, True)
    if y is not NotImplemented:
        return y
    if x.dtype not in _NATIVE or x.dtype != _pdtype(weight, x) or not x.is_contiguous():
        return rms_norm(x, normalized_shape, weight, eps)[0]
    return torch.from_numpy(_rms_norm.rms_norm(_view(x), normalized_shape, _view(weight), rms_eps(eps, x.dtype)))


def rms_eps(eps, dtype):
    """eps=None: the machine epsilon of the input dtype (torch's rule, bfloat16 included)."""
    return torch.finfo(dtype).eps if eps is None else eps


def rms_norm(x, normalized_shape, weight, eps):
    r = rows_fast(x, normalized_shape, weight, None, eps, None, True, True)     # the common call
    if r is not NotImplemented:
        return r
    y, rstd = _rms_norm.rms_norm(_np(x.contiguous()), _tup(normalized_shape), _np(weight),
                                 rms_eps(eps, x.dtype), return_stats=True)
    return _back(y, x.dtype), _stat(rstd)


def rms_norm_backward(grad_out, x, rstd, normalized_shape, weight, output_mask):
    r = _rows_backward_direct(grad_out, x, None, rstd, normalized_shape, weight, output_mask + [False])
    if r is not None:
        return r[:2]
    gx, gw = _rms_norm.rms_norm_backward(_np(grad_out.contiguous()), _np(x.contiguous()), _np(rstd),
                                         _tup(normalized_shape), _np(weight), needs_input_grad=tuple(output_mask))
    return _opt_back(gx, x.dtype), _opt_back(gw, _pdtype(weight, x))


def add_layer_norm(x, residual, normalized_shape, weight, bias, eps):
    y, h, mean, rstd = _add_norm.add_layer_norm(_np(x.contiguous()), _np(residual.contiguous().to(x.dtype)),
                                                _tup(normalized_shape), _np(weight), _np(bias), eps,
                                                return_stats=True)
    return _back(y, x.dtype), _back(h, x.dtype), _stat(mean), _stat(rstd)


def add_rms_norm(x, residual, normalized_shape, weight, eps):
    y, h, rstd = _add_norm.add_rms_norm(_np(x.contiguous()), _np(residual.contiguous().to(x.dtype)),
                                        _tup(normalized_shape), _np(weight), rms_eps(eps, x.dtype),
                                        return_stats=True)
    return _back(y, x.dtype), _back(h, x.dtype), _stat(rstd)


def add_norm_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, rms):
    """(grad of x and residual, grad_weight, grad_bias): grad_h (or None) joins in the same pass."""
    gy = torch.zeros_like(h) if grad_y is None else grad_y
    gh = None if grad_h is None else _np(grad_h.contiguous())
    args = (_np(gy.contiguous()), gh, _np(h.contiguous()))
    if rms:
        gx, gw = _add_norm.add_rms_norm_backward(*args, _np(rstd), _tup(normalized_shape), _np(weight))
        gb = None
    else:
        gx, gw, gb = _add_norm.add_layer_norm_backward(*args, _np(mean), _np(rstd), _tup(normalized_shape),
                                                       _np(weight))
    pd = _pdtype(weight, h)
    return _back(gx, h.dtype), _opt_back(gw, pd), _opt_back(gb, pd)


def normalize(x, axis, weight, bias, eps):
    y, mean, rstd = _normalize.normalize(_np(x), tuple(axis), _np(weight), _np(bias), eps, return_stats=True)
    return _back(y, x.dtype), _stat(mean), _stat(rstd)


def normalize_axes(axis, ndim):
    axes = sorted(a % ndim for a in axis)
    return axes, [d for d in range(ndim) if d not in axes]


def normalize_backward(grad_out, x, mean, rstd, axis, weight, output_mask):
    """normalize's gradient is layer_norm's once the normalized axes are moved to the end."""
    axes, kept = normalize_axes(axis, x.dim())
    perm = kept + axes
    shape = [x.shape[a] for a in axes]
    gx, gw, gb = layer_norm_backward(grad_out.permute(perm), x.permute(perm), mean, rstd, shape, weight,
                                     output_mask)
    if gx.numel():
        gx = gx.permute([perm.index(d) for d in range(x.dim())]).contiguous()
    return gx, gw, gb


# ------------------------------------------------------------- channel-wise ops
def _with_buffers(op, x, weight, bias, running_mean, running_var, flag, momentum, eps):
    """batch_norm / instance_norm (``op``, with its training flag) on x's channel layout; the
    running buffers are updated in place."""
    xl, ca = channel_layout(x)
    rm, rv = _Buffer(running_mean), _Buffer(running_var)
    y, mean, rstd = op(_np(xl), rm.a, rv.a, _np(weight), _np(bias), flag, momentum, eps, channel_axis=ca,
                       return_stats=True)
    rm.write_back()
    rv.write_back()
    return _from_channel_layout(y, ca, x.dtype), _stat(mean), _stat(rstd)


def _channel_grads(backward, grad_out, x, weight, output_mask, *args):
    """A channel-wise NumPy backward on x's channel layout: ``backward(grad_out, x, *args,
    channel_axis=, needs_input_grad=)``, its gradients back as tensors (empty where not computed)."""
    xl, ca = channel_layout(x)
    gl = grad_out.movedim(1, -1).contiguous() if ca == -1 else grad_out.contiguous()
    gx, gw, gb = backward(_np(gl), _np(xl), *args, channel_axis=ca, needs_input_grad=tuple(output_mask))
    pd = _pdtype(weight, x)
    gx = _opt_back(None, x.dtype) if gx is None else _from_channel_layout(gx, ca, x.dtype)
    return gx, _opt_back(gw, pd), _opt_back(gb, pd)


def _batch_norm_eval_direct(x, weight, bias, running_mean, running_var, eps):
    """Eval-mode batch_norm for the common call (float32/float64 CPU tensors of one dtype, (C,)
    contiguous parameters and buffers): the general path's layout and operations
    on the same arrays (running_stats, apply_affine) without its argument parsing (~50 us for a
    small channels_last call); None for any other call."""
    dt = x.dtype
    if dt not in _FAST or not x.is_cpu or x.dim() < 2 or running_mean is None or running_var is None \
            or type(eps) is not float or not eps >= 0 or x.shape[1] == 0:
        return None
    C = x.shape[1]
    for t in (weight, bias, running_mean, running_var):
        if t is not None and (t.dtype is not dt or tuple(t.shape) != (C,) or not t.is_contiguous()):
            return None
    xl, ca = channel_layout(x)             # the general path's layout (_with_buffers)
    xa = _view(xl)
    n = xa.size
    dims = (1, n // C, C, 1) if ca == -1 else (1, x.shape[0], C, n // (x.shape[0] * C) if n else 0)
    mean, rstd = _running_stats(_view(running_mean), _view(running_var), eps, "training")
    w = None if weight is None else _view(weight).astype(np.float64)
    b = None if bias is None else _view(bias).astype(np.float64)
    y = _empty_aligned(xa.shape, xa.dtype)
    _core_apply_affine(xa, y, dims, mean, rstd, w, b)
    return _from_channel_layout(y, ca, dt), _stat(mean), _stat(rstd)


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    if not training:
        r = _batch_norm_eval_direct(x, weight, bias, running_mean, running_var, eps)
        if r is not None:
            return r
    return _with_buffers(_batch_norm.batch_norm, x, weight, bias, running_mean, running_var, training, momentum, eps)


def batch_norm_backward(grad_out, x, mean, rstd, weight, training, output_mask):
    return _channel_grads(_batch_norm.batch_norm_backward, grad_out, x, weight, output_mask, _np(mean), _np(rstd),
                          _np(weight), training)


def group_norm(x, num_groups, weight, bias, eps):
    xl, ca = channel_layout(x)
    y, mean, rstd = _group_norm.group_norm(_np(xl), num_groups, _np(weight), _np(bias), eps, channel_axis=ca,
                                           return_stats=True)
    return _from_channel_layout(y, ca, x.dtype), _stat(mean), _stat(rstd)


def group_norm_backward(grad_out, x, mean, rstd, num_groups, weight, output_mask):
    return _channel_grads(_group_norm.group_norm_backward, grad_out, x, weight, output_mask, _np(mean), _np(rstd),
                          num_groups, _np(weight))


def instance_norm(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    return _with_buffers(_instance_norm.instance_norm, x, weight, bias, running_mean, running_var, use_input_stats,
                         momentum, eps)


def instance_norm_backward(grad_out, x, mean, rstd, weight, use_input_stats, output_mask):
    if use_input_stats:
        return _channel_grads(_instance_norm.instance_norm_backward, grad_out, x, weight, output_mask, _np(mean),
                              _np(rstd), _np(weight))
    # running statistics are constants: the eval-mode batch-norm gradient, per channel
    return _channel_grads(_batch_norm.batch_norm_backward, grad_out, x, weight, output_mask, _np(mean)[0],
                          _np(rstd)[0], _np(weight), False)
