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

/* Column mode (nf_col_sums, nf_col_dsums): the 16 lanes [l, l + 16) of a per-lane constant c
 * and of the running sums s1, s2, in registers (two 8-wide vectors each), and the sums stored back. */
typedef struct { nf_v8d c0, c1, a0, a1, b0, b1; } nf_lanes16;
static inline __attribute__((always_inline)) nf_lanes16 nf_lanes16_load(const double *c, const double *s1,
                                                                        const double *s2)
{
    nf_lanes16 v;
    memcpy(&v.c0, c, 64); memcpy(&v.c1, c + 8, 64);
    memcpy(&v.a0, s1, 64); memcpy(&v.a1, s1 + 8, 64);
    memcpy(&v.b0, s2, 64); memcpy(&v.b1, s2 + 8, 64);
    return v;
}
static inline __attribute__((always_inline)) void nf_lanes16_store(const nf_lanes16 *v, double *s1, double *s2)
{
    memcpy(s1, &v->a0, 64); memcpy(s1 + 8, &v->a1, 64);
    memcpy(s2, &v->b0, 64); memcpy(s2 + 8, &v->b1, 64);
}

#define NF_TEMPLATE "moments_t.h"
#include "instantiate.h"
#include "dispatch.h"         /* the type-generic entry points: nf_name(dt, ...) */
#define nf_reduce4d(dt, ...) NF_DISPATCH(dt, nf_reduce4d, __VA_ARGS__)

#endif
