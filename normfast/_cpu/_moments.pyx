# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Statistics over the 4-d form x[A, B, C, D] -> per (a, c): see src_c/moments_t.h."""
cimport numpy as cnp
from libc.stdint cimport int64_t
cnp.import_array()

from cpython.pycapsule cimport PyCapsule_GetPointer
from normfast._cpu._pool import capsule as _pool_capsule

cdef extern from "parallel.h" nogil:
    void nf_set_parallel(void *entry)

nf_set_parallel(PyCapsule_GetPointer(_pool_capsule(), b"normfast.nf_parallel"))

cdef extern from "moments.h" nogil:
    ctypedef struct nf_mom:
        double n, mean, m2
    int nf_reduce4d_f32(const float *x, const float *dy, const double *m, int64_t A, int64_t B, int64_t C,
                        int64_t D, int kind, nf_mom *out, int nt)
    int nf_reduce4d_f64(const double *x, const double *dy, const double *m, int64_t A, int64_t B, int64_t C,
                        int64_t D, int kind, nf_mom *out, int nt)


def reduce4d(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray m, int64_t A, int64_t B, int64_t C, int64_t D,
             int kind, cnp.ndarray out, int nt):
    """out: (A*C, 3) float64 C-contiguous; x (and dy) C-contiguous float32/float64 of A*B*C*D values.

    kind 0: (n, mean, M2); kind 1: (n, 0, sum x^2); kind 2: (n, sum dy, sum dy*(x - m)).
    """
    cdef int rc
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *pg = NULL if dy is None else cnp.PyArray_DATA(dy)
    cdef const double *pm = NULL if m is None else <const double *>cnp.PyArray_DATA(m)
    cdef nf_mom *po = <nf_mom *>cnp.PyArray_DATA(out)
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            rc = nf_reduce4d_f32(<const float *>px, <const float *>pg, pm, A, B, C, D, kind, po, nt)
    elif typenum == cnp.NPY_FLOAT64:
        with nogil:
            rc = nf_reduce4d_f64(<const double *>px, <const double *>pg, pm, A, B, C, D, kind, po, nt)
    else:
        raise TypeError("reduce4d: float32 or float64 expected")
    if rc != 0:
        raise MemoryError("normfast: out of memory in reduce4d")
