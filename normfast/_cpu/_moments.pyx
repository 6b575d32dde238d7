# cython: language_level=3
"""Statistics over the 4-d form x[A, B, C, D] -> per (a, c): see src_c/moments_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

cdef extern from "moments.h" nogil:     # nf_reduce4d(dt, ...): src_c/dispatch.h
    ctypedef struct nf_mom:
        double n, mean, m2
    int nf_reduce4d(int dt, const void *x, const void *dy, const double *m, int64_t A, int64_t B, int64_t C,
                    int64_t D, int kind, nf_mom *out, int nt)


include "_boundary.pxi"


def reduce4d(x, dy, m, int64_t A, int64_t B, int64_t C, int64_t D, int kind, out, int nt):
    """out: (A*C, 3) float64 C-contiguous; x (and dy) C-contiguous float32/float64 of A*B*C*D values.

    kind 0: (n, mean, M2); kind 1: (n, 0, sum x^2); kind 2: (n, sum dy, sum dy*(x - m)) with m
    (A*C,) float64.  Every array is checked (type, contiguity, size) before the kernel runs.
    """
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(A, B, C, D), S = _prod(A, C)
    if kind < 0 or kind > 2:
        raise ValueError("normfast kernel boundary: kind must be 0, 1 or 2")
    cdef void *px = _data(x, "x", t, n)
    cdef void *pg = _data(dy, "dy", t, n, False, kind != 2)
    cdef const double *pm = <const double *>_data(m, "m", cnp.NPY_FLOAT64, S, False, kind != 2)
    cdef nf_mom *po = <nf_mom *>_data(out, "out", cnp.NPY_FLOAT64, 3 * S, True)
    with nogil:
        rc = nf_reduce4d(t, px, pg, pm, A, B, C, D, kind, po, nt)
    _check_rc(rc, "reduce4d")
