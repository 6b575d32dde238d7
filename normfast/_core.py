"""Shared machinery of every operator: the 4-d plan, statistics, normalization and
the output buffer.  The five norms and `normalize` are thin layers over this file.

The 4-d plan x[A, B, C, D] (``Plan4``: statistics per (a, c), reduced over (b, d)) is
explained once, in normfast/_engine.py, with the engine interface the functions here call.
Patterns outside it (e.g. R K R K) are transposed once into (M, 1, 1, N).
"""
import contextlib
import contextvars
import math

import numpy as np

from ._engine import Plan4, Reduce
from ._engine_cpu import CpuEngine

# The engine (CPU kernels, or the GPU adapter while a CuPy call runs) is per call context,
# so concurrent threads can use different backends.  Statistics and coefficients are
# always small host NumPy float64 arrays; only x-sized arrays live on the engine's device.
_ENGINE = contextvars.ContextVar("normfast_engine", default=CpuEngine)


def engine():
    return _ENGINE.get()


@contextlib.contextmanager
def using(eng):
    token = _ENGINE.set(eng)
    try:
        yield eng
    finally:
        _ENGINE.reset(token)


def as_kernel_input(x):
    """x as the engine's kernels take it: C-contiguous, aligned, in the kernel dtype."""
    eng = engine()
    return eng.kernel_array(x, eng.kernel_dtype(x.dtype))


def kernel_array(a, dtype):
    return engine().kernel_array(a, dtype)


def host(a):
    """Small arrays (statistics, running buffers) as host NumPy float64."""
    return engine().to_host(a)


def prod(seq):
    return math.prod(seq)


def plan4d(shape, red_axes):
    """The Plan4 of the reduction of `shape` over `red_axes`, or None when the kept/reduced
    pattern does not fit the 4-d form."""
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
        return Plan4(sizes[0], 1, 1, 1)
    if len(sizes) == 2:
        return Plan4(sizes[0], 1, 1, sizes[1])
    if len(sizes) == 3:
        return Plan4(sizes[0], sizes[1], sizes[2], 1)
    if len(sizes) == 4:
        return Plan4(*sizes)
    return None


def target(out, xk):
    """The array the kernel writes: `out` itself when it is C-contiguous in the kernel dtype."""
    eng = engine()
    if out is not None and out.dtype == xk.dtype and eng.writable_as_is(out):
        return out
    return eng.empty(xk.shape, xk.dtype)


def finish(out, dtype, yk):
    """Return the result in the caller's dtype / buffer."""
    if out is None:
        return yk if yk.dtype == dtype else yk.astype(dtype)
    if yk is not out:
        engine().xp.copyto(out, yk, casting="unsafe")
    return out


def moments4d(xk, dims, rms=False):
    """(n, mean, M2) float64 arrays per (a, c)."""
    r = engine().reduce(xk, dims, Reduce.SQUARES if rms else Reduce.MOMENTS)
    return r[:, 0], r[:, 1], r[:, 2]


def rstd_from(m2, n, eps):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(m2 / n + eps)


def apply_affine(xk, y, dims, mean, rstd, w=None, b=None):
    """y = (x - mean) * (rstd * w) + b with mean/rstd per (a, c) and w, b per (a, c) or per c
    (broadcast over a: no tiled copies)."""
    A, C = dims[0], dims[2]
    if A * C == 0:                                   # nothing to normalize (and C = 0 has no rows)
        w = b = None
    p = rstd if w is None else (rstd.reshape(A, C) * w.reshape(-1, C)).reshape(-1)
    q = np.zeros_like(mean) if b is None else np.broadcast_to(b.reshape(-1, C), (A, C)).reshape(-1)
    engine().apply(xk, dims, np.ascontiguousarray(mean, dtype=np.float64), np.ascontiguousarray(p, dtype=np.float64),
                 np.ascontiguousarray(q, dtype=np.float64), y)
    return y


def affine_pair(w, b):
    """The kernels take weight and bias together: a missing one becomes ones / zeros
    (y * 1 + 0 is y exactly)."""
    if w is None and b is not None:
        w = np.ones_like(b)
    if b is None and w is not None:
        b = np.zeros_like(w)
    return w, b


def as_rows(xk, kept, axes):
    """The one transposing copy of x into (M, N) rows, kept axes first, for reductions whose
    pattern has no 4-d plan: (rows, perm, Plan4(M, 1, 1, N))."""
    perm = list(kept) + list(axes)
    xt = engine().kernel_array(xk.transpose(perm), xk.dtype)
    return xt, perm, Plan4(prod(xk.shape[i] for i in kept), 1, 1, prod(xk.shape[i] for i in axes))


def rows(xk, y, M, N, w, b, eps, rms=False, seg=1, period=1):
    """Fused row-wise statistics + normalization.  w/b: float64 (period * N / seg,) or None."""
    w, b = affine_pair(w, b)
    mean, rstd = engine().rows_forward(xk, M, N, w, b, seg, period, eps, rms, y)
    if N == 0:
        mean[:] = np.nan
    return mean, rstd


SAMPLE_FUSE_MAX = 4 << 20    # bytes of one sample kept in cache between statistics and normalization


def samples(xk, y, N, B, G, D, w, b, eps):
    """Channels-last group/instance norm fused per sample when it pays (at least two samples to
    share among the threads, a sample small enough to stay in cache, an engine that has the
    kernel); else None.  The choice depends on the shape only, never on the thread count."""
    eng = engine()
    if (not eng.supports_samples or N * B * G * D == 0 or N < 2
            or B * G * D * xk.itemsize > SAMPLE_FUSE_MAX):
        return None
    return eng.samples_forward(xk, y, N, B, G, D, w, b, eps)


def normalize_trailing(x, k, w, b, eps, out, rms=False):
    """normalize_along for the last k axes (LayerNorm / RMSNorm): the fused row kernel, with
    no axis bookkeeping (the path of small, latency-bound calls)."""
    lead = x.shape[:x.ndim - k]
    M, N = prod(lead), prod(x.shape[x.ndim - k:])
    xk = as_kernel_input(x)
    y = target(out, xk)
    mean, rstd = rows(xk, y, M, N, None if w is None else w.reshape(-1), None if b is None else b.reshape(-1),
                      eps, rms)
    return finish(out, x.dtype, y), mean.reshape(lead), rstd.reshape(lead)


def normalize_along(x, axes, w, b, eps, out, rms=False):
    """Standardize x over `axes` with optional weight/bias of the normalized axes' shape.
    Returns (y, mean, rstd) with mean/rstd of the kept axes' shape (float64)."""
    nd = x.ndim
    if tuple(axes) == tuple(range(nd - len(axes), nd)):
        return normalize_trailing(x, len(axes), w, b, eps, out, rms)
    kept = [i for i in range(nd) if i not in axes]
    stat_shape = tuple(x.shape[i] for i in kept)
    xk = as_kernel_input(x)
    M, N = prod(stat_shape), prod(x.shape[i] for i in axes)
    dims = plan4d(x.shape, set(axes))
    wf = None if w is None else w.reshape(-1)
    bf = None if b is None else b.reshape(-1)
    if dims is not None and w is None and b is None:
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
        eng = engine()
        xt, perm, _ = as_rows(xk, kept, axes)
        # normalized in place in the transposed copy (one temporary, not two) when it is a copy
        # (a transpose that needed none is the caller's x; GPU engines keep a separate buffer)
        own = eng.xp is np and not np.may_share_memory(xt, x)
        yt = xt if own else eng.empty(xt.shape, xt.dtype)
        mean, rstd = rows(xt, yt, M, N, wf, bf, eps, rms)
        y = eng.empty(xk.shape, xk.dtype)
        y.transpose(perm)[...] = yt
    y = finish(out, x.dtype, y)
    return y, mean.reshape(stat_shape), rstd.reshape(stat_shape)


def grad_target(out, x, dy, fname, gh=None):
    """The checked ``out=`` of a backward: None, or a writable array of x's shape and dtype that is
    either separate from x / grad_out (/ grad_h) or exactly one of them (in place: the kernels read
    every element before writing it).  Partial overlaps: ValueError."""
    from ._checks import check_out, check_separate
    if out is None:
        return None
    out = check_out(out, x.shape, x.dtype, dy)
    check_separate(fname, [("x", x), ("grad_out", dy), ("grad_h", gh)], [("out", out)])
    return out


def grad_finish(out, x, dxk):
    """grad_x in x's shape and dtype: ``out`` itself when given (copied into when the kernel
    could not write it directly), else the kernel's buffer."""
    if dxk is None:
        return None
    dxk = dxk.reshape(x.shape)
    if out is None:
        return dxk.astype(x.dtype, copy=False)
    if dxk is not out:
        engine().xp.copyto(out, dxk, casting="unsafe")
    return out


def rows_backward(dy, x, M, N, mean, rstd, w, needs, gh=None, out=None):
    """Row-wise backward (Layer/RMS).  needs = (dx, dw, db); gh (optional) is added to dx.
    out: the checked ``out=`` (see grad_target), written directly when the kernel can (C-contiguous,
    aligned, kernel dtype).  Returns (dx (kernel dtype, or out), dw, db), dw/db float64."""
    xk = as_kernel_input(x)
    dyk = kernel_array(dy, xk.dtype)
    ghk = None if gh is None else kernel_array(gh, xk.dtype)
    mean = None if mean is None else np.ascontiguousarray(mean, dtype=np.float64).reshape(-1)
    rstd = np.ascontiguousarray(rstd, dtype=np.float64).reshape(-1)
    eng = engine()
    # The CPU kernel reads every element of a row tile before writing it, so dx may be x, dy or gh;
    # the GPU engine reads x and dy again for dw/db after the dx kernel: in place there goes through
    # a separate buffer.
    if needs[0] and out is not None and (eng is CpuEngine or not any(out is a for a in (x, dy, gh))):
        dxk = target(out, xk)
        if dxk is not out and out is dy and eng is CpuEngine:
            dxk = dyk                     # in place on a grad_out the kernel reads through a copy
        return eng.rows_backward(xk, dyk, M, N, mean, rstd, w, *needs, gh=ghk, dx=dxk.reshape(xk.shape))
    return eng.rows_backward(xk, dyk, M, N, mean, rstd, w, *needs, gh=ghk)


# Statistics per block of whole samples in the channel-wise paths (instance norm with running
# statistics, the group/instance backward): their per-(a, c) float64 temporaries (about eight
# arrays, and the kernel's own partials) are then at most ~2 MiB, where computing them for the whole
# batch at once costs ~10 float64 values per statistic: more than an output when few values share a
# statistic (16 spatial values in float16: 2.5 outputs; reliability issue, class 4).
STAT_BLOCK = 1 << 15
# ... and of at most ~CACHE_BLOCK bytes of output: the second pass over a block (normalization, or
# grad_x from the block's sums) then reads its inputs from the last-level cache (32 MiB here)
# instead of memory.  Large enough for the per-block calls (~20 us) to stay small next to the
# block's work.  (A block's output, under NF_STREAM_MIN = 20 MiB, takes cached stores.)
CACHE_BLOCK = 6 << 20


def sample_blocks(A, C, sample_bytes=0):
    """Slices over a of x[A, B, C, D] with at most STAT_BLOCK statistics and about CACHE_BLOCK
    bytes (``sample_bytes`` per sample) each, at least one sample.  Every kernel's result for one
    (a, c) depends on (B, C, D) only, never on A, so a blocked call gives bitwise the results of
    one call over the whole batch."""
    step = max(1, min(STAT_BLOCK // max(C, 1), CACHE_BLOCK // max(sample_bytes, 1)))
    return [slice(a0, min(a0 + step, A)) for a0 in range(0, A, step)]


def moments_apply(xk, y, dims, w, b, eps, keep_stats):
    """Per-(a, c) moments of x[A, B, C, D] and y = (x - mean) * rstd * w + b, by blocks of
    samples.  Returns (mean, rstd) ((A*C,) float64, or None unless `keep_stats`) and the sums over
    a of the means and of the unbiased variances ((C,) float64: the running-statistics update)."""
    A, B, C, D = dims
    xr, yr = xk.reshape(A, B * C * D), y.reshape(A, B * C * D)
    mean_all = np.empty(A * C) if keep_stats else None
    rstd_all = np.empty(A * C) if keep_stats else None
    sum_mean, sum_var = np.zeros(C), np.zeros(C)
    for blk in sample_blocks(A, C, B * C * D * xk.itemsize):
        bd = (blk.stop - blk.start, B, C, D)
        n, mean, m2 = moments4d(xr[blk], bd)
        rstd = rstd_from(m2, n, eps)
        apply_affine(xr[blk], yr[blk], bd, mean, rstd, w, b)
        sum_mean += mean.reshape(-1, C).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            sum_var += (m2 / (n - 1)).reshape(-1, C).sum(axis=0)
        if keep_stats:
            mean_all[blk.start * C:blk.stop * C] = mean
            rstd_all[blk.start * C:blk.stop * C] = rstd
    return mean_all, rstd_all, sum_mean, sum_var


def rows_grads(dy, x, shape, mean, rstd, w, weight, needs, out, gh=None):
    """:func:`rows_backward` over x's trailing dimensions ``shape`` (w: the checked weight or None,
    weight: the caller's), then grad_x finished into ``out`` (see grad_finish) and the parameter
    gradients shaped as ``shape`` in the weight's dtype: (dx, dw, db), None where not computed."""
    M, N = prod(x.shape[:x.ndim - len(shape)]), prod(shape)
    dx, dw, db = rows_backward(dy, x, M, N, mean, rstd, None if w is None else w.reshape(-1), needs, gh, out=out)
    return (grad_finish(out, x, dx), grad_cast(None if dw is None else dw.reshape(shape), x, weight),
            grad_cast(None if db is None else db.reshape(shape), x, weight))


def channel_backward(dy, x, dims, mean, rstd, w, group, training, needs, out=None):
    """Backward of a per-channel-affine norm on x[A, B, C, D] (channel c, sample a).

    mean/rstd: float64 per (a, c // group) (per group for GroupNorm); w: float64 (C,) or None;
    group: channels per statistic (GroupNorm) or 1.
    With xh = (x - mean) * rstd, g = w * dy and n values per statistic:
      dx = rstd * (g - sum(g) / n - xh * sum(g * xh) / n)     (training)
      dx = rstd * g                                             (statistics constant)
    evaluated as dx = dy * alpha + (x - mean) * beta + gamma with per-(a, c) coefficients,
    computed per block of samples (sample_blocks); channels-first input (B = 1) with input
    statistics takes the engine's fused per-row kernel (group_backward) where it has one.
    out: the checked ``out=`` (see grad_target), written directly when the kernel can.
    Returns (dx, dw, db) with dw/db float64 (C,) (None where not needed)."""
    A, B, C, D = dims
    xk = as_kernel_input(x)
    dyk = kernel_array(dy, xk.dtype)
    G = C // group if group else 0
    mean = np.asarray(mean, dtype=np.float64).reshape(A, G)
    rstd = np.asarray(rstd, dtype=np.float64).reshape(A, G)
    need_dx, need_dw, need_db = needs
    wc = np.ones(C) if w is None else w
    dw = np.zeros(C) if need_dw else None
    db = np.zeros(C) if need_db else None
    dx = None
    if need_dx:
        dx = target(out, xk)
        if dx is not out and out is dy:
            dx = dyk                      # in place on a grad_out the kernel reads through a copy
    xr, dyr = xk.reshape(A, B * C * D), dyk.reshape(A, B * C * D)
    dxr = dx.reshape(A, B * C * D) if need_dx else None
    eng = engine()
    # channels-first with input statistics: one kernel per row of a (sample, group), fused
    fused = training and B == 1 and C * D > 0 and eng.supports_group_backward
    for blk in sample_blocks(A, C, B * C * D * xk.itemsize):
        a = blk.stop - blk.start
        bd = (a, B, C, D)
        rs = np.repeat(rstd[blk], group, axis=1)
        if fused:                      # the sums, and dx written by the same kernel
            r = eng.group_backward(xr[blk], dyr[blk], dxr[blk] if need_dx else None, a * G, group * D, D, G,
                                   np.ascontiguousarray(mean[blk]).reshape(-1),
                                   np.ascontiguousarray(rstd[blk]).reshape(-1), wc)
            sdy, sxh = r[:, 0].reshape(a, C), r[:, 1].reshape(a, C)
        else:
            m = np.repeat(mean[blk], group, axis=1).reshape(-1)         # per (a, c)
            r = eng.reduce(xr[blk], bd, Reduce.GRAD_SUMS, dyr[blk], m)
            sdy, sxh = r[:, 1].reshape(a, C), r[:, 2].reshape(a, C)    # sum(dy), sum(dy * (x - m))
        sxh *= rs                                                      # sum(dy * xh) per (a, c)
        if need_dw:
            dw += sxh.sum(axis=0)
        if need_db:
            db += sdy.sum(axis=0)
        if need_dx and not fused:
            _channel_grad_x(eng, xr[blk], dyr[blk], dxr[blk], bd, m, rs, wc, sdy, sxh, group, training)
    if need_dx:
        dx = grad_finish(out, x, dx)
    return dx, dw, db


def _channel_grad_x(eng, x, dy, dx, dims, m, rs, wc, sdy, sxh, group, training):
    """dx = dy * alpha + (x - m) * beta + gamma on one block x[a, B, C, D] from its per-(a, c) sums
    (sdy, sxh: overwritten), rstd rs and weight wc (see channel_backward)."""
    a, B, C, D = dims
    G = C // group
    alpha = rs * wc
    if training:
        n = float(B * D * group)
        sdy *= wc
        sxh *= wc
        s1 = sdy.reshape(a, G, group).sum(axis=2)[:, :, None]      # per (a, group), broadcast below
        s2 = sxh.reshape(a, G, group).sum(axis=2)[:, :, None]
        beta = np.multiply(rs, rs)
        beta.reshape(a, G, group)[...] *= s2
        beta *= -1.0 / n                                # -rstd^2 * s2 / n
        gamma = np.multiply(rs, -1.0 / n)
        gamma.reshape(a, G, group)[...] *= s1           # -rstd * s1 / n
    else:
        beta = gamma = np.zeros_like(alpha)
    eng.apply(x, dims, m, beta.reshape(-1), gamma.reshape(-1), dx, dy, alpha.reshape(-1))


def check_needs(needs, k, fname):
    try:
        t = tuple(bool(v) for v in needs)
    except TypeError:
        raise TypeError(f"{fname}: needs_input_grad must be a tuple of {k} bools") from None
    if len(t) != k:
        raise ValueError(f"{fname}: needs_input_grad must have {k} entries, got {len(t)}")
    return t


def grad_cast(g, x, weight):
    """Parameter gradients come back in the weight's dtype (x's dtype without a weight array)."""
    if g is None:
        return None
    dt = weight.dtype if isinstance(weight, np.ndarray) and weight.dtype.kind == "f" else x.dtype
    return g.astype(dt)


def check_grad_out(grad_out, x):
    from ._checks import check_float_array
    grad_out = check_float_array(grad_out, "grad_out")
    if type(grad_out) is not type(x):
        raise TypeError(f"grad_out must be the same array type as x ({type(x).__name__}), "
                        f"got {type(grad_out).__name__}")
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have x's shape {tuple(x.shape)}, got {tuple(grad_out.shape)}")
    return grad_out


def check_stats(s, shape, name):
    """mean / rstd as saved by the forward: any float array of `shape` (or its size)."""
    if s is None:
        raise TypeError(f"{name} is required")
    s = host(s) if not isinstance(s, np.ndarray) else s
    if s.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {s.dtype}")
    if s.size != prod(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(s.shape)}")
    return s.astype(np.float64).reshape(-1)
