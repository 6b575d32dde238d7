"""normfast.dask: statistics over chunked arrays equal the in-memory ones; the norms on Dask
arrays equal normfast's in-memory results; results are lazy; a real multi-process cluster;
Moments pickling / merging of shards."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import normfast  # noqa: E402
import normfast.dask as nd  # noqa: E402
from normfast._moments import _count_mean_m2  # noqa: E402


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if a.size else 0.0


def _arr(shape, dtype=np.float64, seed=0, loc=3.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype(dtype)


SHAPE = (37, 6, 5, 4)
CHUNKINGS = {
    "single": SHAPE,
    "even": (10, 3, 5, 2),
    "uneven": ((5, 20, 12), (1, 4, 1), (2, 3), (3, 1)),
    "with-empty": ((0, 17, 20), (6,), (5,), (4,)),
    "tiny": (13, 1, 2, 3),
}
AXES = [None, 0, 1, -1, (0, 2, 3), (1, 3), (0, 1), (2, 3), (0, 1, 2, 3)]


def test_import_normfast_does_not_import_dask():
    code = "import sys, normfast; assert 'dask' not in sys.modules, 'dask imported'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


# --------------------------------------------------------------------------- moments

@pytest.mark.parametrize("chunks", list(CHUNKINGS), ids=list(CHUNKINGS))
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_moments_exact_float64(chunks, axis):
    a = _arr(SHAPE)
    x = da.from_array(a, chunks=CHUNKINGS[chunks])
    mean, var, count = nd.moments(x, axis, return_count=True)
    assert isinstance(mean, da.Array) and isinstance(var, da.Array)
    m, v = dask.compute(mean, var)
    rm, rv, rc = normfast.moments(a, axis, return_count=True)
    assert count == rc
    assert m.dtype == np.float64 and v.dtype == np.float64
    assert m.shape == rm.shape and v.shape == rv.shape
    assert _rel(m, rm) <= 1e-12
    assert _rel(v, rv) <= 1e-12


@pytest.mark.parametrize("split_every", [2, 3, None])
def test_moments_tree_depth(split_every):
    # many chunks along the reduced axis: several combine levels
    a = _arr((1000, 7), seed=1, loc=1e4, scale=1.0)      # large offset: cancellation-prone
    x = da.from_array(a, chunks=(13, 3))
    m, v = dask.compute(*nd.moments(x, 0, split_every=split_every))
    rm, rv = normfast.moments(a, 0)
    assert _rel(m, rm) <= 1e-12
    assert _rel(v, rv) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_moments_lower_precision(dtype):
    a = _arr(SHAPE, dtype, seed=2)
    x = da.from_array(a, chunks=CHUNKINGS["uneven"])
    for axis in [0, (0, 2, 3), None]:
        m, v = dask.compute(*nd.moments(x, axis))
        rm, rv = normfast.moments(a, axis)
        assert m.dtype == rm.dtype == np.float32
        # both round the same float64 value once: at most 1 ulp apart
        np.testing.assert_array_max_ulp(m, rm, 1)
        np.testing.assert_array_max_ulp(v, rv, 1)
        # the float64 state itself is exact
        st = nd.moments_state(x, axis)
        c, mm, m2, _ = _count_mean_m2(a, axis)
        assert np.all(st.count == c)
        assert _rel(st.mean, mm) <= 1e-12 and _rel(st.m2, m2) <= 1e-12


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("correction", [0, 1, 37 * 5])
def test_moments_keepdims_correction(keepdims, correction):
    a = _arr(SHAPE, seed=3)
    x = da.from_array(a, chunks=CHUNKINGS["even"])
    m, v = dask.compute(*nd.moments(x, (0, 2), correction=correction, keepdims=keepdims))
    rm, rv = normfast.moments(a, (0, 2), correction=correction, keepdims=keepdims)
    assert m.shape == rm.shape
    assert _rel(m, rm) <= 1e-12
    np.testing.assert_array_equal(np.isnan(v), np.isnan(rv))
    assert _rel(v[~np.isnan(v)], rv[~np.isnan(rv)]) <= 1e-12


def test_moments_edge_cases():
    z = da.from_array(np.array(3.0))                      # 0-d
    m, v = dask.compute(*nd.moments(z))
    assert m == 3.0 and v == 0.0
    e = da.zeros((0, 3), chunks=(1, 3))                   # empty reduction -> NaN
    m, v = dask.compute(*nd.moments(e, 0))
    assert np.all(np.isnan(m)) and np.all(np.isnan(v))
    with pytest.raises(TypeError):
        nd.moments(da.ones(3, dtype=np.int64, chunks=2))
    with pytest.raises(ValueError):
        nd.moments(da.ones((3, 3), chunks=2), axis=2)
    with pytest.raises(TypeError):
        nd.moments([1.0, 2.0])


def test_moments_state_merges_with_others():
    a = _arr((50, 8), seed=4)
    st = nd.moments_state(da.from_array(a[:20], chunks=(7, 8)), 0)
    st.merge(normfast.Moments.from_array(a[20:], 0))
    rm, rv = normfast.moments(a, 0)
    assert _rel(st.mean, rm) <= 1e-12 and _rel(st.var(), rv) <= 1e-12


def test_moments_reads_once():
    """mean and var share one reduction: every input chunk is produced exactly once."""
    calls = []

    def gen(block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return np.full(block_info[None]["chunk-shape"], float(len(calls)))

    x = da.map_blocks(gen, chunks=((4, 4, 4), (3,)), dtype=np.float64, meta=np.empty((0, 0)))
    dask.compute(*nd.moments(x, 0), scheduler="sync")
    assert len(calls) == 3


# --------------------------------------------------------------------------- norms vs in-memory

def _close(y, r):
    if r.dtype == np.float64:
        np.testing.assert_allclose(y, r, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(y, r, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", ["single", "uneven", "with-empty"])
def test_batch_norm_training(dtype, chunks):
    a = _arr(SHAPE, dtype, seed=5)
    x = da.from_array(a, chunks=CHUNKINGS[chunks])
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=6), rng.normal(size=6)
    y = nd.batch_norm(x, weight=w, bias=b, training=True)
    assert isinstance(y, da.Array) and y.dtype == dtype and y.chunks == x.chunks
    _close(y.compute(), normfast.batch_norm(a, weight=w, bias=b, training=True))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_running_buffers(momentum):
    a = _arr(SHAPE, np.float32, seed=7)
    x = da.from_array(a, chunks=CHUNKINGS["uneven"])
    rm, rv, nbt = np.zeros(6, np.float32), np.ones(6, np.float32), np.zeros(1, np.int64)
    qm, qv, qbt = rm.copy(), rv.copy(), nbt.copy()
    y = nd.batch_norm(x, rm, rv, training=True, momentum=momentum, num_batches_tracked=nbt)
    # buffers are updated at call time (statistics computed eagerly)
    r = normfast.batch_norm(a, qm, qv, training=True, momentum=momentum, num_batches_tracked=qbt)
    np.testing.assert_allclose(rm, qm, rtol=1e-6)
    np.testing.assert_allclose(rv, qv, rtol=1e-6)
    assert nbt[0] == qbt[0] == 1
    assert isinstance(y, da.Array)
    _close(y.compute(), r)


def test_batch_norm_eval_channels_last():
    a = _arr((9, 4, 5, 6), seed=8)
    x = da.from_array(a, chunks=(4, 2, 5, 4))
    rm, rv = np.linspace(1, 2, 6), np.linspace(0.5, 3, 6)
    w = np.linspace(-1, 1, 6)
    y = nd.batch_norm(x, rm, rv, weight=w, channel_axis=-1)
    _close(y.compute(), normfast.batch_norm(a, rm, rv, weight=w, channel_axis=-1))
    y = nd.batch_norm(x, training=True, channel_axis=-1)
    _close(y.compute(), normfast.batch_norm(a, training=True, channel_axis=-1))
    with pytest.raises(ValueError):
        nd.batch_norm(x, channel_axis=-1)                     # eval without running stats
    with pytest.raises(ValueError):
        nd.batch_norm(x, weight=np.ones(5), training=True, channel_axis=-1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", [(3, 2, 5, 4), ((10, 27), (6,), (2, 3), (4,)), (37, 6, 5, 4)])
def test_layer_norm(dtype, chunks):
    a = _arr(SHAPE, dtype, seed=9)
    x = da.from_array(a, chunks=chunks)
    w, b = _arr((5, 4), seed=10), _arr((5, 4), seed=11)
    y = nd.layer_norm(x, (5, 4), w, b)
    assert isinstance(y, da.Array) and y.dtype == dtype
    assert y.chunks[:2] == x.chunks[:2]                        # leading axes keep their chunks
    _close(y.compute(), normfast.layer_norm(a, (5, 4), w, b))
    _close(nd.layer_norm(x, 4).compute(), normfast.layer_norm(a, 4))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("channel_axis,groups", [(1, 3), (1, 6), (1, 1), (-1, 2)])
def test_group_norm(dtype, channel_axis, groups):
    a = _arr(SHAPE, dtype, seed=12)
    if channel_axis == -1:
        a = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    chunks = tuple(max(1, s // 2) for s in a.shape)            # every axis split, channels unaligned
    x = da.from_array(a, chunks=chunks)
    C = a.shape[channel_axis]
    w, b = np.linspace(0.5, 2, C), np.linspace(-1, 1, C)
    y = nd.group_norm(x, groups, w, b, channel_axis=channel_axis)
    assert isinstance(y, da.Array) and y.chunks == x.chunks
    _close(y.compute(), normfast.group_norm(a, groups, w, b, channel_axis=channel_axis))


def test_group_norm_2d():
    a = _arr((10, 8), seed=13)
    x = da.from_array(a, chunks=(3, 3))
    _close(nd.group_norm(x, 2).compute(), normfast.group_norm(a, 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("axis", [0, (0, 2), (1, 3), (0, 2, 3), -1])
def test_standardize(dtype, axis):
    a = _arr(SHAPE, dtype, seed=14)
    x = da.from_array(a, chunks=CHUNKINGS["uneven"])
    y = nd.standardize(x, axis)
    assert isinstance(y, da.Array) and y.dtype == dtype and y.chunks == x.chunks
    r = normfast.normalize(a, axis, eps=0.0)
    if dtype == np.float16:
        np.testing.assert_allclose(y.compute().astype(np.float64), r.astype(np.float64), rtol=2e-3, atol=2e-3)
    else:
        _close(y.compute(), r)


def test_standardize_matches_numpy_expression():
    a = _arr((200, 16), seed=15)
    x = da.from_array(a, chunks=(33, 5))
    ref = (a - a.mean(0)) / a.std(0)
    np.testing.assert_allclose(nd.standardize(x, 0).compute(), ref, rtol=1e-12, atol=1e-12)
    ref1 = (a - a.mean(0)) / np.sqrt(a.var(0, ddof=1) + 1e-3)
    np.testing.assert_allclose(nd.standardize(x, 0, correction=1, eps=1e-3).compute(), ref1, rtol=1e-12, atol=1e-12)
    y2 = nd.standardize(x, 0, compute_stats=True)
    np.testing.assert_allclose(y2.compute(), ref, rtol=1e-12, atol=1e-12)


def test_results_are_lazy():
    calls = []

    def gen(block_info=None):
        calls.append(1)
        return np.random.default_rng(len(calls)).normal(size=block_info[None]["chunk-shape"])

    x = da.map_blocks(gen, chunks=((4, 4), (3, 3), (5,)), dtype=np.float64, meta=np.empty((0, 0, 0)))
    outs = [nd.standardize(x, 0), nd.batch_norm(x, training=True), nd.layer_norm(x, 5),
            nd.group_norm(x, 3), *nd.moments(x, 0)]
    assert all(isinstance(o, da.Array) for o in outs)
    assert calls == []                                          # nothing computed yet


def test_foreign_chunk_apply_matches_kernel():
    """The array-library-generic apply (used for non-NumPy chunks, e.g. CuPy) equals the kernel path."""
    a = _arr((6, 5, 4, 3), np.float32, seed=17)
    red = (0, 2)
    rng = np.random.default_rng(18)
    mean, p, q = rng.normal(size=(5, 3)), rng.uniform(0.5, 2, (5, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(nd._apply_generic(a, red, mean, p, q), nd._apply_np(a, red, mean, p, q),
                               rtol=1e-6, atol=1e-6)
    red = (1, 3)                                                # K R K R: transposing fallback of _apply_np
    mean, p, q = rng.normal(size=(6, 4)), rng.uniform(0.5, 2, (6, 4)), rng.normal(size=(6, 4))
    np.testing.assert_allclose(nd._apply_generic(a, red, mean, p, q), nd._apply_np(a, red, mean, p, q),
                               rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- Moments pickling / shards

def test_moments_pickle_compact_and_reduce():
    a = _arr((64, 256, 3, 3), np.float32, seed=16)
    shards = np.array_split(a, 5, axis=0)
    states = [normfast.Moments.from_array(s, (0, 2, 3)) for s in shards]
    blobs = [pickle.dumps(s) for s in states]
    three = 3 * 256 * 8                                         # count, mean, M2: float64 (C,)
    # count is a scalar: the payload is mean + M2 (+ 8 bytes), plus a few hundred bytes of pickle framing
    assert all(len(p) <= three + 600 for p in blobs), [len(p) for p in blobs]
    total = normfast.Moments.reduce(pickle.loads(p) for p in blobs)
    whole = normfast.Moments.from_array(a, (0, 2, 3))
    assert np.all(total.count == whole.count)
    assert _rel(total.mean, whole.mean) <= 1e-12
    assert _rel(total.m2, whole.m2) <= 1e-12


# --------------------------------------------------------------------------- distributed

def test_local_cluster_processes():
    distributed = pytest.importorskip("dask.distributed")
    rows, F = 1_000_000, 64                                    # 256 MB of float32
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  memory_limit="2GB") as cluster, distributed.Client(cluster):
        x = da.random.default_rng(42).random((rows, F), dtype=np.float32, chunks=(125_000, F)) * 3 + 1
        mean, var = nd.moments(x, 0)
        y = nd.standardize(x, 0)
        yb = nd.batch_norm(x.reshape(rows // 8, 8, F).transpose(0, 2, 1), training=True)
        # one compute: x is generated once on the workers and shared by every result
        m, v, ys, yhead, ytail, ybs, a = dask.compute(mean, var, y.sum(0, dtype=np.float64), y[:1000], y[-1000:],
                                                      yb.sum((0, 2), dtype=np.float64), x)
        st = nd.moments_state(x[:300_000], 0)
    rm, rv = normfast.moments(a, 0)
    np.testing.assert_array_max_ulp(m, rm, 1)
    np.testing.assert_array_max_ulp(v, rv, 1)
    c, mm, m2, _ = _count_mean_m2(a[:300_000], 0)
    assert np.all(st.count == c) and _rel(st.mean, mm) <= 1e-12 and _rel(st.m2, m2) <= 1e-12
    r = normfast.normalize(a, 0, eps=0.0)
    np.testing.assert_allclose(yhead, r[:1000], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ytail, r[-1000:], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ys, r.sum(0, dtype=np.float64), atol=1e-2)
    assert np.all(np.abs(ys) / rows < 1e-6)
    assert np.all(np.abs(ybs) / rows < 1e-6)


# --------------------------------------------------------------------------- issue 14: every operator on Dask

BW_CHUNKS = (10, 3, 5, 2)                                       # splits batch, channels and trailing axes


def _torch():
    return pytest.importorskip("torch")


def _grads(fn, x, dy, *params):
    """torch CPU autograd gradients of fn(x, *params) against dy (float64)."""
    torch = _torch()
    xt = torch.tensor(x, requires_grad=True)
    ps = [None if p is None else torch.tensor(p, requires_grad=True) for p in params]
    y = fn(xt, *ps)
    leaves = [xt] + [p for p in ps if p is not None]
    return [g.numpy() for g in torch.autograd.grad(y, leaves, torch.tensor(dy))]


def _bw_inputs(seed):
    rng = np.random.default_rng(seed)
    a, g = rng.normal(3, 2, SHAPE), rng.normal(0, 1, SHAPE)
    return a, g, da.from_array(a, chunks=BW_CHUNKS), da.from_array(g, chunks=BW_CHUNKS)


def _check_grads(got, ref):
    got = dask.compute(*[x for x in got if x is not None])
    assert len(got) == len(ref)
    for gv, rv in zip(got, ref):
        np.testing.assert_allclose(gv, rv, rtol=1e-10, atol=1e-10)


def test_layer_and_rms_norm_backward_match_torch():
    torch = _torch()
    a, g, x, dy = _bw_inputs(20)
    w, b = _arr((5, 4), seed=21), _arr((5, 4), seed=22)
    _, mean, rstd = normfast.layer_norm(a, (5, 4), w, b, return_stats=True)
    out = nd.layer_norm_backward(dy, x, mean, rstd, (5, 4), w)
    assert all(isinstance(o, da.Array) for o in out)
    _check_grads(out, _grads(lambda t, tw, tb: torch.nn.functional.layer_norm(t, (5, 4), tw, tb), a, g, w, b))
    _check_grads(nd.layer_norm_backward(dy, x, da.from_array(mean, chunks=(7, 2)), rstd, (5, 4)),
                 _grads(lambda t: torch.nn.functional.layer_norm(t, (5, 4)), a, g))
    _, rstd = normfast.rms_norm(a, 4, w[0], return_stats=True)
    y = nd.rms_norm(x, 4, w[0])
    _close(y.compute(), torch.nn.functional.rms_norm(torch.tensor(a), (4,), torch.tensor(w[0]),
                                                     float(np.finfo(np.float64).eps)).numpy())
    _check_grads(nd.rms_norm_backward(dy, x, rstd, 4, w[0]),
                 _grads(lambda t, tw: torch.nn.functional.rms_norm(t, (4,), tw, float(np.finfo(np.float64).eps)),
                        a, g, w[0]))


def test_add_norm_backward_equal_in_memory():
    a, g, x, dy = _bw_inputs(23)
    gh = np.random.default_rng(24).normal(size=SHAPE)
    w, b = _arr(4, seed=25), _arr(4, seed=26)
    _, h, mean, rstd = normfast.add_layer_norm(a, a, 4, w, b, return_stats=True)
    hd, ghd = da.from_array(h, chunks=BW_CHUNKS), da.from_array(gh, chunks=BW_CHUNKS)
    _check_grads(nd.add_layer_norm_backward(dy, ghd, hd, mean, rstd, 4, w),
                 normfast.add_layer_norm_backward(g, gh, h, mean, rstd, 4, w))
    _, h, rstd = normfast.add_rms_norm(a, a, 4, w, return_stats=True)
    _check_grads(nd.add_rms_norm_backward(dy, None, da.from_array(h, chunks=BW_CHUNKS), rstd, 4, w),
                 normfast.add_rms_norm_backward(g, None, h, rstd, 4, w))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_matches_torch(training):
    torch = _torch()
    a, g, x, dy = _bw_inputs(27)
    w, b = _arr(6, seed=28), _arr(6, seed=29)
    rm, rv = _arr(6, seed=30), np.abs(_arr(6, seed=31))
    _, mean, rstd = normfast.batch_norm(a, rm.copy(), rv.copy(), w, b, training=training, return_stats=True)
    out = nd.batch_norm_backward(dy, x, mean, rstd, w, training)
    ref = _grads(lambda t, tw, tb: torch.nn.functional.batch_norm(
        t, torch.tensor(rm), torch.tensor(rv), tw, tb, training=training), a, g, w, b)
    _check_grads(out, ref)


def test_group_and_instance_norm_backward_match_torch():
    torch = _torch()
    a, g, x, dy = _bw_inputs(32)
    w, b = _arr(6, seed=33), _arr(6, seed=34)
    _, mean, rstd = normfast.group_norm(a, 3, w, b, return_stats=True)
    _check_grads(nd.group_norm_backward(dy, x, mean, rstd, 3, w),
                 _grads(lambda t, tw, tb: torch.nn.functional.group_norm(t, 3, tw, tb), a, g, w, b))
    y = nd.instance_norm(x, weight=w, bias=b)
    tref = torch.nn.functional.instance_norm(torch.tensor(a), weight=torch.tensor(w), bias=torch.tensor(b))
    _close(y.compute(), tref.numpy())
    _, mean, rstd = normfast.instance_norm(a, None, None, w, b, return_stats=True)
    _check_grads(nd.instance_norm_backward(dy, x, mean, rstd, w),
                 _grads(lambda t, tw, tb: torch.nn.functional.instance_norm(t, weight=tw, bias=tb), a, g, w, b))


def test_instance_norm_running_and_eval_match_torch():
    torch = _torch()
    a = _arr(SHAPE, np.float32, seed=35)
    x = da.from_array(a, chunks=BW_CHUNKS)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    trm, trv = torch.zeros(6), torch.ones(6)
    y = nd.instance_norm(x, rm, rv, momentum=0.2)
    ty = torch.nn.functional.instance_norm(torch.tensor(a), trm, trv, use_input_stats=True, momentum=0.2)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)        # updated at call time
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.compute(), ty.numpy(), rtol=1e-4, atol=1e-4)
    ye = nd.instance_norm(x, rm, rv, use_input_stats=False)
    te = torch.nn.functional.instance_norm(torch.tensor(a), trm, trv, use_input_stats=False)
    np.testing.assert_allclose(ye.compute(), te.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [-1, 0, (0, 2)])
def test_normalize_weight_bias(axis):
    a = _arr(SHAPE, seed=36)
    x = da.from_array(a, chunks=BW_CHUNKS)
    axes = (axis,) if isinstance(axis, int) else axis
    shape = tuple(SHAPE[i] for i in axes)
    w, b = _arr(shape, seed=37), _arr(shape, seed=38)
    y = nd.normalize(x, axis, w, b, eps=1e-5)
    assert isinstance(y, da.Array) and y.chunks == x.chunks
    ref_axes = tuple(i % a.ndim for i in axes)
    m, v = a.mean(ref_axes, keepdims=True), a.var(ref_axes, keepdims=True)
    bshape = tuple(SHAPE[i] if i in ref_axes else 1 for i in range(a.ndim))
    ref = (a - m) / np.sqrt(v + 1e-5) * w.reshape(bshape) + b.reshape(bshape)
    np.testing.assert_allclose(y.compute(), ref, rtol=1e-12, atol=1e-12)
    assert normfast.get_backend(x) == "dask"
    np.testing.assert_allclose(normfast.normalize(x, axis, w, b).compute(), ref, rtol=1e-12, atol=1e-12)


def test_dispatch_routes_new_ops_to_dask():
    a, g, x, dy = _bw_inputs(39)
    for name in ("rms_norm", "instance_norm", "layer_norm_backward", "rms_norm_backward", "batch_norm_backward",
                 "group_norm_backward", "instance_norm_backward", "add_layer_norm_backward",
                 "add_rms_norm_backward"):
        assert getattr(nd, name) is not None
    _, rstd = normfast.rms_norm(a, 4, return_stats=True)
    gx, _ = normfast.rms_norm_backward(dy, x, rstd, 4)
    assert isinstance(gx, da.Array)
    np.testing.assert_allclose(gx.compute(), normfast.rms_norm_backward(g, a, rstd, 4)[0], rtol=1e-12)


def test_moments_state_lazy_and_skipna():
    a = _arr((50, 3), seed=40)
    a[::4, 1] = np.nan
    x = da.from_array(a, chunks=(7, 2))
    lazy = nd.moments_state(x, 0, skipna=True, compute=False)
    st = lazy.compute()
    assert isinstance(st, normfast.Moments)
    for j in range(3):
        col = a[~np.isnan(a[:, j]), j].astype(np.longdouble)
        assert st.count[j] == col.size
        assert _rel(st.mean[j], col.mean()) <= 1e-15
        assert _rel(st.m2[j], ((col - col.mean()) ** 2).sum()) <= 1e-13


def _unknown_rows(a):
    """A Dask array with a's values and unknown (NaN) chunk sizes along axis 0."""
    x = da.from_array(a, chunks=(2,) + a.shape[1:])
    keep = da.from_array(np.ones(a.shape[0], bool), chunks=2)
    y = x[keep]
    assert np.isnan(y.shape[0])
    return y


def test_batch_norm_unknown_chunk_sizes_checks_batch_size():
    one = _unknown_rows(_arr((1, 4), seed=41))
    rm, rv = np.zeros(4), np.ones(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nd.batch_norm(one, rm, rv, training=True)                      # eager (buffers): at call time
    assert np.all(rm == 0) and np.all(rv == 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nd.batch_norm(one, training=True).compute()                     # lazy: when computed
    empty = da.from_array(_arr((4, 4), seed=42), chunks=(2, 4))[da.from_array(np.zeros(4, bool), chunks=2)]
    assert np.isnan(empty.shape[0])
    nbt = np.zeros(1, np.int64)
    y = nd.batch_norm(empty, rm, rv, training=True, num_batches_tracked=nbt)
    assert y.compute().shape == (0, 4)
    assert np.all(rm == 0) and np.all(rv == 1)                          # untouched, as NumPy / torch
    ref_m, ref_v, ref_t = np.zeros(4), np.ones(4), np.zeros(1, np.int64)
    normfast.batch_norm(np.empty((0, 4)), ref_m, ref_v, training=True, num_batches_tracked=ref_t)
    np.testing.assert_array_equal(rm, ref_m)
    np.testing.assert_array_equal(rv, ref_v)
    assert nbt[0] == ref_t[0]
    # known sizes: same rules
    rm2, rv2 = np.zeros(4), np.ones(4)
    nd.batch_norm(da.zeros((0, 4), chunks=(1, 4)), rm2, rv2, training=True)
    assert np.all(rm2 == 0) and np.all(rv2 == 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nd.batch_norm(da.ones((1, 4), chunks=(1, 4)), training=True)


def test_new_ops_lazy_and_one_read_per_chunk():
    calls = []

    def gen(block_info=None):
        calls.append(1)
        loc = block_info[None]["chunk-location"]
        seed = 100 + loc[0] * 10 + loc[1]
        return np.random.default_rng(seed).normal(size=block_info[None]["chunk-shape"])

    x = da.map_blocks(gen, chunks=((4, 4, 3), (3, 3), (5,)), dtype=np.float64, meta=np.empty((0, 0, 0)))
    a = x.compute()
    calls.clear()
    g = np.random.default_rng(0).normal(size=a.shape)
    w = np.linspace(0.5, 1.5, 5)
    _, mean, rstd = normfast.layer_norm(a, 5, w, return_stats=True)
    outs = [nd.rms_norm(x, 5), nd.instance_norm(x), nd.normalize(x, 0, np.ones((11,)), None),
            *nd.layer_norm_backward(da.from_array(g, chunks=x.chunks), x, mean, rstd, 5, w)]
    assert all(isinstance(o, da.Array) for o in outs) and calls == []           # nothing computed yet
    gx, gw, gb = dask.compute(*outs[3:])
    assert len(calls) == 6                                                       # each of the 6 chunks once
    ref = normfast.layer_norm_backward(g, a, mean, rstd, 5, w)
    for got, r in zip((gx, gw, gb), ref):
        np.testing.assert_allclose(got, r, rtol=1e-12, atol=1e-12)
