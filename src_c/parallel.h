/* normfast: how a kernel runs in parallel (the pool itself is src_c/pool.h).
 *
 * A kernel cuts its work into U units whose boundaries depend only on the shape, writes a
 * range function fn(ctx, u0, u1) that computes units [u0, u1), and calls
 * nf_parallel(nt, U, grain, fn, ctx).  Units write disjoint outputs (or per-unit partials that
 * the kernel merges afterwards in unit order), so the result does not depend on which thread
 * ran which unit.  Every kernel module links the one pool of the process: normfast._cpu._pool
 * hands its entry point over at import (nf_set_parallel); until then, and for nt <= 1, the
 * caller runs everything. */
#ifndef NF_PARALLEL_H
#define NF_PARALLEL_H
#include <stdint.h>

typedef void (*nf_range_fn)(void *ctx, int64_t u0, int64_t u1);
typedef void (*nf_parallel_fn)(int nt, int64_t U, int64_t grain, nf_range_fn fn, void *ctx);

static nf_parallel_fn nf_parallel_entry = 0;

static inline void nf_set_parallel(void *entry) { nf_parallel_entry = (nf_parallel_fn)entry; }

static inline void nf_parallel(int nt, int64_t U, int64_t grain, nf_range_fn fn, void *ctx)
{
    if (U <= 0) return;
    if (nt > 1 && nf_parallel_entry) nf_parallel_entry(nt, U, grain, fn, ctx);
    else fn(ctx, 0, U);
}

/* Units per claim so that one claim is about `values` values of work (at least 1 unit). */
static inline int64_t nf_grain(int64_t values_per_unit, int64_t values)
{
    int64_t g = values_per_unit > 0 ? values / values_per_unit : 1;
    return g < 1 ? 1 : g;
}

#endif
