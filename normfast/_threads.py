"""Thread control: the one place that decides how many OpenMP threads a kernel call uses.

Order of precedence: ``set_num_threads(n)`` > threadpoolctl / ``OMP_NUM_THREADS``
(both seen through ``omp_get_max_threads()``).  In a child created by ``fork`` after
the parent used the OpenMP pool, GNU libgomp's pool is not usable (its worker
threads do not exist in the child), so children run the kernels serially.
"""
import os

from ._cpu import _openmp

MAX_THREADS = 4096      # far above any machine's cores; keeps the count a C int everywhere
_override = None
_forked = False


def set_num_threads(n):
    """Set the number of threads normfast's CPU kernels use (``None`` restores the default)."""
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


def get_num_threads():
    """Number of threads the next CPU kernel call may use."""
    if _forked:
        return 1
    if _override is not None:
        return _override
    return _openmp.max_threads()


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
