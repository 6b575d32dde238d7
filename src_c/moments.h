/* normfast: single-pass mergeable statistics (count, mean, M2) and the
 * backward sums, over the 4-d form x[A][B][C][D] -> per (a, c). */
#ifndef NF_MOMENTS_H
#define NF_MOMENTS_H
#include "common.h"

#define NF_ROW_MIN 32   /* segments at least this long are reduced row-wise */

#define NF_T float
#define NF_S(name) name##_f32
#include "moments_t.h"
#undef NF_T
#undef NF_S

#define NF_T double
#define NF_S(name) name##_f64
#include "moments_t.h"
#undef NF_T
#undef NF_S

#endif
