/* normfast: single-pass mergeable statistics (count, mean, M2) and the
 * backward sums, over the 4-d form x[A][B][C][D] -> per (a, c). */
#ifndef NF_MOMENTS_H
#define NF_MOMENTS_H
#include "common.h"

#define NF_ROW_MIN 32   /* segments at least this long are reduced row-wise */

#define NF_TEMPLATE "moments_t.h"
#include "instantiate.h"

#endif
