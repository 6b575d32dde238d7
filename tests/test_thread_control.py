"""Thread control, threadpoolctl, fork safety and concurrent Python threads."""
import multiprocessing as mp
import threading

import numpy as np
import pytest

import normfast as nf
from normfast._cpu import _openmp
from normfast._threads import cpu_limit


@pytest.fixture(autouse=True)
def _reset_threads():
    yield
    nf.set_num_threads(None)


def test_set_get_num_threads():
    nf.set_num_threads(1)
    assert nf.get_num_threads() == 1
    nf.set_num_threads(None)
    assert nf.get_num_threads() == min(_openmp.max_threads(), cpu_limit())
    with pytest.raises(ValueError, match="n must be >= 1"):
        nf.set_num_threads(0)
    with pytest.raises(TypeError, match="positive int"):
        nf.set_num_threads(1.5)
    with pytest.raises(ValueError, match="n must be <="):
        nf.set_num_threads(2 ** 31)                      # would overflow the kernels' C int
    assert nf.get_num_threads() == min(_openmp.max_threads(), cpu_limit())   # a refused value changes nothing


def test_threadpoolctl_limits_normfast():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _openmp.openmp_enabled():
        pytest.skip("built without OpenMP")
    before = nf.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert nf.get_num_threads() == 1
    assert nf.get_num_threads() == before


def _child(q):
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    q.put(float(np.abs(nf.layer_norm(x, 1024)).sum()))


def test_fork_after_threaded_call_does_not_hang():
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    nf.set_num_threads(2)
    expected = float(np.abs(nf.layer_norm(x, 1024)).sum())      # parent uses the OpenMP pool
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
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
    refs = [nf.layer_norm(x, x.shape[-1]) for x in xs]
    errors = []

    def work(i):
        for _ in range(20):
            y = nf.layer_norm(xs[i], xs[i].shape[-1])
            if not np.array_equal(y, refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def test_default_threads_respect_affinity_and_quota():
    """The default never exceeds the CPUs this process may use (affinity mask, cgroup quota)."""
    import os
    assert 1 <= nf.get_num_threads() <= len(os.sched_getaffinity(0))
    assert cpu_limit() <= len(os.sched_getaffinity(0))
