/* normfast: single-pass mergeable statistics (count, mean, M2) and the
 * backward sums, over the 4-d form x[A][B][C][D] -> per (a, c). */
#ifndef NF_MOMENTS_H
#define NF_MOMENTS_H
#include "common.h"

#define NF_ROW_MIN 32   /* segments at least this long are reduced row-wise (4 full 8-wide vectors per
                           segment); shorter ones (channels-last) go lane-wise in column mode */

#define NF_TEMPLATE "moments_t.h"
#include "instantiate.h"

#endif
