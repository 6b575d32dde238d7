"""Thread control: the one place that decides how many threads a kernel call uses.

Order of precedence: ``set_num_threads(n)`` > threadpoolctl / ``OMP_NUM_THREADS`` (both seen
through ``omp_get_max_threads()``), capped by the CPUs this process may use: its affinity mask
and its cgroup CPU quota (a container limited to 2 CPUs on a 64-core host gets 2 threads, as
scikit-learn and loky decide).  In a child created by ``fork`` the kernels run serially
(the parent's worker threads do not exist there).  The kernels read the state in C
(``normfast._cpu._normalize.set_thread_state``), so the fast path pays no Python call for it.
"""
import contextlib
import math
import os

from ._cpu import _normalize

MAX_THREADS = 4096      # far above any machine's cores; keeps the count a C int everywhere
_override = None
_forked = False


def _cgroup_cpu_quota():
    """CPUs allowed by the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fq, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fp:
            quota, period = int(fq.read()), int(fp.read())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def cpu_limit():
    """CPUs this process may actually use: affinity mask and cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota) if quota else n)


_CPU_LIMIT = cpu_limit()


def _push():
    _normalize.set_thread_state(_override or 0, _forked, _CPU_LIMIT)


def set_num_threads(n):
    """Set the number of threads normfast's CPU kernels use.

    Parameters
    ----------
    n : int or None
        1 .. 4096; None restores the default (OpenMP's setting, e.g. ``OMP_NUM_THREADS``,
        threadpoolctl or ``torch.set_num_threads``, capped by the CPUs this process may use).

    Raises
    ------
    TypeError
        n is not an int or None.
    ValueError
        n < 1 or n > 4096.

    Examples
    --------
    >>> import normfast as nf
    >>> nf.set_num_threads(1); nf.get_num_threads()
    1
    >>> nf.set_num_threads(None)
    """
    global _override
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
            raise TypeError(f"set_num_threads: n must be a positive int or None, got {type(n).__name__}")
        n = int(n)
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
        if n > MAX_THREADS:
            raise ValueError(f"set_num_threads: n must be <= {MAX_THREADS}, got {n}")
    _override = n
    _push()


def get_num_threads():
    """Number of threads the next CPU kernel call may use.

    Returns
    -------
    int
        ``set_num_threads``'s value, else OpenMP's setting capped by the CPUs this process may use
        (affinity mask and cgroup quota); 1 in a child process after ``fork``.

    Examples
    --------
    >>> import normfast as nf
    >>> nf.get_num_threads() >= 1
    True
    """
    return _normalize.num_threads()


def _after_fork_in_child():
    global _forked
    _forked = True
    _push()


_push()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def threads_set_to(n):
    """``set_num_threads(n)`` for a block, then the setting found before it (an explicit count, or
    None: the default) -- not the count it resolved to, which would pin the default."""
    saved = _override
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(saved)
