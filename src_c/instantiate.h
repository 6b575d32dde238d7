/* Instantiates the template file named by NF_TEMPLATE once per element type:
 * NF_T is the element type and NF_S(name) adds its suffix (_f32, _f64).
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
#undef NF_TEMPLATE
