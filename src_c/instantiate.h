/* Instantiates the template file named by NF_TEMPLATE once per element type:
 * NF_T is the element type and NF_S(name) adds its suffix (_f32, _f64, and _f16 where
 * the compiler has _Float16: NF_HAVE_F16, see common.h).
 * Usage:  #define NF_TEMPLATE "moments_t.h"
 *         #include "instantiate.h"                                        */
#define NF_T float
#define NF_S(name) name##_f32
#include NF_TEMPLATE
#undef NF_T
#undef NF_S

#define NF_T double
#define NF_S(name) name##_f64
#include NF_TEMPLATE
#undef NF_T
#undef NF_S

#if NF_HAVE_F16
#define NF_T _Float16
#define NF_S(name) name##_f16
#include NF_TEMPLATE
#undef NF_T
#undef NF_S
#endif
#undef NF_TEMPLATE
