# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Forward normalization kernels: see src_c/normalize_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

from cpython.pycapsule cimport PyCapsule_GetPointer
from normfast._cpu._pool import capsule as _pool_capsule

cdef extern from "parallel.h" nogil:
    void nf_set_parallel(void *entry)

nf_set_parallel(PyCapsule_GetPointer(_pool_capsule(), b"normfast.nf_parallel"))

cdef extern from "normalize.h" nogil:
    int nf_apply4d_f32(const float *x, const float *dy, float *y, int64_t A, int64_t B, int64_t C, int64_t D,
                       const double *m, const double *p, const double *q, const double *r, int nt)
    int nf_apply4d_f64(const double *x, const double *dy, double *y, int64_t A, int64_t B, int64_t C, int64_t D,
                       const double *m, const double *p, const double *q, const double *r, int nt)
    int nf_rows_forward_f32(const float *x, float *y, int64_t M, int64_t N, const double *w, const double *b,
                            int64_t seg, int64_t period, double eps, int rms, double *mean, double *rstd, int nt)
    int nf_rows_forward_f64(const double *x, double *y, int64_t M, int64_t N, const double *w, const double *b,
                            int64_t seg, int64_t period, double eps, int rms, double *mean, double *rstd, int nt)
    int nf_rows_add_forward_f32(const float *x, const float *res, float *h, float *y, int64_t M, int64_t N,
                                const double *w, const double *b, double eps, int rms, double *mean, double *rstd,
                                int nt)
    int nf_rows_add_forward_f64(const double *x, const double *res, double *h, double *y, int64_t M, int64_t N,
                                const double *w, const double *b, double eps, int rms, double *mean, double *rstd,
                                int nt)
    int nf_samples_forward_f32(const float *x, float *y, int64_t A, int64_t B, int64_t G, int64_t D,
                               const double *w, const double *b, double eps, double *mean, double *rstd, int nt)
    int nf_samples_forward_f64(const double *x, double *y, int64_t A, int64_t B, int64_t G, int64_t D,
                               const double *w, const double *b, double eps, double *mean, double *rstd, int nt)


cdef inline const double *_dptr(object a):
    return NULL if a is None else <const double *>cnp.PyArray_DATA(<cnp.ndarray>a)


def apply4d(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray y, int64_t A, int64_t B, int64_t C, int64_t D,
            cnp.ndarray m, cnp.ndarray p, cnp.ndarray q, cnp.ndarray r, int nt):
    """y = (x - m) * p + q (+ dy * r), coefficients per (a, c) as float64 (A*C,) arrays."""
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *pg = NULL if dy is None else cnp.PyArray_DATA(dy)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef const double *pm = _dptr(m)
    cdef const double *pp = _dptr(p)
    cdef const double *pq = _dptr(q)
    cdef const double *pr = _dptr(r)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_apply4d_f32(<const float *>px, <const float *>pg, <float *>py, A, B, C, D, pm, pp, pq, pr, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_apply4d_f64(<const double *>px, <const double *>pg, <double *>py, A, B, C, D, pm, pp, pq, pr, nt)
    else:
        raise TypeError("apply4d: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in apply4d")


def rows_forward(cnp.ndarray x, cnp.ndarray y, int64_t M, int64_t N, cnp.ndarray w, cnp.ndarray b,
                 int64_t seg, int64_t period, double eps, bint rms, cnp.ndarray mean, cnp.ndarray rstd, int nt):
    """Fused per-row statistics + normalization; mean/rstd: (M,) float64 outputs."""
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef const double *pw = _dptr(w)
    cdef const double *pb = _dptr(b)
    cdef double *pmean = <double *>cnp.PyArray_DATA(mean)
    cdef double *prstd = <double *>cnp.PyArray_DATA(rstd)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_rows_forward_f32(<const float *>px, <float *>py, M, N, pw, pb, seg, period, eps, rms,
                                     pmean, prstd, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_rows_forward_f64(<const double *>px, <double *>py, M, N, pw, pb, seg, period, eps, rms,
                                     pmean, prstd, nt)
    else:
        raise TypeError("rows_forward: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in rows_forward")


def rows_add_forward(cnp.ndarray x, cnp.ndarray res, cnp.ndarray h, cnp.ndarray y, int64_t M, int64_t N,
                     cnp.ndarray w, cnp.ndarray b, double eps, bint rms, cnp.ndarray mean, cnp.ndarray rstd, int nt):
    """Fused h = x + res; y = norm(h) per row (w/b float64 (N,) or None); mean/rstd (M,) float64 outputs."""
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *pr = cnp.PyArray_DATA(res)
    cdef void *ph = cnp.PyArray_DATA(h)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef const double *pw = _dptr(w)
    cdef const double *pb = _dptr(b)
    cdef double *pmean = <double *>cnp.PyArray_DATA(mean)
    cdef double *prstd = <double *>cnp.PyArray_DATA(rstd)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_rows_add_forward_f32(<const float *>px, <const float *>pr, <float *>ph, <float *>py, M, N, pw, pb,
                                         eps, rms, pmean, prstd, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_rows_add_forward_f64(<const double *>px, <const double *>pr, <double *>ph, <double *>py, M, N,
                                         pw, pb, eps, rms, pmean, prstd, nt)
    else:
        raise TypeError("rows_add_forward: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in rows_add_forward")


def samples_forward(cnp.ndarray x, cnp.ndarray y, int64_t A, int64_t B, int64_t G, int64_t D, cnp.ndarray w,
                    cnp.ndarray b, double eps, cnp.ndarray mean, cnp.ndarray rstd, int nt):
    """Per-sample fused channels-last group/instance norm: x[A][B][G*D]; mean/rstd (A*G,) float64."""
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef const double *pw = _dptr(w)
    cdef const double *pb = _dptr(b)
    cdef double *pmean = <double *>cnp.PyArray_DATA(mean)
    cdef double *prstd = <double *>cnp.PyArray_DATA(rstd)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_samples_forward_f32(<const float *>px, <float *>py, A, B, G, D, pw, pb, eps, pmean, prstd, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_samples_forward_f64(<const double *>px, <double *>py, A, B, G, D, pw, pb, eps, pmean, prstd, nt)
    else:
        raise TypeError("samples_forward: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in samples_forward")
