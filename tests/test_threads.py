"""Thread control and thread-count invariance.

Thread control: set_num_threads / get_num_threads, threadpoolctl, the default's limits
(affinity mask, cgroup quota), fork safety, busy cores, concurrent Python threads and torch
in the same process.  Invariance: every forward result (outputs, saved statistics, running
statistics) and every backward result is bitwise identical for any number of threads, on
shapes large enough (>= 65536 elements) to take the parallel paths."""
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from _helpers import (
    BackwardCase,
    assert_close_ref,
    ref_batch_norm_train,
    ref_group_norm,
    ref_instance_norm,
    ref_layer_norm,
    ref_moments,
    ref_normalize,
)

import normfast
from normfast import _threads
from normfast._cpu import _openmp

THREADS = (1, 2, 3, 4)


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test starts from the default thread setting (None) and leaves the setting as it
    found it (a count set before, or None)."""
    saved = _threads._override
    normfast.set_num_threads(None)
    yield
    normfast.set_num_threads(saved)


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


def test_default_and_refused_values():
    normfast.set_num_threads(1)
    assert normfast.get_num_threads() == 1
    normfast.set_num_threads(None)
    assert normfast.get_num_threads() == min(_openmp.max_threads(), _threads.cpu_limit())
    with pytest.raises(ValueError, match="n must be >= 1"):
        normfast.set_num_threads(0)
    with pytest.raises(TypeError, match="positive int"):
        normfast.set_num_threads(1.5)
    with pytest.raises(ValueError, match="n must be <="):
        normfast.set_num_threads(2 ** 31)                      # would overflow the kernels' C int
    # a refused value changes nothing
    assert normfast.get_num_threads() == min(_openmp.max_threads(), _threads.cpu_limit())


def test_default_threads_respect_affinity_and_quota():
    """The default never exceeds the CPUs this process may use (affinity mask, cgroup quota)."""
    assert 1 <= normfast.get_num_threads() <= len(os.sched_getaffinity(0))
    assert _threads.cpu_limit() <= len(os.sched_getaffinity(0))


def test_threadpoolctl_limits_normfast():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _openmp.openmp_enabled():
        pytest.skip("built without OpenMP")
    before = normfast.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert normfast.get_num_threads() == 1
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


BACKWARD_CASES = [
    BackwardCase("layer", (256, 1024), nshape=(1024,)), BackwardCase("rms", (256, 1024), nshape=(1024,)),
    BackwardCase("batch", (8, 32, 32, 32)), BackwardCase("batch", (8, 32, 32, 32), channel_axis=-1),
    BackwardCase("batch_eval", (8, 32, 32, 32), channel_axis=-1),
    BackwardCase("group", (8, 32, 32, 32), groups=4), BackwardCase("group", (8, 32, 32, 32), groups=4, channel_axis=-1),
    BackwardCase("instance", (8, 32, 32, 32)), BackwardCase("instance", (8, 32, 32, 32), channel_axis=-1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=repr)
def test_backward_invariant(case, dtype):
    """The forward's statistics and the backward's gradients, for 1, 2 and 3 threads."""
    assert np.prod(case.shape) >= 65536
    x, dy, w, b = case.data(dtype, True, seed=31)
    results = []
    for nt in (1, 2, 3):
        normfast.set_num_threads(nt)
        assert normfast.get_num_threads() == nt
        st = case.stats(x, w, b)
        results.append((st, case.backward(dy, x, st, w)))
    st1, g1 = results[0]
    for st, g in results[1:]:
        for s, s1 in zip(st, st1):
            np.testing.assert_array_equal(s, s1)
        for gi, gi1 in zip(g, g1):
            np.testing.assert_array_equal(gi, gi1)
    # and the same statistics fed to the backward under other thread counts
    for nt in (2, 3):
        normfast.set_num_threads(nt)
        g = case.backward(dy, x, st1, w)
        for gi, gi1 in zip(g, g1):
            np.testing.assert_array_equal(gi, gi1)
    exp = case.reference(dy, x, w)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for gi, e in zip(g1, exp):
        np.testing.assert_allclose(gi, e, rtol=rtol, atol=rtol * float(np.max(np.abs(e))))


def test_default_thread_count_matches_explicit():
    """The default (OpenMP's) thread count gives the same bits as set_num_threads(1)."""
    x = _big((8, 32, 32, 32))
    normfast.set_num_threads(None)
    a = normfast.batch_norm(x, training=True, channel_axis=-1)
    normfast.set_num_threads(1)
    b = normfast.batch_norm(x, training=True, channel_axis=-1)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------- fork, concurrent threads, busy cores

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


def _child_layer_norm_sum(q):
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    q.put(float(np.abs(normfast.layer_norm(x, 1024)).sum()))


def test_fork_after_threaded_call_does_not_hang():
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    normfast.set_num_threads(2)
    expected = float(np.abs(normfast.layer_norm(x, 1024)).sum())      # parent uses the OpenMP pool
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_layer_norm_sum, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        pytest.fail("child process hung after fork")
    assert p.exitcode == 0
    assert q.get(timeout=5) == expected


def test_concurrent_python_threads_give_correct_results():
    rng = np.random.default_rng(1)
    shapes = [(64, 1000 + 37 * i) for i in range(8)]
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    refs = [normfast.layer_norm(x, x.shape[-1]) for x in xs]
    errors = []

    def work(i):
        for _ in range(20):
            y = normfast.layer_norm(xs[i], xs[i].shape[-1])
            if not np.array_equal(y, refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def _spin(stop):
    while not stop.is_set():
        pass


def test_busy_cores_give_identical_results_and_no_hang():
    """Every core busy with other processes: the pool (caller never waits for a worker that has
    not started; back-off to serial after a stall) still gives bitwise the serial result."""
    from normfast._cpu import _pool
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, size=(128, 4096)).astype(np.float32)
    w = rng.normal(size=4096).astype(np.float32)
    normfast.set_num_threads(1)
    ref = normfast.layer_norm(x, 4096, w)
    ref_m = normfast.moments(x, axis=0)
    ctx = multiprocessing.get_context("spawn")
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


# ---------------------------------------------------------------- torch in the same process

TORCH_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import torch
    import normfast as nf
    import normfast.torch as nft
    out = {}
    maps = open("/proc/self/maps").read().splitlines()
    out["gomp"] = sorted({l.split()[-1] for l in maps if "libgomp" in l})
    base = torch.get_num_threads()
    out["base"] = (base, nf.get_num_threads())
    torch.set_num_threads(1)
    out["torch1"] = (torch.get_num_threads(), nf.get_num_threads())
    seen = []
    th = threading.Thread(target=lambda: seen.append((torch.get_num_threads(), nf.get_num_threads())))
    th.start(); th.join()
    out["other_thread"] = seen[0]
    nf.set_num_threads(2)
    out["nf2"] = (torch.get_num_threads(), nf.get_num_threads())
    x = torch.randn(256, 4096)
    y2 = nft.LayerNorm(4096)(x)
    nf.set_num_threads(None)
    out["nf_none"] = (torch.get_num_threads(), nf.get_num_threads())
    y1 = nft.LayerNorm(4096)(x)
    out["same_result"] = bool(torch.equal(y1, y2))
    torch.set_num_threads(base)
    out["restored"] = (torch.get_num_threads(), nf.get_num_threads())
    print(repr(out))
""")


def test_torch_one_runtime_and_predictable_thread_counts():
    """normfast and torch in one process share one OpenMP runtime: normfast's default thread count
    follows torch.set_num_threads (set from the main thread, it holds in other threads too),
    normfast.set_num_threads overrides it for normfast only, and neither changes the other's
    explicit setting.  Run in a fresh interpreter so other tests' thread settings do not leak in."""
    pytest.importorskip("torch")
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    env.update({k: v for k, v in os.environ.items() if k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")})
    res = subprocess.run([sys.executable, "-c", TORCH_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    out = eval(res.stdout.strip().splitlines()[-1])
    assert len(out["gomp"]) == 1, out["gomp"]            # one OpenMP runtime (torch's libgomp)
    base = out["base"][0]
    assert out["base"] == (base, base)                   # both default to the same count
    assert out["torch1"] == (1, 1)                       # normfast follows torch.set_num_threads ...
    assert out["other_thread"] == (1, 1)                 # ... in other Python threads too (set from main)
    assert out["nf2"] == (1, 2)                          # normfast's override: normfast only, no cap
    assert out["nf_none"] == (1, 1)                      # None: back to following torch
    assert out["same_result"]                            # results do not depend on the thread count
    assert out["restored"] == (base, base)
