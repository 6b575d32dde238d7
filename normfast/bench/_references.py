"""Plain float64/any-xp reference implementations the benchmark compares every backend with."""
from __future__ import annotations




EPS = 1e-5
RMS_EPS = 1e-6
GROUPS = 32

# --------------------------------------------------------------------------------------
# Plain reference implementations.  `xp` is numpy (or cupy); written the way a user would
# write them, the final ufunc writing into `out` when one is given.
# --------------------------------------------------------------------------------------


def ref_moments(xp, x, axis=0):
    return x.mean(axis=axis), x.var(axis=axis)


def ref_layer_norm(xp, x, w, b, eps, out=None):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w, b, out=out)


def ref_rms_norm(xp, x, w, eps, out=None):
    ms = (x * x).mean(axis=-1, keepdims=True)
    return xp.multiply(x / xp.sqrt(ms + eps), w, out=out)


def _channel_axes(ndim, caxis):
    caxis = caxis % ndim
    pshape = [1] * ndim
    return caxis, tuple(i for i in range(ndim) if i != caxis), pshape


def ref_batch_norm(xp, x, w, b, eps, caxis, out=None):
    caxis, axes, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_batch_norm_eval(xp, x, rm, rv, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    scale = w / xp.sqrt(rv + eps)
    return xp.add((x - rm.reshape(pshape)) * scale.reshape(pshape), b.reshape(pshape), out=out)


def ref_group_norm(xp, x, G, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    N, C = x.shape[0], x.shape[caxis]
    pshape[caxis] = C
    if caxis == 1:                              # (N, G, C/G * spatial)
        xg, axes = x.reshape(N, G, -1), (2,)
    else:                                       # channels-last: (N, spatial, G, C/G)
        xg, axes = x.reshape(N, -1, G, C // G), (1, 3)
    mean = xg.mean(axis=axes, keepdims=True)
    xc = xg - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    y = (xc / xp.sqrt(var + eps)).reshape(x.shape)
    return xp.add(y * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_instance_norm(xp, x, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    axes = tuple(i for i in range(1, x.ndim) if i != caxis)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_layer_norm_stats(xp, x, eps):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    return mean, 1 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)


def ref_layer_norm_backward(xp, dy, x, mean, rstd, w):
    """mean, rstd: (..., 1).  Returns (grad_x, grad_weight, grad_bias)."""
    lead = tuple(range(x.ndim - 1))
    xhat = (x - mean) * rstd
    g = dy * w
    gx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return gx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def ref_batch_norm_stats(xp, x, eps, caxis):
    _, axes, _ = _channel_axes(x.ndim, caxis)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    return mean, 1 / xp.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)


def ref_batch_norm_backward(xp, dy, x, mean, rstd, w, caxis):
    """Training-mode gradient; mean, rstd keep-dims shaped.  Returns (grad_x, grad_w, grad_b)."""
    caxis, axes, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    xhat = (x - mean) * rstd
    dym = dy.mean(axis=axes, keepdims=True)
    dyx = (dy * xhat).mean(axis=axes, keepdims=True)
    gx = (w.reshape(pshape) * rstd) * (dy - dym - xhat * dyx)
    return gx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


