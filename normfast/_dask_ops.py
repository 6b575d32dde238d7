"""The rest of normfast on Dask arrays: rms_norm, instance_norm and every ``*_backward``.

Re-exported by :mod:`normfast.dask` (import that).  Same plan as there:

- **Per-row / per-sample operators** (rms_norm, and the backward of layer_norm, rms_norm,
  add_layer_norm, add_rms_norm, group_norm, instance_norm) need whole rows (samples) in a
  chunk: the normalized axes (every axis but the batch axis 0 for group / instance norm) are
  rechunked to one chunk if they are split (chunk along the leading axes to avoid that).
- **Backward, one task per chunk**: every chunk of ``(grad_out, x)`` is read once by one
  task that runs normfast's backward kernel and returns the chunk of ``grad_x`` together with
  its float64 partial ``grad_weight``/``grad_bias``; the partials are summed in chunk order
  (deterministic).  ``grad_x`` and the parameter gradients share those tasks: compute them
  together (``dask.compute(gx, gw, gb)``) to read the inputs once.
- **batch_norm_backward** (training) needs the per-channel sums over the whole batch before
  any ``grad_x``: a first read reduces ``(sum dy, sum dy * x_hat)`` per channel, a second
  computes ``grad_x`` (the same two passes as the in-memory kernel).  The channel axis is
  rechunked to one chunk.

Statistics arguments (``mean``, ``rstd``) may be NumPy or Dask arrays.  Results are lazy Dask
arrays; parameter gradients come back in the weight's dtype (x's dtype without a weight).
"""
import dask
import dask.array as da
import numpy as np

from . import _running
from ._batch_norm import channel_dims
from ._checks import check_eps, check_int, check_momentum, check_param
from ._docs import fill
from ._group_norm import sample_channel_dims
from ._layer_norm import normalized_axes
from .dask import (_bn_block, _bw_arg, _channel_chunks, _check_array, _gn_block, _like, _maybe_compute,
                   _stats, _to_numpy)


# --------------------------------------------------------------------------- helpers

def _whole(x, axes):
    """x with the given axes in one chunk each (no-op when they already are)."""
    if any(len(x.chunks[i]) > 1 for i in axes):
        x = x.rechunk({i: -1 for i in axes})
    return x


def _as_dask(a, x, axes, name):
    """A statistic (NumPy or Dask) whose leading dims align with x's `axes` and whose other
    dims are whole: a Dask array chunked to match x's blocks."""
    if a is None:
        return None
    shape = tuple(x.shape[i] for i in axes)
    if tuple(a.shape[:len(axes)]) != shape:
        raise ValueError(f"{name} must have leading shape {shape}, got {tuple(a.shape)}")
    chunks = tuple(x.chunks[i] for i in axes) + tuple((n,) for n in a.shape[len(axes):])
    if isinstance(a, da.Array):
        return a.rechunk(chunks)
    return da.from_array(np.asarray(a), chunks=chunks)


def _block_of(d, ndim, idx, axes):
    """The Delayed block (of `d`, a statistic's to_delayed() aligned with x's `axes`) for x's block `idx`."""
    if d is None:
        return None
    return d[tuple(idx[i] for i in axes) + (0,) * (ndim - len(axes))]


def _sum_partials(parts):
    """Sum of the chunks' float64 partial gradients, in chunk order (None if there are none)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    total = np.zeros_like(parts[0], dtype=np.float64)
    for p in parts:
        total += p
    return total


def _assemble(x, out_blocks, dtype):
    """A Dask array of x's shape and chunks from an object array of Delayed blocks."""
    arr = np.empty(out_blocks.shape, dtype=object)
    for idx in np.ndindex(out_blocks.shape):
        shape = tuple(x.chunks[d][i] for d, i in enumerate(idx))
        arr[idx] = da.from_delayed(out_blocks[idx], shape=shape, dtype=dtype, meta=x._meta)
    return da.block(arr.tolist()) if arr.ndim else arr[()]


def _per_chunk(fn, x, arrays, stats, n_params, param_shape, grad_dtype, **kwargs):
    """Run ``fn(*array_blocks, *stat_blocks, **kwargs) -> (dx_block, partial_1, ...)`` once per
    chunk of x; returns (dx, *params) as lazy Dask arrays (None where fn returns None)."""
    blocks = [a.to_delayed(optimize_graph=False) for a in arrays]
    stats = [(None if s is None else s.to_delayed(optimize_graph=False), 0 if s is None else s.ndim, ax)
             for s, ax in stats]
    task = dask.delayed(fn, pure=True, nout=1 + n_params)
    results = np.empty(blocks[0].shape, dtype=object)
    for idx in np.ndindex(blocks[0].shape):
        results[idx] = task(*(b[idx] for b in blocks), *(_block_of(d, nd, idx, ax) for d, nd, ax in stats), **kwargs)
    dx_blocks = np.empty(results.shape, dtype=object)
    for idx in np.ndindex(results.shape):
        dx_blocks[idx] = results[idx][0]
    dx = _assemble(x, dx_blocks, x.dtype) if kwargs.get("needs", (True,))[0] else None
    params = []
    for j in range(n_params):
        if not kwargs.get("needs", (True,) * (1 + n_params))[1 + j] or param_shape is None:
            params.append(None)
            continue
        total = dask.delayed(_sum_partials, pure=True)([results[idx][1 + j] for idx in np.ndindex(results.shape)])
        params.append(da.from_delayed(dask.delayed(np.asarray)(total, grad_dtype), shape=param_shape,
                                      dtype=grad_dtype))
    return (dx, *params)


def _grad_dtype(x, weight):
    return weight.dtype if isinstance(weight, np.ndarray) and weight.dtype.kind == "f" else x.dtype


def _check_grad(grad_out, x, name="grad_out"):
    g = _check_array(grad_out, name)
    if tuple(g.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(g.shape)}")
    return g.rechunk(x.chunks)


# --------------------------------------------------------------------------- rms_norm

def _rms_block(block, shape, w, eps):
    import normfast
    return normfast.rms_norm(block, shape, _like(w, block), eps)


@fill
def rms_norm(x, normalized_shape, weight=None, eps=None):
    """RMS normalization over the trailing ``normalized_shape`` dims (as :func:`normfast.rms_norm`).

    Every row is normalized on its own by :func:`normfast.rms_norm` on every chunk
    (``map_blocks``); split normalized axes are first rechunked to one chunk (as
    :func:`normfast.dask.layer_norm`).

    Parameters
    ----------
    {dask_x}
    {normalized_shape}
    weight : array of shape ``normalized_shape``, optional
        Elementwise scale.
    {eps_rms}

    {dask_rows_y}

    {dask_examples}
    >>> x = da.ones((4, 6), chunks=(2, 3))
    >>> nd.rms_norm(x, 6, eps=0.0).compute().tolist()[0]
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    x = _check_array(x, "rms_norm")
    shape, axes = normalized_axes(x, normalized_shape, "rms_norm")
    w = check_param(weight, shape, "weight")
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_eps(eps)
    x = _whole(x, axes)
    return x.map_blocks(_rms_block, shape, w, eps, dtype=x.dtype, meta=x._meta, token="normfast-rms_norm")


# --------------------------------------------------------------------------- instance_norm

@fill
def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, compute_stats=False, split_every=None):
    """Instance normalization of a Dask array (as :func:`normfast.instance_norm`).

    use_input_stats=True : per-(sample, channel) statistics over the spatial axes (one read of
        x, any chunking), then every chunk is normalized with them.  When
        ``running_mean``/``running_var`` are given they are updated in place with the batch
        average of the instance means and unbiased variances (torch's rule); **that computes
        the statistics at call time** (as :func:`normfast.dask.batch_norm`).
    use_input_stats=False : every chunk is normalized with the running statistics.

    Parameters
    ----------
    x : dask.array.Array, (N, C, *spatial) or (N, *spatial, C) with ``channel_axis=-1``
        float16, float32 or float64, any chunking.
    running_mean, running_var : NumPy arrays of shape (C,), optional
        Updated in place (eagerly) with input statistics; used to normalize without.
    {weight_bias_C}
    use_input_stats : bool, default True
        Normalize with each instance's own statistics.
    {momentum}
    {eps}
    {dask_tail_C}

    {dask_examples}
    >>> x = da.from_array(np.random.default_rng(0).normal(size=(4, 3, 10)), chunks=(2, 3, 5))
    >>> np.allclose(nd.instance_norm(x).compute(), nf.instance_norm(x.compute()))
    True
    """
    x = _check_array(x, "instance_norm")
    N, pre, C, post = sample_channel_dims(x, channel_axis, "instance_norm")
    ca = channel_axis % x.ndim
    w = check_param(weight, (C,), "weight")
    b = check_param(bias, (C,), "bias")
    eps = check_eps(eps)
    check_momentum(momentum)
    rm, rv = _running.check_running(running_mean, running_var, C, use_input_stats)
    inds = tuple(range(x.ndim))
    ch = x.chunks[ca]
    wd, bd = _channel_chunks(w, ch), _channel_chunks(b, ch)
    if not use_input_stats:
        if rm is None or rv is None:
            raise ValueError("running_mean and running_var must be given when use_input_stats=False")
        md, vd = _channel_chunks(rm.copy(), ch), _channel_chunks(rv.copy(), ch)
        return da.blockwise(_bn_block, inds, x, inds, md, (ca,), vd, (ca,), *_bw_arg(wd, (ca,)),
                            *_bw_arg(bd, (ca,)), eps=eps, ca=ca, dtype=x.dtype, meta=x._meta,
                            token="normfast-instance_norm")
    spatial = pre * post
    if isinstance(spatial, int) and spatial == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
    red = tuple(i for i in inds if i not in (0, ca))
    track = rm is not None or rv is not None
    st = _maybe_compute(_stats(x, red, False, split_every), compute_stats or track)      # (N, C)
    if track:
        s = st.compute()
        if s.size and np.any(s["count"] == 1):
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
        if s.size and s["count"].flat[0] > 0:
            f = _running.momentum_factor(momentum, None)
            _running.update(rm, s["mean"].mean(axis=0), f)
            _running.update(rv, (s["m2"] / (s["count"] - 1)).mean(axis=0), f)
    return da.blockwise(_gn_block, inds, x, inds, st, (0, ca), *_bw_arg(wd, (ca,)), *_bw_arg(bd, (ca,)),
                        eps=eps, ca=ca, dtype=x.dtype, meta=x._meta, token="normfast-instance_norm")


# --------------------------------------------------------------------------- row-wise backward

def _ln_bw_block(dy, x, mean, rstd, shape, w, needs):
    import normfast
    return normfast.layer_norm_backward(dy, x, mean, rstd, shape, w, needs_input_grad=needs)


def _rms_bw_block(dy, x, rstd, shape, w, needs):
    import normfast
    dx, dw = normfast.rms_norm_backward(dy, x, rstd, shape, w, needs_input_grad=needs)
    return dx, dw


def _add_bw_block(dy, gh, h, mean, rstd, shape, w, rms, needs):
    import normfast
    if rms:
        return (*normfast.add_rms_norm_backward(dy, gh, h, rstd, shape, w), None)
    return normfast.add_layer_norm_backward(dy, gh, h, mean, rstd, shape, w)


def _rows_setup(grad_out, x, normalized_shape, weight, fname):
    x = _check_array(x, fname)
    shape, axes = normalized_axes(x, normalized_shape, fname)
    w = check_param(weight, shape, "weight")          # float64: the chunks' partials stay float64
    x = _whole(x, axes)
    return _check_grad(grad_out, x), x, shape, tuple(range(x.ndim - len(shape))), w


@fill
def layer_norm_backward(grad_out, x, mean, rstd, normalized_shape, weight=None, *,
                        needs_input_grad=(True, True, True)):
    """Gradients of :func:`normfast.dask.layer_norm`: lazy ``(grad_x, grad_weight, grad_bias)``.

    One task per chunk of whole rows (module docstring).

    Parameters
    ----------
    grad_out, x : dask.array.Array
        The gradient of the output and the forward's input, of the same shape.
    mean, rstd : NumPy or Dask arrays of shape ``x.shape[:-len(normalized_shape)]``
        As returned by ``normfast.layer_norm(..., return_stats=True)``.
    {normalized_shape}
    weight : NumPy array of shape ``normalized_shape``, optional
        The forward's weight (None: no parameter gradients).
    {dask_bwd_tail}

    {dask_examples}
    >>> x = da.random.default_rng(0).normal(size=(6, 8), chunks=(3, 8))
    >>> y, mean, rstd = nf.layer_norm(x.compute(), 8, return_stats=True)
    >>> gx, gw, gb = nd.layer_norm_backward(da.ones_like(x), x, mean, rstd, 8, np.ones(8))
    >>> np.allclose(gx.compute(), 0.0), gb.compute().tolist() == [6.0] * 8
    (True, True)
    """
    dy, x, shape, lead, w = _rows_setup(grad_out, x, normalized_shape, weight, "layer_norm_backward")
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and w is not None, needs[2] and w is not None)
    stats = [(_as_dask(mean, x, lead, "mean"), lead), (_as_dask(rstd, x, lead, "rstd"), lead)]
    return _per_chunk(_ln_bw_block, x, [dy, x], stats, 2, shape, _grad_dtype(x, weight), shape=shape, w=w,
                      needs=needs)


@fill
def rms_norm_backward(grad_out, x, rstd, normalized_shape, weight=None, *, needs_input_grad=(True, True)):
    """Gradients of :func:`normfast.dask.rms_norm`: lazy ``(grad_x, grad_weight)``.

    Parameters
    ----------
    grad_out, x : dask.array.Array
        The gradient of the output and the forward's input, of the same shape.
    rstd : NumPy or Dask array of shape ``x.shape[:-len(normalized_shape)]``
        As returned by ``normfast.rms_norm(..., return_stats=True)``.
    {normalized_shape}
    weight : NumPy array of shape ``normalized_shape``, optional
    needs_input_grad : (bool, bool), default (True, True)

    Returns
    -------
    grad_x, grad_weight : dask.array.Array or None
        Lazy; None when not requested (grad_weight also without a weight).

    {dask_raises}

    {dask_examples}
    >>> x = da.from_array(np.arange(1.0, 9.0).reshape(2, 4), chunks=1)
    >>> y, rstd = nf.rms_norm(x.compute(), 4, return_stats=True)
    >>> gx, gw = nd.rms_norm_backward(da.zeros_like(x), x, rstd, 4)
    >>> float(abs(gx).max().compute()), gw
    (0.0, None)
    """
    dy, x, shape, lead, w = _rows_setup(grad_out, x, normalized_shape, weight, "rms_norm_backward")
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and w is not None)
    return _per_chunk(_rms_bw_block, x, [dy, x], [(_as_dask(rstd, x, lead, "rstd"), lead)], 1, shape,
                      _grad_dtype(x, weight), shape=shape, w=w, needs=needs)


def _add_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, rms, fname):
    dy, h, shape, lead, w = _rows_setup(grad_y, h, normalized_shape, weight, fname)
    gh = da.zeros_like(h) if grad_h is None else _check_grad(grad_h, h, "grad_h")
    needs = (True, w is not None, w is not None and not rms)
    stats = [(_as_dask(mean, h, lead, "mean"), lead), (_as_dask(rstd, h, lead, "rstd"), lead)]
    return _per_chunk(_add_bw_block, h, [dy, gh, h], stats, 2, shape, _grad_dtype(h, weight), shape=shape, w=w,
                      rms=rms, needs=needs)


@fill
def add_layer_norm_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight=None):
    """Gradients of ``add_layer_norm`` on Dask arrays: lazy ``(grad_input, grad_weight, grad_bias)``.

    Parameters
    ----------
    {grad_add}
    mean, rstd : NumPy or Dask arrays
        As returned by ``normfast.add_layer_norm(..., return_stats=True)``.
    {normalized_shape}
    weight : NumPy array, optional

    Returns
    -------
    grad_input : dask.array.Array
        Lazy; the gradient of both x and residual.
    grad_weight, grad_bias : dask.array.Array or None
        Lazy; None without a weight.

    {dask_raises}

    {dask_examples}
    >>> h = da.random.default_rng(1).normal(size=(4, 8), chunks=2)
    >>> y, _, mean, rstd = nf.add_layer_norm(h.compute(), np.zeros((4, 8)), 8, return_stats=True)
    >>> gi, gw, gb = nd.add_layer_norm_backward(da.zeros_like(h), da.ones_like(h), h, mean, rstd, 8)
    >>> np.allclose(gi.compute(), 1.0), gw
    (True, None)
    """
    return _add_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, False, "add_layer_norm_backward")


@fill
def add_rms_norm_backward(grad_y, grad_h, h, rstd, normalized_shape, weight=None):
    """Gradients of ``add_rms_norm`` on Dask arrays: lazy ``(grad_input, grad_weight)``.

    Parameters
    ----------
    {grad_add}
    rstd : NumPy or Dask array
        The forward's ``rstd`` (``normfast.add_rms_norm(..., return_stats=True)``).
    {normalized_shape}
    weight : NumPy array of shape ``normalized_shape``, optional

    Returns
    -------
    grad_input : dask.array.Array
        Lazy; the gradient of both x and residual.
    grad_weight : dask.array.Array or None
        Lazy; None without a weight.

    {dask_raises}

    {dask_examples}
    >>> h = da.full((2, 4), 2.0, chunks=1)
    >>> y, _, rstd = nf.add_rms_norm(np.ones((2, 4)), np.ones((2, 4)), 4, return_stats=True)
    >>> gi, gw = nd.add_rms_norm_backward(da.ones_like(h), None, h, rstd, 4, np.ones(4))
    >>> gi.shape, gw.compute().tolist()
    ((2, 4), [2.0, 2.0, 2.0, 2.0])
    """
    dx, dw, _ = _add_backward(grad_y, grad_h, h, None, rstd, normalized_shape, weight, True, "add_rms_norm_backward")
    return dx, dw


# --------------------------------------------------------------------------- per-sample backward

def _gn_bw_block(dy, x, mean, rstd, groups, w, ca, needs):
    import normfast
    return normfast.group_norm_backward(dy, x, mean, rstd, groups, w, channel_axis=ca, needs_input_grad=needs)


def _in_bw_block(dy, x, mean, rstd, w, ca, needs):
    import normfast
    return normfast.instance_norm_backward(dy, x, mean, rstd, w, channel_axis=ca, needs_input_grad=needs)


def _samples_setup(grad_out, x, weight, channel_axis, fname):
    x = _check_array(x, fname)
    _, _, C, _ = sample_channel_dims(x, channel_axis, fname)
    w = check_param(weight, (C,), "weight")
    x = _whole(x, range(1, x.ndim))
    return _check_grad(grad_out, x), x, C, channel_axis % x.ndim, w


@fill
def group_norm_backward(grad_out, x, mean, rstd, num_groups, weight=None, *, channel_axis=1,
                        needs_input_grad=(True, True, True)):
    """Gradients of :func:`normfast.dask.group_norm`: lazy ``(grad_x, grad_weight, grad_bias)``.

    Every chunk holds whole samples (x is rechunked to one chunk along every axis but 0).

    Parameters
    ----------
    grad_out, x : dask.array.Array
        The gradient of the output and the forward's input, of the same shape.
    mean, rstd : NumPy or Dask arrays of shape (N, num_groups)
        As returned by ``normfast.group_norm(..., return_stats=True)``.
    num_groups : int
        Divides C.
    weight : NumPy array of shape (C,), optional
    {channel_axis}
    {dask_bwd_tail}

    {dask_examples}
    >>> x = da.from_array(np.random.default_rng(0).normal(size=(4, 6, 5)), chunks=(2, 3, 5))
    >>> y, mean, rstd = nf.group_norm(x.compute(), 3, return_stats=True)
    >>> gx, _, _ = nd.group_norm_backward(da.ones_like(x), x, mean, rstd, 3)
    >>> gx.chunks[1], np.allclose(gx.compute(), 0.0)
    ((6,), True)
    """
    dy, x, C, ca, w = _samples_setup(grad_out, x, weight, channel_axis, "group_norm_backward")
    G = check_int(num_groups, "num_groups", 1)
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels C={C}")
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and w is not None, needs[2] and w is not None)
    stats = [(_as_dask(mean, x, (0,), "mean"), (0,)), (_as_dask(rstd, x, (0,), "rstd"), (0,))]
    return _per_chunk(_gn_bw_block, x, [dy, x], stats, 2, (C,), _grad_dtype(x, weight), groups=G, w=w, ca=ca,
                      needs=needs)


@fill
def instance_norm_backward(grad_out, x, mean, rstd, weight=None, *, channel_axis=1,
                           needs_input_grad=(True, True, True)):
    """Gradients of :func:`normfast.dask.instance_norm` with input statistics: lazy
    ``(grad_x, grad_weight, grad_bias)``.  Whole samples per chunk.

    Parameters
    ----------
    grad_out, x : dask.array.Array
        The gradient of the output and the forward's input, of the same shape.
    mean, rstd : NumPy or Dask arrays of shape (N, C)
        The input statistics (``normfast.instance_norm(..., return_stats=True)``).
    weight : NumPy array of shape (C,), optional
    {channel_axis}
    {dask_bwd_tail}

    {dask_examples}
    >>> x = da.from_array(np.arange(40.0).reshape(2, 4, 5) ** 2, chunks=(1, 4, 5))
    >>> y, mean, rstd = nf.instance_norm(x.compute(), return_stats=True)
    >>> gx, gw, gb = nd.instance_norm_backward(da.ones_like(x), x, mean, rstd, np.ones(4))
    >>> gb.compute().tolist()
    [10.0, 10.0, 10.0, 10.0]
    """
    dy, x, C, ca, w = _samples_setup(grad_out, x, weight, channel_axis, "instance_norm_backward")
    needs = tuple(bool(n) for n in needs_input_grad)
    needs = (needs[0], needs[1] and w is not None, needs[2] and w is not None)
    stats = [(_as_dask(mean, x, (0,), "mean"), (0,)), (_as_dask(rstd, x, (0,), "rstd"), (0,))]
    return _per_chunk(_in_bw_block, x, [dy, x], stats, 2, (C,), _grad_dtype(x, weight), w=w, ca=ca, needs=needs)


# --------------------------------------------------------------------------- batch_norm backward

def _bn_sums_block(dy, x, mean, rstd, ca):
    """Per-channel float64 (count, sum dy, sum dy * x_hat) of one chunk (all channels)."""
    import normfast
    C = x.shape[ca]
    _, s_dyxh, s_dy = normfast.batch_norm_backward(dy, x, mean, rstd, np.ones(C), True, channel_axis=ca,
                                                   needs_input_grad=(False, True, True))
    return np.stack([np.full(C, x.size / max(C, 1)), s_dy, s_dyxh])


def _bn_dx_block(dy, x, mean, rstd, w, sums, ca, training):
    """grad_x of one chunk in float64.  Scalar math (n values per channel, sums over the batch):
    training: dx = w * rstd * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n);
    eval:     dx = w * rstd * dy."""
    shape = tuple(-1 if i == ca else 1 for i in range(x.ndim))
    r = (np.asarray(rstd, np.float64) * (1.0 if w is None else w)).reshape(shape)
    g = _to_numpy(dy)
    if training:
        n, s_dy, s_dyxh = sums
        with np.errstate(divide="ignore", invalid="ignore"):
            xh = (_to_numpy(x) - np.asarray(mean, np.float64).reshape(shape)) * np.asarray(rstd).reshape(shape)
            g = g - (s_dy / n).reshape(shape) - xh * (s_dyxh / n).reshape(shape)
    return (g * r).astype(x.dtype)


def _row(sums, j, dtype):
    return sums[j].astype(dtype)


@fill
def batch_norm_backward(grad_out, x, mean, rstd, weight=None, training=True, *, channel_axis=1,
                        needs_input_grad=(True, True, True)):
    """Gradients of :func:`normfast.dask.batch_norm`: lazy ``(grad_x, grad_weight, grad_bias)``.

    A first read of ``(grad_out, x)`` reduces the per-channel sums with normfast's kernel
    (float64, chunk order), a second computes ``grad_x`` per chunk (not needed for
    ``training=False`` or when only the parameter gradients are requested).  The channel axis
    is rechunked to one chunk.

    Parameters
    ----------
    grad_out, x : dask.array.Array
        The gradient of the output and the forward's input, of the same shape.
    mean, rstd : NumPy arrays of shape (C,)
        The statistics the forward used (``return_stats=True``).
    weight : NumPy array of shape (C,), optional
    training : bool, default True
        False: the eval-mode gradient (the statistics are constants).
    {channel_axis}
    {dask_bwd_tail}

    {dask_examples}
    >>> x = da.from_array(np.random.default_rng(0).normal(size=(8, 3)), chunks=(4, 3))
    >>> y, mean, rstd = nf.batch_norm(x.compute(), training=True, return_stats=True)
    >>> gx, gw, gb = nd.batch_norm_backward(da.ones_like(x), x, mean, rstd, np.ones(3))
    >>> np.allclose(gx.compute(), 0.0), gb.compute().tolist()
    (True, [8.0, 8.0, 8.0])
    """
    x = _check_array(x, "batch_norm_backward")
    ca, _, C, _ = channel_dims(x, channel_axis, "batch_norm_backward")
    w = check_param(weight, (C,), "weight")
    mean = np.asarray(_to_numpy(mean)).reshape(-1)
    rstd = np.asarray(_to_numpy(rstd)).reshape(-1)
    if mean.shape != (C,) or rstd.shape != (C,):
        raise ValueError(f"mean and rstd must have shape ({C},)")
    x = _whole(x, (ca,))
    dy = _check_grad(grad_out, x)
    needs = tuple(bool(n) for n in needs_input_grad)
    gdt = _grad_dtype(x, weight)
    db, dx = dy.to_delayed(optimize_graph=False), x.to_delayed(optimize_graph=False)
    part = dask.delayed(_bn_sums_block, pure=True)
    parts = [part(db[i], dx[i], mean, rstd, ca) for i in np.ndindex(db.shape)]
    sums = dask.delayed(_sum_partials, pure=True)(parts)
    gw = gb = None
    if needs[1] and w is not None:
        gw = da.from_delayed(dask.delayed(_row)(sums, 2, gdt), shape=(C,), dtype=gdt)
    if needs[2] and w is not None:
        gb = da.from_delayed(dask.delayed(_row)(sums, 1, gdt), shape=(C,), dtype=gdt)
    gx = None
    if needs[0]:
        task = dask.delayed(_bn_dx_block, pure=True)
        out = np.empty(db.shape, dtype=object)
        for i in np.ndindex(db.shape):
            out[i] = task(db[i], dx[i], mean, rstd, w, sums if training else None, ca, bool(training))
        gx = _assemble(x, out, x.dtype)
    return gx, gw, gb
