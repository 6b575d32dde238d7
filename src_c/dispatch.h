/* normfast: one type-generic entry point per kernel, for the Cython wrappers (normfast/_cpu).
 *
 * The kernels are instantiated once per element type (instantiate.h: name_f32, name_f64 and,
 * where NF_HAVE_F16, name_f16).  Instead of one prototype and one call per type in every
 * wrapper, each kernel header names its entry points here once:
 *
 *     #define nf_rows_forward(dt, ...) NF_DISPATCH(dt, nf_rows_forward, __VA_ARGS__)
 *
 * so nf_rows_forward(dt, x, y, ...) calls the instantiation of element type dt with the same
 * arguments (the element pointers may be void *: C converts them), or is -2 for a type with
 * no instantiation (float16 without _Float16; the Python boundary never lets one through).
 * A macro, not a function: no extra call, each call is checked against the typed prototype.
 *
 * Element-type codes are NumPy's type numbers (fixed in its ABI), so the wrappers pass the
 * type they already checked at the boundary (normfast/_cpu/_boundary.pxi asserts they agree).
 */
#ifndef NF_DISPATCH_H
#define NF_DISPATCH_H
#include "common.h"

#define NF_DT_F16 23    /* NPY_HALF */
#define NF_DT_F32 11    /* NPY_FLOAT */
#define NF_DT_F64 12    /* NPY_DOUBLE */

#define NF_DISPATCH(dt, name, ...)                                     \
    ((dt) == NF_DT_F32   ? name##_f32(__VA_ARGS__)                     \
     : (dt) == NF_DT_F64 ? name##_f64(__VA_ARGS__)                     \
                         : NF_DISPATCH_F16(dt, name, __VA_ARGS__))
#if NF_HAVE_F16
#define NF_DISPATCH_F16(dt, name, ...) ((dt) == NF_DT_F16 ? name##_f16(__VA_ARGS__) : -2)
#else
#define NF_DISPATCH_F16(dt, name, ...) (-2)
#endif

#endif
