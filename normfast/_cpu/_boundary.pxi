# The C boundary (reliability issue, class 9): every array a kernel receives is checked here, so a
# bug above can only raise, never make a kernel read or write outside an array.
# Included by the kernel modules (_moments, _normalize, _backward), which also get the process's
# thread pool here (its entry point from normfast._cpu._pool).
from cpython.pycapsule cimport PyCapsule_GetPointer
from normfast._cpu._pool import capsule as _pool_capsule

cdef extern from "parallel.h" nogil:
    void nf_set_parallel(void *entry)

nf_set_parallel(PyCapsule_GetPointer(_pool_capsule(), b"normfast.nf_parallel"))

cdef int _KERNEL_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED


cdef void *_data(object a, str name, int typenum, int64_t size, bint write=False, bint optional=False) except? NULL:
    """Data pointer of `a` after checking it is an ndarray of `typenum`, C-contiguous, aligned,
    native byte order, of exactly `size` elements (writable when `write`); None -> NULL when
    `optional`."""
    cdef cnp.ndarray arr
    if a is None:
        if optional:
            return NULL
        raise ValueError(f"normfast kernel boundary: {name} is required")
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"normfast kernel boundary: {name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"normfast kernel boundary: {name} has dtype {arr.dtype}, expected "
                        f"{cnp.PyArray_DescrFromType(typenum)} in native byte order")
    if (cnp.PyArray_FLAGS(arr) & _KERNEL_FLAGS) != _KERNEL_FLAGS:
        raise ValueError(f"normfast kernel boundary: {name} must be C-contiguous and aligned")
    if size < 0 or cnp.PyArray_SIZE(arr) != size:
        raise ValueError(f"normfast kernel boundary: {name} has {cnp.PyArray_SIZE(arr)} elements, expected {size}")
    if write and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"normfast kernel boundary: {name} is read-only")
    return cnp.PyArray_DATA(arr)


cdef extern from "common.h":
    int NF_HAVE_F16          # the kernels are instantiated for float16 (_Float16)

HAVE_F16 = bool(NF_HAVE_F16)

# The kernels' type-generic entry points (src_c/dispatch.h) take the NumPy type number checked
# here (_float_type) as their element-type code.
cdef extern from *:
    """
    #include "dispatch.h"
    _Static_assert(NF_DT_F16 == NPY_HALF && NF_DT_F32 == NPY_FLOAT && NF_DT_F64 == NPY_DOUBLE,
                   "src_c/dispatch.h: element-type codes are NumPy's type numbers");
    """


cdef int _float_type(object x) except -1:
    """NPY_FLOAT32, NPY_FLOAT64 or (where the kernels have _Float16) NPY_FLOAT16: the element
    type of the kernel call (x's)."""
    if isinstance(x, cnp.ndarray):
        t = cnp.PyArray_TYPE(<cnp.ndarray>x)
        if t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64 or (t == cnp.NPY_FLOAT16 and NF_HAVE_F16):
            return t
    raise TypeError("normfast kernel boundary: x must be a float32 or float64 NumPy array"
                    + (" (or float16)" if NF_HAVE_F16 else ""))


cdef int64_t _prod(int64_t a, int64_t b, int64_t c=1, int64_t d=1) except -1:
    """a*b*c*d for sizes >= 0, ValueError on overflow."""
    cdef object p = <object>a * b * c * d
    if a < 0 or b < 0 or c < 0 or d < 0 or p > 0x7FFFFFFFFFFFFFFF:
        raise ValueError("normfast kernel boundary: sizes must be >= 0 and their product fit in 64 bits")
    return <int64_t>p


cdef inline void _check_rc(int rc, str kernel) except *:
    if rc != 0:
        raise MemoryError(f"normfast: out of memory in {kernel}")
