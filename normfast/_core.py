"""Shared machinery of every operator: the 4-d plan, statistics, normalization and
the output buffer.  The five norms and `normalize` are thin layers over this file.

The 4-d form: any reduction whose reduced and kept axes alternate at most as
K R K R is viewed, without copying, as x[A, B, C, D] with statistics per (a, c)
reduced over (b, d):
  LayerNorm (M, N)            -> (M, 1, 1, N)
  BatchNorm NCHW              -> (1, N, C, HW)      channels-last -> (1, NHW, C, 1)
  GroupNorm NHWC              -> (N, HW, G, C/G)    InstanceNorm NHWC -> (N, HW, C, 1)
Other patterns (e.g. R K R K) are transposed once into (M, 1, 1, N).
"""
import math

import numpy as np

from ._checks import as_kernel_input
from ._engine_cpu import CpuEngine

ENGINE = CpuEngine


def prod(seq):
    return math.prod(int(s) for s in seq)


def plan4d(shape, red_axes):
    """(A, B, C, D) for the reduction of `shape` over `red_axes`, or None when the
    kept/reduced pattern does not fit the 4-d form."""
    groups = []
    for ax, n in enumerate(shape):
        if n == 1:
            continue
        kind = ax in red_axes
        if groups and groups[-1][0] == kind:
            groups[-1][1] *= n
        else:
            groups.append([kind, n])
    if not groups or groups[0][0]:
        groups.insert(0, [False, 1])
    sizes = [g[1] for g in groups]
    if len(sizes) == 1:
        return (sizes[0], 1, 1, 1)
    if len(sizes) == 2:
        return (sizes[0], 1, 1, sizes[1])
    if len(sizes) == 3:
        return (sizes[0], sizes[1], sizes[2], 1)
    if len(sizes) == 4:
        return tuple(sizes)
    return None


def target(out, xk):
    """The array the kernel writes: `out` itself when it is C-contiguous in the kernel dtype."""
    if out is not None and out.dtype == xk.dtype and out.flags.c_contiguous:
        return out
    return np.empty_like(xk)


def finish(out, dtype, yk):
    """Return the result in the caller's dtype / buffer."""
    if out is None:
        return yk if yk.dtype == dtype else yk.astype(dtype)
    if yk is not out:
        np.copyto(out, yk, casting="unsafe")
    return out


def moments4d(xk, dims, rms=False):
    """(n, mean, M2) float64 arrays per (a, c)."""
    r = ENGINE.reduce(xk, dims, 1 if rms else 0)
    return r[:, 0], r[:, 1], r[:, 2]


def rstd_from(m2, n, eps):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(m2 / n + eps)


def apply_affine(xk, y, dims, mean, rstd, w=None, b=None):
    """y = (x - mean) * (rstd * w) + b with mean/rstd/w/b per (a, c) (w, b broadcastable)."""
    p = rstd if w is None else rstd * w
    q = np.zeros_like(mean) if b is None else np.broadcast_to(b, mean.shape)
    ENGINE.apply(xk, dims, np.ascontiguousarray(mean, dtype=np.float64), np.ascontiguousarray(p, dtype=np.float64),
                 np.ascontiguousarray(q, dtype=np.float64), y)
    return y


def rows(xk, y, M, N, w, b, eps, rms=False, seg=1, period=1):
    """Fused row-wise statistics + normalization.  w/b: float64 (period * N / seg,) or None."""
    if w is None and b is not None:
        w = np.ones_like(b)
    if b is None and w is not None:
        b = np.zeros_like(w)
    mean, rstd = ENGINE.rows_forward(xk, M, N, w, b, seg, period, eps, rms, y)
    if N == 0:
        mean[:] = np.nan
    return mean, rstd


def normalize_along(x, axes, w, b, eps, out, rms=False):
    """Standardize x over `axes` with optional weight/bias of the normalized axes' shape.
    Returns (y, mean, rstd) with mean/rstd of the kept axes' shape (float64)."""
    nd = x.ndim
    kept = [i for i in range(nd) if i not in axes]
    stat_shape = tuple(x.shape[i] for i in kept)
    xk = as_kernel_input(x)
    M, N = prod(stat_shape), prod(x.shape[i] for i in axes)
    trailing = tuple(axes) == tuple(range(nd - len(axes), nd))
    dims = None if trailing else plan4d(x.shape, set(axes))
    wf = None if w is None else w.reshape(-1)
    bf = None if b is None else b.reshape(-1)
    if trailing:
        y = target(out, xk)
        mean, rstd = rows(xk, y, M, N, wf, bf, eps, rms)
    elif dims is not None and w is None and b is None:
        y = target(out, xk)
        n, mean, m2 = moments4d(xk, dims, rms)
        if rms:
            mean = np.zeros_like(mean)
        rstd = rstd_from(m2, n, eps)
        apply_affine(xk, y, dims, mean, rstd)
        mean = np.where(n == 0, np.nan, mean)
    else:
        # Pattern outside the 4-d form, or an affine that varies inside the reduced
        # axes: one transposing copy into (M, N) rows, then back.
        perm = kept + list(axes)
        xt = np.ascontiguousarray(xk.transpose(perm))
        yt = np.empty_like(xt)
        mean, rstd = rows(xt, yt, M, N, wf, bf, eps, rms)
        y = np.empty_like(xk)
        y.transpose(perm)[...] = yt
    y = finish(out, x.dtype, y)
    return y, mean.reshape(stat_shape), rstd.reshape(stat_shape)
