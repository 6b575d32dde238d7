"""Plain float64 NumPy references for the normalization backward passes.

Every norm is viewed as rows: a 2-D (R, L) array with one statistic per row
(LayerNorm/RMSNorm: one row per leading index; BatchNorm: one row per channel;
InstanceNorm: one row per (n, c); GroupNorm: one row per (n, g)).  With
xh = (x - mean) * rstd and g = weight * grad_out, per row

    dx = rstd * (g - mean(g) - xh * mean(g * xh))     (training statistics)
    dx = rstd * (g - xh * mean(g * xh))               (RMSNorm, mean = 0)
    dx = rstd * g                                     (BatchNorm eval: constant statistics)

and dw = sum(grad_out * xh), db = sum(grad_out) over every axis but the parameter axes.
Nothing here calls normfast.
"""
import math

import numpy as np

ROW_KINDS = ("layer", "rms")
CHANNEL_KINDS = ("batch", "batch_eval", "group", "instance")


def _channels_first(a, channel_axis):
    return np.moveaxis(a, channel_axis, 1)


def to_rows(a, kind, *, channel_axis=1, k=1, groups=None):
    """(R, L) float64 copy of `a` (x's shape) and a function mapping (R, L) back to a's shape."""
    a = np.asarray(a, dtype=np.float64)
    shape = a.shape
    if kind in ROW_KINDS:
        lead = shape[:a.ndim - k]
        return a.reshape(math.prod(lead), -1).copy(), lambda r: r.reshape(shape)
    ca = channel_axis % a.ndim
    cf = _channels_first(a, ca)                      # (N, C, *spatial)
    cf_shape = cf.shape
    N, C = cf_shape[:2]
    if kind in ("batch", "batch_eval"):
        r = np.moveaxis(cf, 1, 0).reshape(C, -1).copy()

        def back(rows):
            t = rows.reshape((C, N) + cf_shape[2:])
            return np.moveaxis(np.moveaxis(t, 0, 1), 1, ca)
    elif kind == "instance":
        r = cf.reshape(N * C, -1).copy()

        def back(rows):
            return np.moveaxis(rows.reshape(cf_shape), 1, ca)
    elif kind == "group":
        r = cf.reshape(N * groups, -1).copy()

        def back(rows):
            return np.moveaxis(rows.reshape(cf_shape), 1, ca)
    else:
        raise ValueError(kind)
    return r, back


def broadcast_param(p, x_shape, kind, *, channel_axis=1, k=1):
    """Parameter (weight/bias) broadcast to x's shape, float64."""
    p = np.asarray(p, dtype=np.float64)
    if kind in ROW_KINDS:
        return np.broadcast_to(p, x_shape)
    ca = channel_axis % len(x_shape)
    s = [1] * len(x_shape)
    s[ca] = x_shape[ca]
    return np.broadcast_to(p.reshape(s), x_shape)


def param_sum_axes(ndim, kind, *, channel_axis=1, k=1):
    """Axes summed over for grad_weight / grad_bias."""
    if kind in ROW_KINDS:
        return tuple(range(ndim - k))
    ca = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != ca)


def row_stats(xr, eps, rms=False):
    """float64 (mean, rstd) per row of a float64 (R, L) array (biased variance)."""
    if rms:
        ms = np.mean(xr * xr, axis=1)
        return np.zeros(xr.shape[0]), 1.0 / np.sqrt(ms + eps)
    mean = np.mean(xr, axis=1)
    var = np.mean((xr - mean[:, None]) ** 2, axis=1)
    return mean, 1.0 / np.sqrt(var + eps)


def rows_dx(dyr, xr, mean, rstd, wr, rms=False, training=True):
    """The row formula, float64.  dyr, xr, wr: (R, L); mean, rstd: (R,)."""
    rs = rstd[:, None]
    xh = (xr - mean[:, None]) * rs
    g = dyr * wr
    if not training:
        return rs * g
    c2 = np.mean(g * xh, axis=1, keepdims=True)
    c1 = 0.0 if rms else np.mean(g, axis=1, keepdims=True)
    return rs * (g - c1 - xh * c2)


def norm_backward(kind, grad_out, x, weight=None, *, eps=1e-5, channel_axis=1, normalized_shape=None,
                  groups=None, mean=None, rstd=None, running_mean=None, running_var=None):
    """float64 reference (grad_x, grad_weight, grad_bias) of one of the five norms.

    Statistics are computed in float64 from x (upcast) unless mean/rstd are given
    (flattened in the row order of :func:`to_rows`).  kind 'batch_eval' uses the
    running statistics.  eps=None means finfo(x.dtype).eps (RMSNorm).
    grad_bias is None for 'rms'; grad_weight/grad_bias are None without a weight.
    """
    x = np.asarray(x)
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    x64 = x.astype(np.float64)
    dy64 = np.asarray(grad_out).astype(np.float64)
    k = 0
    if kind in ROW_KINDS:
        k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    kw = dict(channel_axis=channel_axis, k=k)
    xr, back = to_rows(x64, kind, groups=groups, **kw)
    dyr, _ = to_rows(dy64, kind, groups=groups, **kw)
    rms = kind == "rms"
    if kind == "batch_eval":
        m = np.asarray(running_mean, dtype=np.float64).reshape(-1)
        r = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64).reshape(-1) + eps)
    else:
        m, r = row_stats(xr, eps, rms)
    if mean is not None:
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
    if rstd is not None:
        r = np.asarray(rstd, dtype=np.float64).reshape(-1)
    if rms:
        m = np.zeros_like(r)
    w_full = np.ones(x.shape) if weight is None else broadcast_param(weight, x.shape, kind, **kw)
    wr, _ = to_rows(w_full, kind, groups=groups, **kw)
    dx = back(rows_dx(dyr, xr, m, r, wr, rms=rms, training=kind != "batch_eval"))
    if weight is None:
        return dx, None, None
    xh = back((xr - m[:, None]) * r[:, None])
    axes = param_sum_axes(x.ndim, kind, **kw)
    dw = np.sum(dy64 * xh, axis=axes)
    db = None if rms else np.sum(dy64, axis=axes)
    return dx, dw, db
