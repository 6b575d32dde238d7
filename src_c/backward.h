/* normfast: row-wise backward kernels (see backward_t.h).  The channel-wise
 * backward reuses nf_reduce4d (kind 2) and nf_apply4d. */
#ifndef NF_BACKWARD_H
#define NF_BACKWARD_H
#include "normalize.h"

#define NF_T float
#define NF_S(name) name##_f32
#include "backward_t.h"
#undef NF_T
#undef NF_S

#define NF_T double
#define NF_S(name) name##_f64
#include "backward_t.h"
#undef NF_T
#undef NF_S

#endif
