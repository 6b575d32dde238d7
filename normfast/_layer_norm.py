"""layer_norm: normalization over the trailing ``normalized_shape`` dimensions."""
import numbers

from . import _core
from ._checks import check_eps, check_float_array, check_out, check_param


def normalized_axes(x, normalized_shape, fname):
    """Trailing axes named by ``normalized_shape`` (int or sequence of ints), checked against x."""
    if type(normalized_shape) is int:                       # fast path for the common call
        normalized_shape = (normalized_shape,)
    elif isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (int(normalized_shape),)
    if hasattr(normalized_shape, "__iter__") and not isinstance(normalized_shape, (str, bytes, tuple, list)):
        normalized_shape = tuple(normalized_shape)        # generators, torch.Size, arrays: read once
    if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__iter__") or not all(
            type(s) is int or isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in normalized_shape):
        raise TypeError(f"{fname}: normalized_shape must be an int or a sequence of ints, "
                        f"got {normalized_shape!r}")
    shape = tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"{fname}: normalized_shape {shape} must match the trailing dimensions of x "
                         f"with shape {tuple(x.shape)}")
    return shape, tuple(range(x.ndim - k, x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Layer normalization over the trailing ``normalized_shape`` dims (as ``torch.nn.functional.layer_norm``).

    x : float16/32/64 array (..., *normalized_shape); weight, bias : optional, shape ``normalized_shape``.
    Returns ``y`` (x's shape and dtype) or, with ``return_stats``, ``(y, mean, rstd)`` where
    mean/rstd are float64 of shape ``x.shape[:-len(normalized_shape)]`` and
    ``rstd = 1/sqrt(var + eps)`` with the biased variance.  One fused pass per row.
    """
    x = check_float_array(x)
    shape, axes = normalized_axes(x, normalized_shape, "layer_norm")
    w = check_param(weight, shape, "weight")
    b = check_param(bias, shape, "bias")
    eps = check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    y, mean, rstd = _core.normalize_trailing(x, len(axes), w, b, eps, out)
    return (y, mean, rstd) if return_stats else y


def layer_norm_backward(grad_out, x, mean, rstd, normalized_shape, weight=None, *,
                        needs_input_grad=(True, True, True), out=None):
    """Gradients of :func:`layer_norm`: ``(grad_x, grad_weight, grad_bias)``.

    mean, rstd : as returned by ``layer_norm(..., return_stats=True)`` (any float dtype).
    A gradient not requested in ``needs_input_grad`` (or grad_weight/grad_bias when
    ``weight`` is None) is returned as None and not computed.  Per row: one pass for the
    two reductions (and the grad_weight/grad_bias partials), one pass for grad_x while the
    row is in cache; reductions in float64, independent of the thread count.
    out : optional array for grad_x (x's shape and dtype); may be ``grad_out`` or ``x`` itself
    (in place, as frameworks do to save memory), must not overlap them otherwise.
    """
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    shape, _ = normalized_axes(x, normalized_shape, "layer_norm_backward")
    lead = x.shape[:x.ndim - len(shape)]
    mean = _core.check_stats(mean, lead, "mean")
    rstd = _core.check_stats(rstd, lead, "rstd")
    w = check_param(weight, shape, "weight")
    nx, nw, nb = _core.check_needs(needs_input_grad, 3, "layer_norm_backward")
    nw, nb = nw and w is not None, nb and w is not None
    out = _core.grad_target(out, x, dy, "layer_norm_backward")
    M, N = _core.prod(lead), _core.prod(shape)
    dx, dw, db = _core.rows_backward(dy, x, M, N, mean, rstd, None if w is None else w.reshape(-1), (nx, nw, nb),
                                     out=out)
    dx = _core.grad_finish(out, x, dx)
    dw = None if dw is None else _core.grad_cast(dw.reshape(shape), x, weight)
    db = None if db is None else _core.grad_cast(db.reshape(shape), x, weight)
    return dx, dw, db
