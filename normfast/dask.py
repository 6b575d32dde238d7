"""normfast on Dask arrays: out-of-core / distributed statistics and normalization.

Import it explicitly (``import normfast.dask``); ``import normfast`` never imports Dask.

Every function here follows the same plan:

1. **Statistics in one read of the array.**  Each chunk is reduced by normfast's CPU kernel
   to its ``(count, mean, M2)`` in float64 (``M2`` = sum of squared deviations from the
   chunk mean); the partial states travel as small NumPy structured arrays (fields
   ``count``, ``mean``, ``m2``) through Dask's tree reduction, where they are merged with
   Chan's formula (:meth:`normfast.Moments.merge`).  Chunking along the reduced axes is
   allowed (even uneven); the result equals the in-memory :func:`normfast.moments` to float64
   rounding (about 1e-15 relative, never the catastrophic cancellation of sum / sum-of-squares).
2. **Normalization with** ``map_blocks`` / ``blockwise``: every chunk is normalized by
   normfast's kernels using the global statistics (e.g. :func:`normfast.batch_norm` in eval
   mode with the global mean / biased variance as its running statistics).

The results are lazy Dask arrays.  The statistics and the normalization live in one graph,
so an input chunk is read once but has to stay in (worker) memory until the statistics are
reduced -- Dask spills to disk when that does not fit.  For arrays much larger than the
cluster's memory pass ``compute_stats=True``: the statistics are computed at call time
(``dask.compute``) and enter the returned graph as constants, so the input is read twice
(now and when the result is computed) but never has to be held.

Coverage: :func:`moments`, :func:`moments_state` (the Dask counterpart of
``Moments.from_array``: computed now, or a delayed ``Moments`` with ``compute=False``),
:func:`standardize`, :func:`normalize` (with weight / bias), :func:`batch_norm`,
:func:`layer_norm`, :func:`group_norm`, and from ``normfast._dask_ops`` ``rms_norm``,
``instance_norm`` and every ``*_backward`` (one task per chunk computes ``grad_x`` and the
chunk's parameter-gradient partials; see that module).  ``normfast.<op>(dask_array, ...)``
dispatches here.

Chunks that are not NumPy arrays (e.g. CuPy) are handed to normfast's generic top-level
functions (``normfast.moments``, ``normfast.batch_norm``, ``normfast.layer_norm``), cast to
float64 for the statistics; the partial statistics always come back to host NumPy.

Threads: on ``dask.distributed`` workers the kernels run single-threaded (the nanny sets
``OMP_NUM_THREADS=1``; parallelism comes from the workers).  With Dask's local threaded
scheduler every task may also start normfast's OpenMP threads; call
``normfast.set_num_threads(1)`` to avoid oversubscribing the cores.
"""
import functools
import math
import numbers

try:
    import dask
    import dask.array as da
except ImportError as err:           # pragma: no cover - exercised by a subprocess test
    raise ImportError("normfast.dask needs Dask: pip install 'normfast[dask]'") from err
import numpy as np
from dask.array.utils import asarray_safe

from . import _core, _running
from ._engine_cpu import CpuEngine
from ._checks import FLOAT_DTYPES, check_eps, check_int, check_param, normalize_axes
from ._docs import fill
from ._batch_norm import channel_dims
from ._layer_norm import normalized_axes
from ._moments import Moments, _count_mean_m2

__all__ = ["STATS_DTYPE", "add_layer_norm_backward", "add_rms_norm_backward", "batch_norm", "batch_norm_backward",
           "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward", "layer_norm",
           "layer_norm_backward", "moments", "moments_state", "normalize", "rms_norm", "rms_norm_backward",
           "standardize"]

#: dtype of the partial / merged statistics (one record per kept position).
STATS_DTYPE = np.dtype([("count", np.float64), ("mean", np.float64), ("m2", np.float64)])


# --------------------------------------------------------------------------- checks

def _check_array(x, fname):
    """A Dask array of float16/32/64 (NumPy arrays are wrapped as one chunk)."""
    if not isinstance(x, da.Array):
        if isinstance(x, np.ndarray):
            x = da.from_array(x, chunks=x.shape or ())
        else:
            raise TypeError(f"{fname}: x must be a dask.array.Array, got {type(x).__name__}")
    if x.dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{fname}: x must have a floating dtype (float16, float32 or float64), got {x.dtype}")
    return x


def _known(*sizes):
    return all(isinstance(s, numbers.Integral) or (isinstance(s, float) and math.isfinite(s)) for s in sizes)


def _out_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _channel_chunks(p, chunks):
    """A (C,) parameter / statistic as a Dask array chunked like x's channel axis (None stays None)."""
    if p is None:
        return None
    return da.from_array(np.asarray(p), chunks=(chunks,))


def _bw_arg(a, ind):
    """(array, index) pair for da.blockwise; None literals are passed through."""
    return (a, ind) if a is not None else (None, None)


def _like(a, block):
    """`a` (a small NumPy array) on the array library of `block`."""
    if a is None or isinstance(block, np.ndarray):
        return a
    return asarray_safe(a, like=block)


def _to_numpy(a):
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------- statistics reduction

def _nan_stats(block, axis, bad):
    """(count, mean, M2) ignoring NaN, of the kept positions `bad` (a boolean mask of the
    kept shape) of a NumPy block, in float64.

    Scalar math per position (corrected two-pass over the non-NaN values v, n of them)::

        c = sum(v) / n;  d = v - c;  s = sum(d)
        mean = c + s / n;  M2 = sum(d**2) - s**2 / n
    """
    kept = [i for i in range(block.ndim) if i not in axis]
    rows = np.moveaxis(block, list(axis), list(range(len(kept), block.ndim)))
    rows = rows.reshape(bad.shape + (-1,))[bad].astype(np.float64)
    ok = ~np.isnan(rows)
    n = ok.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(ok, rows, 0.0).sum(axis=1) / n
        d = np.where(ok, rows - c[:, None], 0.0)
        s = d.sum(axis=1)
        mean = c + s / n
        m2 = np.maximum((d * d).sum(axis=1) - s * s / n, 0.0)
    return n, np.where(n > 0, mean, np.nan), np.where(n > 0, m2, 0.0)


def _block_stats(block, axis, keepdims=True, skipna=False, **kwargs):
    """Dask `chunk` step: (count, mean, M2) of one block over `axis`, as a STATS_DTYPE array
    with the block's shape and 1 on the reduced axes.  `skipna`: NaN values are left out
    (the positions whose kernel result is not finite are recomputed by :func:`_nan_stats`)."""
    axis = tuple(axis)
    shape = tuple(1 if i in axis else s for i, s in enumerate(block.shape))
    if isinstance(block, np.ndarray):
        count, mean, m2, _ = _count_mean_m2(block, axis)
        if skipna:
            bad = ~(np.isfinite(mean) & np.isfinite(m2)) if count else np.zeros(mean.shape, bool)
            count = np.full(mean.shape, float(count))
            if bad.any():
                count[bad], mean[bad], m2[bad] = _nan_stats(block, axis, bad)
    else:
        # Foreign chunk (CuPy, ...): the generic top-level function, in float64.
        import normfast
        b64 = block.astype(np.float64)
        mean, var, count = normfast.moments(b64, axis, return_count=True)
        mean, var = _to_numpy(mean), _to_numpy(var)
        m2 = var * count if count > 0 else np.zeros_like(var)
    out = np.empty(shape, dtype=STATS_DTYPE)
    out["count"] = count
    out["mean"] = np.reshape(mean, shape)
    out["m2"] = np.reshape(m2, shape)
    return out


def _flatten(parts):
    if isinstance(parts, (list, tuple)):
        for p in parts:
            yield from _flatten(p)
    else:
        yield parts


def _merge_stats(parts, axis, keepdims=True, **kwargs):
    """Dask `combine` / `aggregate` step: Chan's merge of the partial states (nested lists)."""
    blocks = list(_flatten(parts))
    m = Moments.reduce(Moments(b["count"], b["mean"], b["m2"]) for b in blocks)
    shape = blocks[0].shape
    out = np.empty(shape, dtype=STATS_DTYPE)
    out["count"] = m.count
    out["mean"] = np.where(m.count == 0, np.nan, m.mean)
    out["m2"] = m.m2
    if not keepdims:
        out = out.reshape(tuple(s for i, s in enumerate(shape) if i not in axis))
    return out


def _point_stats(block):
    """Statistics of single elements (no reduced axis): count 1, mean x, M2 0."""
    out = np.empty(block.shape, dtype=STATS_DTYPE)
    out["count"] = 1.0
    out["mean"] = _to_numpy(block)
    out["m2"] = 0.0
    return out


def _stats(x, axes, keepdims=False, split_every=None, skipna=False):
    """Lazy STATS_DTYPE Dask array: the merged (count, mean, M2) of x over `axes` (float64),
    chunked like x's kept axes.  x is read once.  `skipna`: NaN values are left out."""
    if not axes:
        st = x.map_blocks(_point_stats, dtype=STATS_DTYPE, meta=np.empty((0,) * x.ndim, STATS_DTYPE))
        return st
    meta = np.empty((0,) * (x.ndim if keepdims else x.ndim - len(axes)), dtype=STATS_DTYPE)
    chunk = functools.partial(_block_stats, skipna=True) if skipna else _block_stats
    return da.reduction(x, chunk, _merge_stats, combine=_merge_stats, axis=axes, keepdims=keepdims,
                        dtype=STATS_DTYPE, split_every=split_every, concatenate=False, meta=meta,
                        name="normfast-moments")


def _maybe_compute(st, compute_stats):
    """With compute_stats, evaluate the statistics now and return them as a constant Dask array."""
    if not compute_stats:
        return st
    (val,) = dask.compute(st)
    return da.from_array(val, chunks=st.chunks)


def _var_block(st, correction):
    c = st["count"] - correction
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c > 0, st["m2"] / np.where(c > 0, c, 1), np.nan)


def _reduced_axes(x, axis):
    if x.ndim == 0:
        if axis is not None:
            raise ValueError(f"axis={axis} is out of range for an array of 0 dimensions")
        return ()
    return tuple(range(x.ndim)) if axis is None else normalize_axes(axis, x.ndim)


@fill
def moments(x, axis=None, *, correction=0, keepdims=False, return_count=False, split_every=None):
    """Mean and variance of the Dask array ``x`` over ``axis``, reading ``x`` once.

    Same contract as :func:`normfast.moments`.  Accumulation and the merge of the chunks'
    partial states (Chan's formula in Dask's tree reduction) are float64, so the result equals
    the in-memory ``normfast.moments`` to float64 rounding, for any chunking.  ``mean`` and
    ``var`` share one reduction: compute them together (``dask.compute(mean, var)``) to read
    ``x`` once.  :func:`moments_state` returns the float64 :class:`normfast.Moments` itself.

    Parameters
    ----------
    {dask_x}
    axis : None, int or tuple of int, default None
        The reduced axes (None: all).
    correction : int >= 0, default 0
        Degrees of freedom removed from the count (0: biased, 1: unbiased).
    keepdims : bool, default False
    return_count : bool, default False
        Also return the number of values per statistic.
    {split_every}

    Returns
    -------
    mean, var : dask.array.Array
        Lazy, of the kept axes' shape; float64 for float64 input, float32 otherwise.
    count : int, only with ``return_count``
        A Python int when the shape is known, else a lazy 0-d Dask array.

    {dask_raises}

    {dask_examples}
    >>> x = da.from_array(np.arange(12.0).reshape(6, 2), chunks=(2, 2))
    >>> mean, var = nd.moments(x, axis=0)
    >>> [a.tolist() for a in dask.compute(mean, var)]
    [[5.0, 6.0], [11.666666666666666, 11.666666666666666]]
    """
    x = _check_array(x, "moments")
    correction = check_int(correction, "correction", 0)
    axes = _reduced_axes(x, axis)
    xx = x.reshape((1,)) if x.ndim == 0 else x
    st = _stats(xx, axes or (0,), keepdims, split_every)
    if x.ndim == 0:
        st = st.reshape(())
    dt = _out_dtype(x.dtype)
    mean = st["mean"].astype(dt)
    var = st.map_blocks(_var_block, correction, dtype=np.float64).astype(dt)
    if not return_count:
        return mean, var
    red_sizes = [x.shape[i] for i in axes]
    if _known(*red_sizes):
        count = _core.prod(red_sizes)
    else:
        count = st["count"].ravel()[0].astype(np.int64) if st.size else da.zeros((), dtype=np.int64)
    return mean, var, count


def _state_of(st, scalar):
    st = st.reshape(()) if scalar else st
    return Moments(st["count"], st["mean"], st["m2"])


@fill
def moments_state(x, axis=0, *, split_every=None, skipna=False, compute=True):
    """The float64 :class:`normfast.Moments` (count, mean, M2) of ``x`` over ``axis``.

    The Dask counterpart of :meth:`normfast.Moments.from_array`.  The state merges with other
    states (:meth:`~normfast.Moments.merge`, e.g. other datasets or shards) and pickles
    compactly.

    Parameters
    ----------
    {dask_x}
    axis : None, int or tuple of int, default 0
        The reduced axes.
    {split_every}
    skipna : bool, default False
        Leave NaN values out (``count`` is then per position).
    compute : bool, default True
        Compute now, in one read of ``x``; False: a lazy ``dask.delayed`` object (compute it
        together with other results to share the read of ``x``).

    Returns
    -------
    Moments or dask.delayed.Delayed
        The state (``count`` broadcast to the statistics' shape), or a Delayed computing to it.

    {dask_raises}

    {dask_examples}
    >>> x = da.from_array(np.array([[1.0, np.nan], [3.0, 4.0]]), chunks=1)
    >>> m = nd.moments_state(x, skipna=True)
    >>> m.count.tolist(), m.mean.tolist()
    ([2.0, 1.0], [2.0, 4.0])
    """
    x = _check_array(x, "moments_state")
    axes = _reduced_axes(x, axis)
    xx = x.reshape((1,)) if x.ndim == 0 else x
    st = _stats(xx, axes or (0,), False, split_every, skipna)
    if not compute:
        return dask.delayed(_state_of, pure=True)(st, x.ndim == 0)
    (st,) = dask.compute(st)
    return _state_of(st, x.ndim == 0)


# --------------------------------------------------------------------------- applying statistics

def _apply_np(block, red_axes, mean, p, q):
    """y = (x - mean) * p + q on a NumPy block with mean/p/q per kept position (float64, any
    shape of block.size / prod(reduced) elements in C order of the kept axes): one kernel pass."""
    xk = _core.as_kernel_input(block)
    red = set(red_axes)
    kept = [i for i in range(xk.ndim) if i not in red]
    mean, p, q = (np.ascontiguousarray(np.reshape(a, -1), dtype=np.float64) for a in (mean, p, q))
    dims = _core.plan4d(xk.shape, red)
    if dims is not None:
        y = np.empty_like(xk)
        CpuEngine.apply(xk, dims, mean, p, q, y)
    else:
        xt, perm, rows_dims = _core.as_rows(xk, kept, sorted(red))
        yt = np.empty_like(xt)
        CpuEngine.apply(xt, rows_dims, mean, p, q, yt)
        y = np.empty_like(xk)
        y.transpose(perm)[...] = yt
    return y if y.dtype == block.dtype else y.astype(block.dtype)


def _apply_generic(block, red_axes, mean, p, q):
    """Same as _apply_np for a foreign (non-NumPy) chunk, with its own array library, in float64."""
    shape = tuple(1 if i in red_axes else s for i, s in enumerate(block.shape))
    mean, p, q = (_like(np.reshape(a, shape), block) for a in (mean, p, q))
    return ((block.astype(np.float64) - mean) * p + q).astype(block.dtype)


def _apply(block, red_axes, mean, p, q):
    return (_apply_np if isinstance(block, np.ndarray) else _apply_generic)(block, tuple(red_axes), mean, p, q)


def _standardize_block(block, st, red_axes, eps, correction):
    with np.errstate(divide="ignore", invalid="ignore"):
        rstd = 1.0 / np.sqrt(_var_block(st, correction) + eps)
    return _apply(block, red_axes, st["mean"], rstd, np.zeros_like(rstd))


@fill
def standardize(x, axis=0, *, eps=0.0, correction=0, compute_stats=False, split_every=None):
    """Feature standardization ``(x - mean) / sqrt(var + eps)`` with statistics over ``axis``.

    The Dask counterpart of ``(x - x.mean(axis)) / x.std(axis)`` (``axis=0`` of an
    (n_samples, n_features) array standardizes every feature); with ``correction=0`` it is
    ``normfast.normalize(x, axis, eps=eps)`` on the in-memory array.  Statistics: one read of
    ``x`` (:func:`moments`' reduction); then every chunk is normalized by normfast's kernel
    (``blockwise``).

    Parameters
    ----------
    {dask_x}
    axis : int or tuple of int, default 0
        The reduced axes.
    eps : float, default 0.0
        Added to the variance; with 0 a constant feature gives NaN (0/0), as NumPy does.
    correction : int >= 0, default 0
        0: biased variance (like ``numpy.std``), 1: unbiased.
    {dask_stats}

    {dask_y}

    {dask_raises}

    {dask_examples}
    >>> x = da.from_array(np.arange(12.0).reshape(6, 2), chunks=(2, 1))
    >>> z = nd.standardize(x).compute()
    >>> xn = x.compute()
    >>> np.allclose(z, (xn - xn.mean(0)) / xn.std(0)), z.shape
    (True, (6, 2))
    """
    x = _check_array(x, "standardize")
    if x.ndim == 0:
        raise ValueError("standardize: x must have at least 1 dimension")
    axes = normalize_axes(axis, x.ndim)
    eps = check_eps(eps)
    correction = check_int(correction, "correction", 0)
    st = _maybe_compute(_stats(x, axes, False, split_every), compute_stats)
    inds = tuple(range(x.ndim))
    kept = tuple(i for i in inds if i not in axes)
    return da.blockwise(_standardize_block, inds, x, inds, st, kept, red_axes=axes, eps=eps,
                        correction=correction, dtype=x.dtype, meta=x._meta, token="normfast-standardize")


def _bn_block(block, mean, var, w, b, eps, ca):
    import normfast
    mean, var, w, b = (_like(a, block) for a in (mean, var, w, b))
    return normfast.batch_norm(block, mean, var, w, b, training=False, eps=eps, channel_axis=ca)


_ONE_VALUE = "Expected more than 1 value per channel when training, got input size {}"


def _bn_stats_block(block, st, w, b, eps, ca):
    if st.size and np.any(st["count"] == 1):   # lazy graph, unknown chunk sizes: checked when computed
        raise ValueError(_ONE_VALUE.format(tuple(block.shape)))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = st["m2"] / st["count"]
    return _bn_block(block, st["mean"], var, w, b, eps, ca)


@fill
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, channel_axis=1, num_batches_tracked=None, compute_stats=False, split_every=None):
    """Batch normalization of a Dask array (as :func:`normfast.batch_norm`, channels on ``channel_axis``).

    training=False : every chunk is normalized with ``running_mean``/``running_var`` (required)
        by :func:`normfast.batch_norm` in eval mode; no statistics are computed.
    training=True : the per-channel batch statistics (over every axis but ``channel_axis``,
        biased variance) are reduced across all chunks (:func:`moments`' reduction, one read of
        ``x``), then every chunk is normalized with them by :func:`normfast.batch_norm` in eval
        mode (the global mean / biased variance as its running statistics).  When
        ``running_mean``/``running_var`` (or ``num_batches_tracked``) are given they are
        updated in place exactly like :func:`normfast.batch_norm` (unbiased variance,
        ``momentum``; ``momentum=None`` with ``num_batches_tracked``).  **That forces the
        statistics to be computed eagerly, at call time, with** ``dask.compute`` (one read of
        ``x``); the returned graph then uses them as constants (x is read again when the
        result is computed).  ``compute_stats=True`` does the same without buffers.

    Parameters
    ----------
    {dask_x}
    running_mean, running_var : NumPy arrays of shape (C,), optional
        Updated in place when training (eagerly, see above); used to normalize otherwise.
    {weight_bias_C}
    training : bool, default False
        Normalize with the batch statistics.
    momentum : float in [0, 1] or None, default 0.1
        As :func:`normfast.batch_norm`.
    {eps}
    {channel_axis}
    num_batches_tracked : one-element integer NumPy array, optional
        Incremented in place on every training call.
    {dask_stats}

    {dask_y}

    {dask_raises}

    {dask_examples}
    >>> x = da.from_array(np.arange(24.0).reshape(6, 4), chunks=(2, 2))
    >>> rm, rv = np.zeros(4), np.ones(4)
    >>> y = nd.batch_norm(x, rm, rv, training=True, channel_axis=-1)     # rm, rv updated now
    >>> rm.round(6).tolist(), np.allclose(y.mean(axis=0).compute(), 0.0)
    ([1.0, 1.1, 1.2, 1.3], True)
    """
    x = _check_array(x, "batch_norm")
    ca, B, C, D = channel_dims(x, channel_axis, "batch_norm")
    w, b, eps, rm, rv = _running.check_channel_args(C, weight, bias, eps, momentum, running_mean, running_var,
                                                    training)
    ch = x.chunks[ca]
    inds = tuple(range(x.ndim))
    wd, bd = _channel_chunks(w, ch), _channel_chunks(b, ch)
    if training:
        if _known(B, D) and B * D == 1:
            raise ValueError(_ONE_VALUE.format(tuple(x.shape)))
        red = tuple(i for i in inds if i != ca)
        st = _stats(x, red, False, split_every)
        track = rm is not None or rv is not None or num_batches_tracked is not None
        st = _maybe_compute(st, compute_stats or track)
        if track:
            s = st.compute()                      # already a constant: no work
            n = float(s["count"].flat[0]) if s.size else 0.0
            if n == 1:                            # unknown chunk sizes: checked on the computed count
                raise ValueError(_ONE_VALUE.format(tuple(x.shape)))
            if n > 0:                             # empty batch: buffers untouched (as torch / NumPy)
                f = _running.momentum_factor(momentum, num_batches_tracked)
                _running.update(rm, s["mean"], f)
                _running.update(rv, s["m2"] / (s["count"] - 1), f)
        return da.blockwise(_bn_stats_block, inds, x, inds, st, (ca,), *_bw_arg(wd, (ca,)), *_bw_arg(bd, (ca,)),
                            eps=eps, ca=ca, dtype=x.dtype, meta=x._meta, token="normfast-batch_norm")
    if rm is None or rv is None:
        raise ValueError("running_mean and running_var must be given when training=False")
    md = _channel_chunks(rm.copy(), ch)
    vd = _channel_chunks(rv.copy(), ch)
    return da.blockwise(_bn_block, inds, x, inds, md, (ca,), vd, (ca,), *_bw_arg(wd, (ca,)), *_bw_arg(bd, (ca,)),
                        eps=eps, ca=ca, dtype=x.dtype, meta=x._meta, token="normfast-batch_norm")


@fill
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization over the trailing ``normalized_shape`` dims (as :func:`normfast.layer_norm`).

    Every row (one position of the leading axes) is normalized on its own, so no reduction
    across chunks is needed: :func:`normfast.layer_norm` runs on every chunk (``map_blocks``).
    **If the normalized (trailing) axes are split across chunks, x is first rechunked to a
    single chunk along them** (``x.rechunk({axis: -1})``; the leading axes keep their
    chunks), so that every chunk holds whole rows -- chunk along the leading axes to avoid
    that.

    Parameters
    ----------
    {dask_x}
    {normalized_shape}
    {weight_bias_rows}
    {eps}

    {dask_rows_y}

    {dask_examples}
    >>> x = da.random.default_rng(0).normal(size=(8, 16), chunks=(4, 8))
    >>> y = nd.layer_norm(x, 16)
    >>> y.chunks, np.allclose(y.compute(), nf.layer_norm(x.compute(), 16))
    (((4, 4), (16,)), True)
    """
    x = _check_array(x, "layer_norm")
    shape, axes = normalized_axes(x, normalized_shape, "layer_norm")
    w = check_param(weight, shape, "weight")
    b = check_param(bias, shape, "bias")
    eps = check_eps(eps)
    if any(len(x.chunks[i]) > 1 for i in axes):
        x = x.rechunk({i: -1 for i in axes})
    return x.map_blocks(_ln_block, shape, w, b, eps, dtype=x.dtype, meta=x._meta, token="normfast-layer_norm")


def _ln_block(block, shape, w, b, eps):
    import normfast
    w, b = _like(w, block), _like(b, block)
    return normfast.layer_norm(block, shape, w, b, eps)


def _merge_groups(st, G):
    """(N, C) per-(n, c) states -> the (N, C) states of each channel's group (Chan's merge over
    the group's C/G channels, repeated over them)."""
    N, C = st.shape
    Cg = C // G
    g = st.reshape(N, G, Cg)
    m = Moments.reduce(Moments(g["count"][..., k], g["mean"][..., k], g["m2"][..., k]) for k in range(Cg))
    out = np.empty((N, G, Cg), dtype=STATS_DTYPE)
    out["count"] = m.count[..., None]
    out["mean"] = np.where(m.count == 0, np.nan, m.mean)[..., None]
    out["m2"] = m.m2[..., None]
    return out.reshape(N, C)


def _gn_block(block, st, w, b, eps, ca):
    """Normalize a (n, ..., c, ...) block with per-(n, c) states (group statistics)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rstd = 1.0 / np.sqrt(st["m2"] / st["count"] + eps)
    mean = st["mean"]
    p = rstd if w is None else rstd * np.asarray(w, dtype=np.float64)
    q = np.zeros_like(p) if b is None else np.broadcast_to(np.asarray(b, dtype=np.float64), p.shape)
    red = tuple(i for i in range(block.ndim) if i not in (0, ca))
    return _apply(block, red, mean, p, q)


@fill
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, compute_stats=False,
               split_every=None):
    """Group normalization of a Dask array (as :func:`normfast.group_norm`).

    Per-(sample, channel) states are reduced over the spatial axes (one read of x, chunked in
    any way), merged per group of C/num_groups channels (Chan's formula, on the small (N, C)
    states), and every chunk is normalized with its groups' statistics by normfast's apply
    kernel.

    Parameters
    ----------
    x : dask.array.Array, (N, C, *spatial) or (N, *spatial, C) with ``channel_axis=-1``
        float16, float32 or float64, any chunking.
    num_groups : int
        Divides C.
    {weight_bias_C}
    {eps}
    {dask_tail_C}

    {dask_examples}
    >>> x = da.from_array(np.random.default_rng(0).normal(size=(2, 4, 6)), chunks=(1, 2, 3))
    >>> y = nd.group_norm(x, 2)
    >>> np.allclose(y.compute(), nf.group_norm(x.compute(), 2))
    True
    """
    x = _check_array(x, "group_norm")
    ca, _, C, _ = channel_dims(x, channel_axis, "group_norm")
    if ca == 0:
        raise ValueError("group_norm: channel_axis must not be the batch axis 0")
    G = check_int(num_groups, "num_groups", 1)
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels C={C}")
    w = check_param(weight, (C,), "weight")
    b = check_param(bias, (C,), "bias")
    eps = check_eps(eps)
    inds = tuple(range(x.ndim))
    red = tuple(i for i in inds if i not in (0, ca))
    st = _stats(x, red, False, split_every)                      # (N, C)
    if G != C:
        st = st.rechunk({1: -1}).map_blocks(_merge_groups, G, dtype=STATS_DTYPE)
        st = st.rechunk({1: x.chunks[ca]})
    st = _maybe_compute(st, compute_stats)
    ch = x.chunks[ca]
    wd, bd = _channel_chunks(w, ch), _channel_chunks(b, ch)
    return da.blockwise(_gn_block, inds, x, inds, st, (0, ca), *_bw_arg(wd, (ca,)), *_bw_arg(bd, (ca,)),
                        eps=eps, ca=ca, dtype=x.dtype, meta=x._meta, token="normfast-group_norm")


def _affine_block(block, st, w, b, red_axes, eps):
    """(x - mean) * rstd * w + b on one block, in float64, w/b over the reduced axes."""
    red = tuple(red_axes)
    kept_shape = tuple(1 if i in red else n for i, n in enumerate(block.shape))
    red_shape = tuple(n if i in red else 1 for i, n in enumerate(block.shape))
    with np.errstate(divide="ignore", invalid="ignore"):
        rstd = 1.0 / np.sqrt(_var_block(st, 0) + eps)
    y = (_to_numpy(block) - st["mean"].reshape(kept_shape)) * rstd.reshape(kept_shape)
    if w is not None:
        y = y * _to_numpy(w).reshape(red_shape)
    if b is not None:
        y = y + _to_numpy(b).reshape(red_shape)
    y = y.astype(block.dtype)
    return y if isinstance(block, np.ndarray) else _like(y, block)


@fill
def normalize(x, axis=-1, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False, compute_stats=False,
              split_every=None):
    """``normfast.normalize`` for Dask arrays: ``(x - mean) / sqrt(var + eps) * weight + bias``
    over ``axis`` (biased variance), lazy.

    Statistics: one read of x (:func:`moments`' reduction); then every chunk is normalized,
    the affine applied in float64.

    Parameters
    ----------
    {dask_x}
    axis : int or tuple of int, default -1
        The normalized axes.
    weight, bias : NumPy arrays of shape ``x.shape[axis]``, optional
        The normalized axes' shape, in increasing axis order.
    {eps}
    out, return_stats
        Not supported on Dask arrays (must be None / False).
    {dask_stats}

    {dask_y}

    Raises
    ------
    TypeError
        ``out`` or ``return_stats`` given, a non-floating x.
    ValueError
        Axes out of range, parameters of the wrong shape, a bad eps.

    {dask_examples}
    >>> x = da.from_array(np.arange(12.0).reshape(3, 4), chunks=2)
    >>> y = nd.normalize(x, axis=0, weight=np.full(3, 2.0), eps=0.0)
    >>> np.allclose(y.compute(), nf.normalize(x.compute(), axis=0, weight=np.full(3, 2.0), eps=0.0))
    True
    """
    if out is not None or return_stats:
        raise TypeError("normalize on a Dask array supports no out or return_stats")
    if weight is None and bias is None:
        return standardize(x, axis, eps=eps, compute_stats=compute_stats, split_every=split_every)
    x = _check_array(x, "normalize")
    axes = normalize_axes(axis, x.ndim)
    shape = tuple(x.shape[i] for i in axes)
    w = check_param(weight, shape, "weight")
    b = check_param(bias, shape, "bias")
    eps = check_eps(eps)
    st = _maybe_compute(_stats(x, axes, False, split_every), compute_stats)
    inds = tuple(range(x.ndim))
    kept = tuple(i for i in inds if i not in axes)
    pchunks = tuple(x.chunks[i] for i in axes)
    wd = None if w is None else da.from_array(w, chunks=pchunks)
    bd = None if b is None else da.from_array(b, chunks=pchunks)
    return da.blockwise(_affine_block, inds, x, inds, st, kept, *_bw_arg(wd, axes), *_bw_arg(bd, axes),
                        red_axes=axes, eps=eps, dtype=x.dtype, meta=x._meta, token="normfast-normalize")


from ._dask_ops import (add_layer_norm_backward, add_rms_norm_backward, batch_norm_backward,  # noqa: E402
                        group_norm_backward, instance_norm, instance_norm_backward, layer_norm_backward,
                        rms_norm, rms_norm_backward)
