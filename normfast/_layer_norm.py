"""layer_norm: normalization over the trailing ``normalized_shape`` dimensions."""
import numbers

from . import _core
from ._docs import fill
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


@fill
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    As ``torch.nn.functional.layer_norm``: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with
    the biased variance of each row.  Statistics in float64 (single pass, thread-count independent),
    ``x - mean`` in float64, one rounding to x's dtype.

    Parameters
    ----------
    {x_rows}
    {normalized_shape}
    {weight_bias_rows}
    {eps}
    {out_y}
    return_stats : bool, default False
        Also return ``mean`` and ``rstd = 1 / sqrt(var + eps)`` (float64, shape ``x.shape[:-k]``).

    {returns_y}

    Raises
    ------
    TypeError
        x or a parameter is not a floating array, eps is not a real number.
    ValueError
        ``normalized_shape`` does not match x's trailing dimensions, a parameter has the wrong
        shape, eps < 0, or ``out`` is read-only / overlaps x partially.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> y = nf.layer_norm(x, 4)
    >>> np.allclose(y, (x - 2.5) / np.sqrt(1.25 + 1e-5))
    True
    """
    x = check_float_array(x)
    shape, axes = normalized_axes(x, normalized_shape, "layer_norm")
    w = check_param(weight, shape, "weight")
    b = check_param(bias, shape, "bias")
    eps = check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    y, mean, rstd = _core.normalize_trailing(x, len(axes), w, b, eps, out)
    return (y, mean, rstd) if return_stats else y


@fill
def layer_norm_backward(grad_out, x, mean, rstd, normalized_shape, weight=None, *,
                        needs_input_grad=(True, True, True), out=None):
    """Gradients of :func:`layer_norm`: ``(grad_x, grad_weight, grad_bias)``.

    Per row: one pass for the two row sums (float64), then grad_x while the row is in cache;
    grad_weight / grad_bias summed per block of rows in a fixed order (thread-count independent).

    Parameters
    ----------
    {grad_out_x}
    mean, rstd : arrays
        As returned by ``layer_norm(..., return_stats=True)`` (any float dtype).
    {bwd_tail_rows}

    Returns
    -------
    grad_x : array like x, or None
    grad_weight, grad_bias : arrays of the weight's shape and dtype, or None

    {raises_bwd}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(4, 8))
    >>> y, mean, rstd = nf.layer_norm(x, 8, return_stats=True)
    >>> gx, gw, gb = nf.layer_norm_backward(np.ones_like(x), x, mean, rstd, 8)
    >>> np.allclose(gx, 0.0), gw is None
    (True, True)
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
    return _core.rows_grads(dy, x, shape, mean, rstd, w, weight, (nx, nw, nb), out)
