# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Row-wise backward kernels (LayerNorm, RMSNorm): see src_c/backward_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

from cpython.pycapsule cimport PyCapsule_GetPointer
from normfast._cpu._pool import capsule as _pool_capsule

cdef extern from "parallel.h" nogil:
    void nf_set_parallel(void *entry)

nf_set_parallel(PyCapsule_GetPointer(_pool_capsule(), b"normfast.nf_parallel"))

cdef extern from "backward.h" nogil:
    int nf_rows_backward_f32(const float *x, const float *dy, const float *gh, int64_t M, int64_t N, const double *mean,
                             const double *rstd, const double *w, float *dx, double *dw, double *db, int nt)
    int nf_rows_backward_f64(const double *x, const double *dy, const double *gh, int64_t M, int64_t N, const double *mean,
                             const double *rstd, const double *w, double *dx, double *dw, double *db, int nt)


cdef inline void *_ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def rows_backward(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray gh, int64_t M, int64_t N, cnp.ndarray mean, cnp.ndarray rstd,
                  cnp.ndarray w, cnp.ndarray dx, cnp.ndarray dw, cnp.ndarray db, int nt):
    """gh: None or an M x N array added to dx (fused residual gradient).
    dx (x's dtype), dw/db ((N,) float64) may each be None; mean None for RMSNorm; w (N,) float64."""
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *pg = cnp.PyArray_DATA(dy)
    cdef void *pgh = _ptr(gh)
    cdef const double *pmean = <const double *>_ptr(mean)
    cdef const double *prstd = <const double *>cnp.PyArray_DATA(rstd)
    cdef const double *pw = <const double *>cnp.PyArray_DATA(w)
    cdef void *pdx = _ptr(dx)
    cdef double *pdw = <double *>_ptr(dw)
    cdef double *pdb = <double *>_ptr(db)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_rows_backward_f32(<const float *>px, <const float *>pg, <const float *>pgh, M, N, pmean, prstd, pw,
                                      <float *>pdx, pdw, pdb, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_rows_backward_f64(<const double *>px, <const double *>pg, <const double *>pgh, M, N, pmean, prstd, pw,
                                      <double *>pdx, pdw, pdb, nt)
    else:
        raise TypeError("rows_backward: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in rows_backward")
