# cython: language_level=3
"""Row-wise backward kernels (LayerNorm, RMSNorm): see src_c/backward_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

cdef extern from "backward.h" nogil:    # nf_rows_backward(dt, ...): src_c/dispatch.h
    int nf_rows_backward(int dt, const void *x, const void *dy, const void *gh, int64_t M, int64_t N,
                         const double *mean, const double *rstd, const double *w, void *dx, double *dw, double *db,
                         int nt)


include "_boundary.pxi"


def rows_backward(x, dy, gh, int64_t M, int64_t N, mean, rstd, w, dx, dw, db, int nt):
    """gh: None or an M x N array added to dx (fused residual gradient).
    dx (x's dtype), dw/db ((N,) float64) may each be None; mean None for RMSNorm; w (N,) float64.
    Every array is checked (type, contiguity, size) before the kernel runs."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(M, N)
    cdef void *px = _data(x, "x", t, n)
    cdef void *pg = _data(dy, "dy", t, n)
    cdef void *pgh = _data(gh, "gh", t, n, False, True)
    cdef const double *pmean = <const double *>_data(mean, "mean", cnp.NPY_FLOAT64, M, False, True)
    cdef const double *prstd = <const double *>_data(rstd, "rstd", cnp.NPY_FLOAT64, M)
    cdef const double *pw = <const double *>_data(w, "w", cnp.NPY_FLOAT64, N)
    cdef void *pdx = _data(dx, "dx", t, n, True, True)
    cdef double *pdw = <double *>_data(dw, "dw", cnp.NPY_FLOAT64, N, True, True)
    cdef double *pdb = <double *>_data(db, "db", cnp.NPY_FLOAT64, N, True, True)
    with nogil:
        rc = nf_rows_backward(t, px, pg, pgh, M, N, pmean, prstd, pw, pdx, pdw, pdb, nt)
    _check_rc(rc, "rows_backward")
