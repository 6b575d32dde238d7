"""Thread control and thread-count invariance: every forward result (outputs, saved
statistics, running statistics) is bitwise identical for any number of threads, on
shapes large enough (>= 65536 elements) to take the parallel paths."""
import multiprocessing
import os

import numpy as np
import pytest
from _helpers import (
    assert_close_ref,
    ref_batch_norm_train,
    ref_group_norm,
    ref_instance_norm,
    ref_layer_norm,
    ref_moments,
    ref_normalize,
)

import normfast

THREADS = (1, 2, 3, 4)


@pytest.fixture(autouse=True)
def _restore(restore_threads):
    yield


def _big(shape, dtype=np.float32, seed=0, loc=1e3, scale=3.0):
    rng = np.random.default_rng(seed)
    return (loc + rng.normal(0, scale, shape)).astype(dtype)


def _run_all_thread_counts(fn):
    """fn() -> tuple of arrays; returns the results for each thread count in THREADS."""
    results = []
    for nt in THREADS:
        normfast.set_num_threads(nt)
        assert normfast.get_num_threads() == nt
        res = fn()
        res = res if isinstance(res, tuple) else (res,)
        results.append(tuple(np.array(r, copy=True) for r in res))
    normfast.set_num_threads(None)
    return results


def _assert_bitwise_same(results, what):
    first = results[0]
    for nt, res in zip(THREADS[1:], results[1:]):
        assert len(res) == len(first)
        for k, (a, b) in enumerate(zip(first, res)):
            assert a.dtype == b.dtype and a.shape == b.shape
            same = a.tobytes() == b.tobytes()
            if not same:
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                raise AssertionError(f"{what}: result {k} differs between 1 and {nt} threads "
                                     f"({int((diff > 0).sum())} elements, max |diff| {np.nanmax(diff):.3e})")


# ---------------------------------------------------------------- thread control

def test_set_get_num_threads():
    default = normfast.get_num_threads()
    assert isinstance(default, int) and default >= 1
    normfast.set_num_threads(3)
    assert normfast.get_num_threads() == 3
    normfast.set_num_threads(np.int64(2))
    assert normfast.get_num_threads() == 2
    normfast.set_num_threads(None)
    assert normfast.get_num_threads() == default


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                     (True, TypeError)])
def test_set_num_threads_rejects(bad, exc):
    before = normfast.get_num_threads()
    with pytest.raises(exc):
        normfast.set_num_threads(bad)
    assert normfast.get_num_threads() == before


# ---------------------------------------------------------------- invariance

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_layer_norm_invariant(dtype, affine):
    x = _big((256, 1024), dtype)
    rng = np.random.default_rng(1)
    w = rng.normal(1, 0.2, 1024).astype(dtype) if affine else None
    b = rng.normal(0, 1, 1024).astype(dtype) if affine else None
    res = _run_all_thread_counts(lambda: normfast.layer_norm(x, 1024, w, b, return_stats=True))
    _assert_bitwise_same(res, "layer_norm")
    assert_close_ref(res[1][0], ref_layer_norm(x, 1024, w, b)[0])


def test_layer_norm_long_rows_invariant():
    x = _big((4, 40000))           # rows longer than one statistics chunk
    res = _run_all_thread_counts(lambda: normfast.layer_norm(x, 40000, return_stats=True))
    _assert_bitwise_same(res, "layer_norm long rows")
    assert_close_ref(res[1][0], ref_layer_norm(x, 40000)[0])


def test_rms_norm_invariant():
    x = _big((256, 1024), loc=0.5)
    w = np.random.default_rng(2).normal(1, 0.2, 1024).astype(np.float32)
    res = _run_all_thread_counts(lambda: normfast.rms_norm(x, 1024, w, return_stats=True))
    _assert_bitwise_same(res, "rms_norm")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ca", [1, -1], ids=["cfirst", "clast"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_invariant(ca, training, dtype):
    shape = (8, 32, 32, 32)
    x = _big(shape, dtype)
    C = shape[ca]
    rng = np.random.default_rng(3)
    w, b = rng.normal(1, 0.2, C), rng.normal(0, 1, C)
    rm0, rv0 = rng.normal(1e3, 1, C), rng.uniform(5, 15, C)

    def run():
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, rstd = normfast.batch_norm(x, rm, rv, w, b, training, 0.1, channel_axis=ca, return_stats=True)
        return y, mean, rstd, rm, rv

    res = _run_all_thread_counts(run)
    _assert_bitwise_same(res, "batch_norm")
    if training:
        assert_close_ref(res[1][0], ref_batch_norm_train(x, w, b, channel_axis=ca)[0])


@pytest.mark.parametrize("ca", [1, -1], ids=["cfirst", "clast"])
@pytest.mark.parametrize("G", [1, 8, 32])
def test_group_norm_invariant(ca, G):
    x = _big((8, 32, 32, 32))
    C = 32
    rng = np.random.default_rng(4)
    w, b = rng.normal(1, 0.2, C).astype(np.float32), rng.normal(0, 1, C).astype(np.float32)
    res = _run_all_thread_counts(lambda: normfast.group_norm(x, G, w, b, channel_axis=ca, return_stats=True))
    _assert_bitwise_same(res, "group_norm")
    assert_close_ref(res[1][0], ref_group_norm(x, G, w, b, channel_axis=ca)[0])


@pytest.mark.parametrize("ca", [1, -1], ids=["cfirst", "clast"])
@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
def test_instance_norm_invariant(ca, track):
    x = _big((8, 32, 32, 32))
    rng = np.random.default_rng(5)
    w, b = rng.normal(1, 0.2, 32), rng.normal(0, 1, 32)

    def run():
        rm, rv = (np.zeros(32), np.ones(32)) if track else (None, None)
        y, mean, rstd = normfast.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
        return (y, mean, rstd) + ((rm, rv) if track else ())

    res = _run_all_thread_counts(run)
    _assert_bitwise_same(res, "instance_norm")
    assert_close_ref(res[1][0], ref_instance_norm(x, w, b, channel_axis=ca)[0])


@pytest.mark.parametrize("shape,axis", [((4096, 64), 0), ((64, 16, 256), (0, 2)), ((32, 64, 64), 1),
                                        ((16, 64, 8, 16), (0, 2))])
def test_normalize_invariant(shape, axis):
    x = _big(shape)
    res = _run_all_thread_counts(lambda: normfast.normalize(x, axis, return_stats=True))
    _assert_bitwise_same(res, "normalize")
    axes = (axis,) if isinstance(axis, int) else axis
    assert_close_ref(res[1][0], ref_normalize(x, axes)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,axis", [((200000, 16), 0), ((16, 200000), 1), ((1_000_000,), None),
                                        ((300, 40, 30), (0, 2)), ((50, 40, 60), (0, 1))])
def test_moments_invariant(dtype, shape, axis):
    x = _big(shape, dtype, loc=1e4, scale=0.5)
    res = _run_all_thread_counts(lambda: normfast.moments(x, axis, correction=1))
    _assert_bitwise_same(res, "moments")
    rmean, rvar, _ = ref_moments(x, axis, 1)
    mean, var = res[1]
    rt = 1e-12 if dtype == np.float64 else 2 ** -23
    np.testing.assert_allclose(mean, rmean.astype(mean.dtype), rtol=rt)
    np.testing.assert_allclose(var, rvar.astype(var.dtype), rtol=max(rt, 1e-11))


def test_moments_state_invariant():
    x = _big((200000, 16), np.float64)

    def run():
        m = normfast.Moments().update(x[:70001]).update(x[70001:])
        return m.count, m.mean, m.m2

    _assert_bitwise_same(_run_all_thread_counts(run), "Moments")


def test_default_thread_count_matches_explicit():
    """The default (OpenMP's) thread count gives the same bits as set_num_threads(1)."""
    x = _big((8, 32, 32, 32))
    normfast.set_num_threads(None)
    a = normfast.batch_norm(x, training=True, channel_axis=-1)
    normfast.set_num_threads(1)
    b = normfast.batch_norm(x, training=True, channel_axis=-1)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------- fork safety

def _child_layer_norm(args):
    x, = args
    return normfast.get_num_threads(), normfast.layer_norm(x, x.shape[-1])


@pytest.mark.skipif(not hasattr(os, "fork") or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork")
def test_forked_child_runs_serially_and_agrees():
    x = _big((256, 1024))
    normfast.set_num_threads(2)
    parent = normfast.layer_norm(x, 1024)           # the parent has used the OpenMP pool
    normfast.set_num_threads(None)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        nt, child = pool.apply_async(_child_layer_norm, ((x,),)).get(timeout=60)
    assert nt == 1
    np.testing.assert_array_equal(child, parent)


def _spin(stop):
    while not stop.is_set():
        pass


def test_busy_cores_give_identical_results_and_no_hang():
    """Every core busy with other processes: the pool (caller never waits for a worker that has
    not started; back-off to serial after a stall) still gives bitwise the serial result."""
    import multiprocessing as mp
    from normfast._cpu import _pool
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, size=(128, 4096)).astype(np.float32)
    w = rng.normal(size=4096).astype(np.float32)
    normfast.set_num_threads(1)
    ref = normfast.layer_norm(x, 4096, w)
    ref_m = normfast.moments(x, axis=0)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        normfast.set_num_threads(2)
        for _ in range(100):
            np.testing.assert_array_equal(normfast.layer_norm(x, 4096, w), ref)
        for a, b in zip(normfast.moments(x, axis=0), ref_m):
            np.testing.assert_array_equal(a, b)
        assert _pool.stalls() >= 0
    finally:
        stop.set()
        for p in procs:
            p.join(5)
        normfast.set_num_threads(None)
