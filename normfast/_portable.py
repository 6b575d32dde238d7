"""Portable forward implementation written only with Array API calls.

Used for Array API arrays that normfast's kernels cannot reach (no CPU DLPack, not
CuPy): e.g. arrays on another device.  Numerically careful (shifted two-pass in
float64 where the namespace has it), slower than the kernels but correct.
"""
import math


def _namespace(x):
    import array_api_compat
    return array_api_compat.array_namespace(x)


def _acc_dtype(xp, x):
    try:
        return xp.float64 if x.dtype in (xp.float64, xp.float32, xp.float16) else x.dtype
    except AttributeError:
        return x.dtype


def _moments(xp, x, axes):
    """(n, mean, M2) over axes, keepdims, in the widest float the namespace offers."""
    xa = xp.astype(x, _acc_dtype(xp, x))
    n = math.prod(x.shape[a] for a in axes)
    shift = xp.mean(xa, axis=axes, keepdims=True)          # pass 1
    d = xa - shift
    mean = shift + xp.mean(d, axis=axes, keepdims=True)     # pass 2 (shifted)
    d = xa - mean
    m2 = xp.sum(d * d, axis=axes, keepdims=True)
    return n, mean, m2


def _axes(axis, ndim):
    axes = tuple(range(ndim)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    return tuple(sorted(a % ndim for a in axes))


def moments(x, axis=None, *, correction=0, keepdims=False, return_count=False):
    xp = _namespace(x)
    axes = _axes(axis, x.ndim)
    n, mean, m2 = _moments(xp, x, axes)
    var = m2 / (n - correction) if n - correction > 0 else m2 * float("nan")
    if not keepdims:
        mean, var = xp.squeeze(mean, axis=axes), xp.squeeze(var, axis=axes)
    return (mean, var, n) if return_count else (mean, var)


def _norm(xp, x, axes, eps, rms=False):
    xa = xp.astype(x, _acc_dtype(xp, x))
    if rms:
        mean = xp.zeros_like(xp.sum(xa, axis=axes, keepdims=True))
        var = xp.mean(xa * xa, axis=axes, keepdims=True)
    else:
        n, mean, m2 = _moments(xp, x, axes)
        var = m2 / n
    rstd = 1.0 / xp.sqrt(var + eps)
    return (xa - mean) * rstd, mean, rstd


def _affine(xp, y, w, b, shape):
    if w is not None:
        y = y * xp.reshape(xp.astype(w, y.dtype), shape)
    if b is not None:
        y = y + xp.reshape(xp.astype(b, y.dtype), shape)
    return y


def _result(xp, x, y, mean, rstd, axes, return_stats, rms=False):
    y = xp.astype(y, x.dtype)
    if not return_stats:
        return y
    rstd = xp.squeeze(rstd, axis=axes)
    return (y, rstd) if rms else (y, xp.squeeze(mean, axis=axes), rstd)


def normalize(x, axis=-1, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    xp = _namespace(x)
    axes = _axes(axis, x.ndim)
    y, mean, rstd = _norm(xp, x, axes, eps)
    shape = tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim))
    return _result(xp, x, _affine(xp, y, weight, bias, shape), mean, rstd, axes, return_stats)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return normalize(x, tuple(range(x.ndim - k, x.ndim)), weight, bias, eps, return_stats=return_stats)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    xp = _namespace(x)
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    eps = float(xp.finfo(x.dtype).eps) if eps is None else eps
    y, mean, rstd = _norm(xp, x, axes, eps, rms=True)
    shape = (1,) * (x.ndim - k) + tuple(x.shape[x.ndim - k:])
    return _result(xp, x, _affine(xp, y, weight, None, shape), mean, rstd, axes, return_stats, rms=True)


def _channel_shape(x, ca):
    return tuple(x.shape[i] if i == ca else 1 for i in range(x.ndim))


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, channel_axis=1, out=None, return_stats=False, num_batches_tracked=None):
    xp = _namespace(x)
    ca = channel_axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != ca)
    cs = _channel_shape(x, ca)
    if training:
        n, mean, m2 = _moments(xp, x, axes)
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        rstd = 1.0 / xp.sqrt(m2 / n + eps)
        if running_mean is not None and momentum is not None:
            running_mean[...] = xp.astype((1 - momentum) * xp.astype(running_mean, mean.dtype)
                                          + momentum * xp.reshape(mean, (-1,)), running_mean.dtype)
            running_var[...] = xp.astype((1 - momentum) * xp.astype(running_var, mean.dtype)
                                         + momentum * xp.reshape(m2 / (n - 1), (-1,)), running_var.dtype)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be given when training=False")
        mean = xp.reshape(xp.astype(running_mean, xp.float64), cs)
        rstd = 1.0 / xp.sqrt(xp.reshape(xp.astype(running_var, xp.float64), cs) + eps)
    y = (xp.astype(x, mean.dtype) - mean) * rstd
    return _result(xp, x, _affine(xp, y, weight, bias, cs), mean, rstd, axes, return_stats)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    xp = _namespace(x)
    ca = channel_axis % x.ndim
    C = x.shape[ca]
    if C % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the number of channels C={C}")
    gshape = x.shape[:ca] + (num_groups, C // num_groups) + x.shape[ca + 1:]
    xg = xp.reshape(x, gshape)
    axes = tuple(i for i in range(1, len(gshape)) if i != ca)
    y, mean, rstd = _norm(xp, xg, axes, eps)
    y = _affine(xp, xp.reshape(y, x.shape), weight, bias, _channel_shape(x, ca))
    y = xp.astype(y, x.dtype)
    if not return_stats:
        return y
    N = x.shape[0]
    return y, xp.reshape(mean, (N, num_groups)), xp.reshape(rstd, (N, num_groups))


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    xp = _namespace(x)
    ca = channel_axis % x.ndim
    axes = tuple(i for i in range(1, x.ndim) if i != ca)
    cs = _channel_shape(x, ca)
    if use_input_stats:
        y, mean, rstd = _norm(xp, x, axes, eps)
    else:
        mean = xp.reshape(xp.astype(running_mean, xp.float64), cs)
        rstd = 1.0 / xp.sqrt(xp.reshape(xp.astype(running_var, xp.float64), cs) + eps)
        y = (xp.astype(x, xp.float64) - mean) * rstd
    y = xp.astype(_affine(xp, y, weight, bias, cs), x.dtype)
    if not return_stats:
        return y
    N, C = x.shape[0], x.shape[ca]
    mean = xp.reshape(mean * xp.ones((N,) + tuple(cs[1:]), dtype=mean.dtype), (N, C))
    rstd = xp.reshape(rstd * xp.ones((N,) + tuple(cs[1:]), dtype=rstd.dtype), (N, C))
    return y, mean, rstd


FORWARD = {f.__name__: f for f in (moments, normalize, layer_norm, rms_norm, batch_norm, group_norm, instance_norm)}
