# cython: language_level=3
"""Forward normalization kernels: see src_c/normalize_t.h."""
cimport numpy as cnp
import numpy as np
from libc.stdint cimport int64_t
cnp.import_array()

cdef extern from "normalize.h" nogil:   # nf_name(dt, ...): src_c/dispatch.h
    int nf_apply4d(int dt, const void *x, const void *dy, void *y, int64_t A, int64_t B, int64_t C, int64_t D,
                   const double *m, const double *p, const double *q, const double *r, int nt)
    int nf_rows_forward(int dt, const void *x, void *y, int64_t M, int64_t N, const double *w, const double *b,
                        int64_t seg, int64_t period, double eps, int rms, double *mean, double *rstd, int nt)
    int nf_rows_add_forward(int dt, const void *x, const void *res, void *h, void *y, int64_t M, int64_t N,
                            const double *w, const double *b, double eps, int rms, double *mean, double *rstd, int nt)
    int nf_samples_forward(int dt, const void *x, void *y, int64_t A, int64_t B, int64_t G, int64_t D,
                           const double *w, const double *b, double eps, double *mean, double *rstd, int nt)
    int nf_group_backward(int dt, const void *x, const void *dy, void *dx, int64_t M, int64_t N, int64_t seg,
                          int64_t period, const double *mean, const double *rstd, const double *w, double *sums,
                          int nt)
    # rows_fast's: w/b in x's type (float32/float64 only there)
    int nf_rows_forward_T(int dt, const void *x, void *y, int64_t M, int64_t N, const void *w, const void *b,
                          double eps, int rms, double *mean, double *rstd, int nt)


include "_boundary.pxi"

cdef int F64 = cnp.NPY_FLOAT64


def apply4d(x, dy, y, int64_t A, int64_t B, int64_t C, int64_t D, m, p, q, r, int nt):
    """y = (x - m) * p + q (+ dy * r), coefficients per (a, c) as float64 (A*C,) arrays; y may be x."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(A, B, C, D), S = _prod(A, C)
    cdef void *px = _data(x, "x", t, n)
    cdef void *pg = _data(dy, "dy", t, n, False, True)
    cdef void *py = _data(y, "y", t, n, True)
    cdef const double *pm = <const double *>_data(m, "m", F64, S)
    cdef const double *pp = <const double *>_data(p, "p", F64, S)
    cdef const double *pq = <const double *>_data(q, "q", F64, S)
    cdef const double *pr = <const double *>_data(r, "r", F64, S, False, dy is None)
    with nogil:
        rc = nf_apply4d(t, px, pg, py, A, B, C, D, pm, pp, pq, pr, nt)
    _check_rc(rc, "apply4d")


def rows_forward(x, y, int64_t M, int64_t N, w, b, int64_t seg, int64_t period, double eps, bint rms, mean, rstd,
                 int nt):
    """Fused per-row statistics + normalization; w/b float64 (period * N / seg,) or None (both or
    neither); mean/rstd: (M,) float64 outputs."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(M, N)
    if period < 1 or seg < 0 or (N > 0 and (seg < 1 or N % seg)):
        raise ValueError("normfast kernel boundary: seg must divide N and period be >= 1")
    cdef int64_t nseg = N // seg if seg > 0 else 0
    if (w is None) != (b is None):
        raise ValueError("normfast kernel boundary: w and b are given together")
    cdef void *px = _data(x, "x", t, n)
    cdef void *py = _data(y, "y", t, n, True)
    if N == 0:                  # empty rows: the kernel reads no parameter
        w = b = None
    cdef const double *pw = <const double *>_data(w, "w", F64, _prod(period, nseg), False, True)
    cdef const double *pb = <const double *>_data(b, "b", F64, _prod(period, nseg), False, True)
    cdef double *pmean = <double *>_data(mean, "mean", F64, M, True)
    cdef double *prstd = <double *>_data(rstd, "rstd", F64, M, True)
    with nogil:
        rc = nf_rows_forward(t, px, py, M, N, pw, pb, seg, period, eps, rms, pmean, prstd, nt)
    _check_rc(rc, "rows_forward")


def group_backward(x, dy, dx, int64_t M, int64_t N, int64_t seg, int64_t period, mean, rstd, w, sums, int nt):
    """Channels-first group / instance norm backward fused per row (src_c/group_backward_t.h): rows
    of N = nseg * seg values; dx (x's dtype, may be x or dy; None: sums only); mean/rstd (M,), w
    (period * nseg,) and sums (M * nseg * 2,) float64."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(M, N)
    if period < 1 or seg < 1 or N % seg:
        raise ValueError("normfast kernel boundary: seg must divide N and period be >= 1")
    cdef int64_t nseg = N // seg
    if M % period:
        raise ValueError("normfast kernel boundary: period must divide M")
    cdef void *px = _data(x, "x", t, n)
    cdef void *pg = _data(dy, "dy", t, n)
    cdef void *pdx = _data(dx, "dx", t, n, True, True)
    cdef const double *pmean = <const double *>_data(mean, "mean", F64, M)
    cdef const double *prstd = <const double *>_data(rstd, "rstd", F64, M)
    cdef const double *pw = <const double *>_data(w, "w", F64, _prod(period, nseg))
    cdef double *ps = <double *>_data(sums, "sums", F64, _prod(M, nseg, 2), True)
    with nogil:
        rc = nf_group_backward(t, px, pg, pdx, M, N, seg, period, pmean, prstd, pw, ps, nt)
    _check_rc(rc, "group_backward")


def rows_add_forward(x, res, h, y, int64_t M, int64_t N, w, b, double eps, bint rms, mean, rstd, int nt):
    """Fused h = x + res; y = norm(h) per row (w/b float64 (N,) or None, together); mean/rstd (M,)
    float64 outputs.  h may be res or x, y may be x or res (row by row)."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(M, N)
    if (w is None) != (b is None):
        raise ValueError("normfast kernel boundary: w and b are given together")
    cdef void *px = _data(x, "x", t, n)
    cdef void *pr = _data(res, "res", t, n)
    cdef void *ph = _data(h, "h", t, n, True)
    cdef void *py = _data(y, "y", t, n, True)
    cdef const double *pw = <const double *>_data(w, "w", F64, N, False, True)
    cdef const double *pb = <const double *>_data(b, "b", F64, N, False, True)
    cdef double *pmean = <double *>_data(mean, "mean", F64, M, True)
    cdef double *prstd = <double *>_data(rstd, "rstd", F64, M, True)
    with nogil:
        rc = nf_rows_add_forward(t, px, pr, ph, py, M, N, pw, pb, eps, rms, pmean, prstd, nt)
    _check_rc(rc, "rows_add_forward")


def samples_forward(x, y, int64_t A, int64_t B, int64_t G, int64_t D, w, b, double eps, mean, rstd, int nt):
    """Per-sample fused channels-last group/instance norm: x[A][B][G*D]; w/b float64 per lane (G*D)
    or None; mean/rstd (A*G,) float64 outputs."""
    cdef int rc = 0, t = _float_type(x)
    cdef int64_t n = _prod(A, B, G, D)
    if n == 0:
        raise ValueError("normfast kernel boundary: samples_forward needs a non-empty x")
    cdef void *px = _data(x, "x", t, n)
    cdef void *py = _data(y, "y", t, n, True)
    cdef const double *pw = <const double *>_data(w, "w", F64, _prod(G, D), False, True)
    cdef const double *pb = <const double *>_data(b, "b", F64, _prod(G, D), False, True)
    cdef double *pmean = <double *>_data(mean, "mean", F64, _prod(A, G), True)
    cdef double *prstd = <double *>_data(rstd, "rstd", F64, _prod(A, G), True)
    with nogil:
        rc = nf_samples_forward(t, px, py, A, B, G, D, pw, pb, eps, pmean, prstd, nt)
    _check_rc(rc, "samples_forward")


# --------------------------------------------------------------------------- fast path
# The common call of a server (contiguous float32/float64 x, weight/bias absent or contiguous in
# x's dtype, NumPy or torch CPU) checked here in C-level code with no conversion: a few hundred
# nanoseconds of overhead instead of the general path's tens of microseconds.  Anything else
# returns NotImplemented and takes the general path, which keeps every check.

from cpython.object cimport PyObject
from libc.stdlib cimport malloc, free
from libc.math cimport isfinite

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int nf_fast_omp_max(void) { return omp_get_max_threads(); }
    #else
    static int nf_fast_omp_max(void) { return 1; }
    #endif
    """
    int nf_fast_omp_max() nogil

# Thread state mirrored from normfast._threads (set_state): override (0: none), forked, CPU limit.
cdef extern from "apply_f32.h":
    int nf_float32_high


def set_float32_high(bint high):
    """The row-wise normalization of float32 data at float32 width (True) or in float64 (False):
    normfast.set_float32_precision, see src_c/apply_f32.h."""
    global nf_float32_high
    nf_float32_high = high


def float32_high():
    return bool(nf_float32_high)


cdef int _override = 0, _forked = 0, _cpu_limit = 1 << 20


def set_thread_state(int override, bint forked, int cpu_limit):
    global _override, _forked, _cpu_limit
    _override, _forked, _cpu_limit = override, forked, cpu_limit


cdef inline int _nthreads() noexcept nogil:
    cdef int n
    if _forked:
        return 1
    if _override > 0:
        return _override
    n = nf_fast_omp_max()
    return n if n < _cpu_limit else _cpu_limit


def num_threads():
    """The thread count the next kernel call uses (normfast.get_num_threads)."""
    return _nthreads()


cdef int _FAST_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
cdef object _torch_tensor = None          # torch.Tensor once torch is imported
cdef object _torch_f32 = None, _torch_f64 = None, _torch_from_numpy = None
cdef object _np_empty = np.empty
from normfast._cpu._alloc import MIN_BYTES as _ALLOC_MIN, empty as _alloc_empty


cdef inline bint _plain(object a, int typenum):
    """An exact ndarray, C-contiguous, aligned, native byte order, of the given type."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and (cnp.PyArray_FLAGS(arr) & _FAST_FLAGS) == _FAST_FLAGS
            and cnp.PyArray_ISNOTSWAPPED(arr))


cdef inline bint _plain_vector(object a, int typenum, int64_t n):
    """A plain (see _plain) 1-d array of n elements."""
    return _plain(a, typenum) and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1 and cnp.PyArray_DIMS(<cnp.ndarray>a)[0] == n


cdef inline bint _apart(cnp.ndarray a, cnp.ndarray b):
    """Two contiguous arrays with no byte in common."""
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    return pa + cnp.PyArray_NBYTES(a) <= pb or pb + cnp.PyArray_NBYTES(b) <= pa


cdef object _torch_grad_enabled = None


cdef object _torch_as_numpy(object t):
    """A NumPy view of a plain torch CPU tensor (contiguous float32/float64, no neg/conj bit, not
    recording autograd: requires_grad only under no_grad), or None."""
    global _torch_tensor, _torch_f32, _torch_f64, _torch_from_numpy, _torch_grad_enabled
    if _torch_tensor is None:
        import torch
        _torch_tensor, _torch_f32, _torch_f64 = torch.Tensor, torch.float32, torch.float64
        _torch_from_numpy, _torch_grad_enabled = torch.from_numpy, torch.is_grad_enabled
    if not isinstance(t, _torch_tensor):
        return None
    dt = t.dtype
    if (dt is not _torch_f32 and dt is not _torch_f64) or not t.is_cpu or t.is_neg() or not t.is_contiguous():
        return None
    if t.requires_grad:
        if _torch_grad_enabled():
            return None                     # autograd: normfast.torch's registered op
        return _param_view(t)
    return t.numpy()


# NumPy views of parameters (tensors that require grad, read under no_grad) by tensor: detaching
# costs ~1 us per call.  An entry is valid for the same tensor object at the same version (any
# in-place change bumps it) and data pointer (``p.data = ...``); the entry keeps the tensor alive,
# so its id cannot be reused.  Bounded: cleared when it reaches _PARAM_CACHE_MAX entries.
cdef dict _param_cache = {}
cdef int _PARAM_CACHE_MAX = 1024


cdef object _param_view(object t):
    cdef object hit = _param_cache.get(id(t))
    if hit is not None and (<tuple>hit)[0] is t and (<tuple>hit)[1] == t._version \
            and (<tuple>hit)[2] == t.data_ptr():
        return (<tuple>hit)[3]
    if len(_param_cache) >= _PARAM_CACHE_MAX:
        _param_cache.clear()
    view = t.detach().numpy()
    _param_cache[id(t)] = (t, t._version, t.data_ptr(), view)
    return view


cdef tuple _fast_torch_args(object x, object weight, object bias):
    """(x, weight, bias) as NumPy views of plain torch CPU tensors (see _torch_as_numpy), or None."""
    if type(x).__name__ != "Tensor":
        return None
    xv = _torch_as_numpy(x)
    if xv is None:
        return None
    if weight is not None:
        weight = _torch_as_numpy(weight)
        if weight is None:
            return None
    if bias is not None:
        bias = _torch_as_numpy(bias)
        if bias is None:
            return None
    return (xv, weight, bias)


cdef inline bint _fast_shape(object normalized_shape, int64_t N):
    """normalized_shape is N or (N,) / [N] with a plain int."""
    if type(normalized_shape) is int:
        return normalized_shape == N
    if isinstance(normalized_shape, (tuple, list)) and len(normalized_shape) == 1 \
            and type(normalized_shape[0]) is int:
        return normalized_shape[0] == N
    return False


cdef inline bint _fast_eps(object eps, bint rms, int typenum, double *e):
    """A finite float eps >= 0 (or None for rms: the dtype's machine epsilon, torch's rule) into e."""
    if eps is None:
        if not rms:
            return False
        e[0] = 1.1920928955078125e-07 if typenum == cnp.NPY_FLOAT32 else 2.220446049250313e-16
        return True
    if type(eps) is not float:
        return False
    e[0] = eps
    return isfinite(e[0]) and e[0] >= 0


cdef object _fast_target(object out, object x, object wa, object ba, int typenum):
    """The output array: a new one (a reused block when large), or `out` when it is plain, writable,
    of x's shape and apart from x (or x itself), weight and bias; None otherwise."""
    cdef cnp.ndarray ya, xa = <cnp.ndarray>x
    if out is None:
        if cnp.PyArray_NBYTES(xa) >= _ALLOC_MIN:        # large: a reused, already-faulted block
            return _alloc_empty(x.shape, x.dtype)
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), typenum, 0)
    if not _plain(out, typenum) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out) \
            or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>out, xa):
        return None
    ya = <cnp.ndarray>out
    if (ya is not xa and not _apart(ya, xa)) or (wa is not None and not _apart(ya, <cnp.ndarray>wa)) \
            or (ba is not None and not _apart(ya, <cnp.ndarray>ba)):
        return None                         # the general path copies or raises
    return ya


def rows_fast(x, normalized_shape, weight, bias, eps, out, bint return_stats, bint rms):
    """layer_norm / rms_norm for the common call, or NotImplemented.  Same results, bitwise,
    as the general path (same kernels and operations)."""
    cdef cnp.ndarray xa, ya
    cdef int typenum, nd, rc = 0, nt
    cdef int64_t N, M
    cdef double e
    cdef double sbuf[512]
    cdef double *mean = NULL
    cdef double *rstd = NULL
    cdef const void *pw = NULL
    cdef const void *pb = NULL
    torch_in = False
    if type(x) is not np.ndarray:
        args = _fast_torch_args(x, weight, bias) if out is None else None
        if args is None:
            return NotImplemented
        x, weight, bias = args
        torch_in = True
    xa = <cnp.ndarray>x
    typenum = cnp.PyArray_TYPE(xa)
    if (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64) or not _plain(x, typenum):
        return NotImplemented
    nd = cnp.PyArray_NDIM(xa)
    if nd < 1:
        return NotImplemented
    N = cnp.PyArray_DIMS(xa)[nd - 1]
    if N == 0 or not _fast_shape(normalized_shape, N) or not _fast_eps(eps, rms, typenum, &e):
        return NotImplemented
    M = cnp.PyArray_SIZE(xa) // N
    if weight is not None:
        if not _plain_vector(weight, typenum, N):
            return NotImplemented
        pw = cnp.PyArray_DATA(<cnp.ndarray>weight)
    if bias is not None:
        if not _plain_vector(bias, typenum, N):
            return NotImplemented
        pb = cnp.PyArray_DATA(<cnp.ndarray>bias)
    yo = _fast_target(out, x, weight, bias, typenum)
    if yo is None:
        return NotImplemented
    ya = <cnp.ndarray>yo
    if return_stats:
        lead = x.shape[:nd - 1]
        mean_a = _np_empty(lead, np.float64)
        rstd_a = _np_empty(lead, np.float64)
        mean = <double *>cnp.PyArray_DATA(<cnp.ndarray>mean_a)
        rstd = <double *>cnp.PyArray_DATA(<cnp.ndarray>rstd_a)
    elif M <= 256:
        mean, rstd = sbuf, sbuf + 256
    else:
        mean = <double *>malloc(<size_t>(2 * M) * sizeof(double))
        if mean == NULL:
            raise MemoryError("normfast: out of memory")
        rstd = mean + M
    nt = _nthreads()
    with nogil:
        rc = nf_rows_forward_T(typenum, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ya), M, N, pw, pb, e, rms, mean, rstd,
                               nt)
    if not return_stats and M > 256:
        free(mean)
    y = _torch_from_numpy(ya) if torch_in else ya
    if not return_stats:
        return y
    if rms:
        return (y, _torch_from_numpy(rstd_a) if torch_in else rstd_a)
    if torch_in:
        return (y, _torch_from_numpy(mean_a), _torch_from_numpy(rstd_a))
    return (y, mean_a, rstd_a)
