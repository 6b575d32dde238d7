/* normfast: forward normalization kernels (see normalize_t.h). */
#ifndef NF_NORMALIZE_H
#define NF_NORMALIZE_H
#include "moments.h"

#define NF_T float
#define NF_S(name) name##_f32
#include "normalize_t.h"
#undef NF_T
#undef NF_S

#define NF_T double
#define NF_S(name) name##_f64
#include "normalize_t.h"
#undef NF_T
#undef NF_S

#endif
