/* normfast: single-pass mergeable statistics (count, mean, M2) and the
 * backward sums, over the 4-d form x[A][B][C][D] -> per (a, c). */
#ifndef NF_MOMENTS_H
#define NF_MOMENTS_H
#include "common.h"

#define NF_ROW_MIN 32   /* segments at least this long are reduced row-wise (4 full 8-wide vectors per
                           segment); shorter ones (channels-last) go lane-wise in column mode */

/* What nf_reduce4d accumulates per (a, c) (normfast._engine.Reduce; normfast/_gpu/common.cuh):
 * each result is an nf_mom {n, mean, m2} read as (n, first, second). */
enum {
    NF_REDUCE_MOMENTS = 0,     /* (n, mean, M2) */
    NF_REDUCE_SQUARES = 1,     /* (n, 0, sum x^2): RMSNorm */
    NF_REDUCE_GRAD_SUMS = 2    /* (n, sum dy, sum dy * (x - m[a, c])): the channel-wise backward */
};

#define NF_TEMPLATE "moments_t.h"
#include "instantiate.h"
#include "dispatch.h"         /* the type-generic entry points: nf_name(dt, ...) */
#define nf_reduce4d(dt, ...) NF_DISPATCH(dt, nf_reduce4d, __VA_ARGS__)

#endif
