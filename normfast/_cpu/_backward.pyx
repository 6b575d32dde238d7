# cython: language_level=3
"""Row-wise backward kernels (LayerNorm, RMSNorm): see src_c/backward_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

cdef extern from "backward.h" nogil:
    int nf_rows_backward_f32(const float *x, const float *dy, const float *gh, int64_t M, int64_t N, const double *mean,
                             const double *rstd, const double *w, float *dx, double *dw, double *db, int nt)
    int nf_rows_backward_f64(const double *x, const double *dy, const double *gh, int64_t M, int64_t N, const double *mean,
                             const double *rstd, const double *w, double *dx, double *dw, double *db, int nt)
    ctypedef unsigned short nf_half     # _Float16 in C (only passed by pointer here)
    int nf_rows_backward_f16(const nf_half *x, const nf_half *dy, const nf_half *gh, int64_t M, int64_t N,
                             const double *mean, const double *rstd, const double *w, nf_half *dx, double *dw,
                             double *db, int nt)

cdef extern from *:
    """
    #if !NF_HAVE_F16   /* no _Float16: never called (the boundary rejects float16), -2 if it were */
    #define nf_rows_backward_f16(...) (-2)
    #endif
    """


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
        if t == cnp.NPY_FLOAT16:
            rc = nf_rows_backward_f16(<const nf_half *>px, <const nf_half *>pg, <const nf_half *>pgh, M, N, pmean,
                                      prstd, pw, <nf_half *>pdx, pdw, pdb, nt)
        elif t == cnp.NPY_FLOAT32:
            rc = nf_rows_backward_f32(<const float *>px, <const float *>pg, <const float *>pgh, M, N, pmean, prstd, pw,
                                      <float *>pdx, pdw, pdb, nt)
        else:
            rc = nf_rows_backward_f64(<const double *>px, <const double *>pg, <const double *>pgh, M, N, pmean, prstd,
                                      pw, <double *>pdx, pdw, pdb, nt)
    _check_rc(rc, "rows_backward")
