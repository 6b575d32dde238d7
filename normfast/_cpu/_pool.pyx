# cython: language_level=3
"""The process's one thread pool for the C kernels (src_c/pool.h); the kernel modules get its
entry point from here at import (``capsule()``)."""
from cpython.pycapsule cimport PyCapsule_New

cdef extern from "pool.h" nogil:
    void nf_pool_run(int nt, long long U, long long grain, void *fn, void *ctx)
    long long nf_pool_stalls()


def capsule():
    """PyCapsule holding the pool's entry point (``nf_parallel_fn`` of src_c/parallel.h)."""
    return PyCapsule_New(<void *>nf_pool_run, b"normfast.nf_parallel", NULL)


def stalls():
    """How many parallel jobs so far had to wait for a preempted worker (each starts a back-off
    during which jobs run serially)."""
    return nf_pool_stalls()
