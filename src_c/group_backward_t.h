/* Group / instance norm backward on channels-first input, fused per row (included by normalize.h
 * once per element type, after moments_t.h and normalize_t.h, whose leaf loops it reuses).
 *
 * A row i is one (sample, group): N = nseg * seg values, segment j being channel
 * c = (i % period) * nseg + j over its seg positions (instance norm: nseg = 1).  With m, r the
 * row's mean and rstd, g = w[c] * dy and n = N:
 *   per segment: sdy[j] = sum(dy), sdx[j] = sum(dy * (x - m))      (float64, nf_seg_dsums)
 *   s1 = sum_j w[c] sdy[j],  s2 = r * sum_j w[c] sdx[j]
 *   dx = dy * (r w[c]) + (x - m) * (-r^2 s2 / n) + (-r s1 / n)      (nf_seg_apply_dy; float32 data:
 *        dx = (w[c] dy - s1 / n) r - xh (r s2 / n) at float32 width, nf_seg_bwd_f32 in apply_f32.h)
 * The second pass reads the row while it is still in cache (a row of 8 channels x 28 x 28 float32
 * values is 25 KB per array): three memory passes (x, dy in, dx out) instead of the five of the
 * two-kernel path (reduce, then apply).  The per-(row, segment) sums go to `sums` (sdy, sdx) for
 * dw / db.  Rows are independent, each computed by one thread in a fixed order: the results do
 * not depend on the thread count.  dx may be x or dy (a row is read whole before it is written). */

typedef struct {
    const NF_T *x, *dy; NF_T *dx; int64_t N, seg, nseg, period;
    const double *mean, *rstd, *w; double *sums;
} NF_S(nf_gbwd_ctx);

static void NF_S(nf_gbwd_range)(void *vc, int64_t i0, int64_t i1)
{
    const NF_S(nf_gbwd_ctx) *c = (const NF_S(nf_gbwd_ctx) *)vc;
    const int64_t N = c->N, seg = c->seg, nseg = c->nseg;
    for (int64_t i = i0; i < i1; ++i) {
        const NF_T *xr = c->x + i * N, *gr = c->dy + i * N;
        const double m = c->mean[i], r = c->rstd[i], *w = c->w + (i % c->period) * nseg;
        double *sr = c->sums + i * nseg * 2;
        double s1 = 0.0, s2 = 0.0;
        for (int64_t j = 0; j < nseg; ++j) {
            double acc[2 * NF_LANES] = {0};
            NF_S(nf_seg_dsums)(xr + j * seg, gr + j * seg, seg, m, acc);
            double a = 0.0, b = 0.0;
            for (int l = 0; l < NF_LANES; ++l) { a += acc[l]; b += acc[NF_LANES + l]; }
            sr[2 * j] = a; sr[2 * j + 1] = b;
            s1 += w[j] * a; s2 += w[j] * b;
        }
        if (!c->dx) continue;
        s2 *= r;
        const double n = (double)N;
        if (sizeof(NF_T) == 4) {          /* float32: the second pass at float32 width (apply_f32.h) */
            for (int64_t j = 0; j < nseg; ++j)
                nf_seg_bwd_f32((const float *)(xr + j * seg), (const float *)(gr + j * seg),
                               (float *)(c->dx + i * N + j * seg), seg, w[j], m, r, s1 / n, s2 / n);
            continue;
        }
        const double beta = -r * r * s2 / n, gamma = -r * s1 / n;
        for (int64_t j = 0; j < nseg; ++j)
            NF_S(nf_seg_apply_dy)(xr + j * seg, gr + j * seg, c->dx + i * N + j * seg, seg, m, beta, gamma, r * w[j]);
    }
}

/* x, dy (M x N, N = nseg * seg); dx (M x N, or NULL: the sums only); mean, rstd (M,); w
 * (period * nseg,) float64; sums (M * nseg * 2,) float64 outputs.  Returns 0. */
static int NF_S(nf_group_backward)(const NF_T *x, const NF_T *dy, NF_T *dx, int64_t M, int64_t N, int64_t seg,
                                   int64_t period, const double *mean, const double *rstd, const double *w,
                                   double *sums, int nt)
{
    if (M == 0 || N == 0) return 0;
    NF_S(nf_gbwd_ctx) c = {x, dy, dx, N, seg, N / seg, period, mean, rstd, w, sums};
    nf_parallel(nf_threads(nt, M * N), M, nf_grain(N, NF_GRAIN_VALUES), NF_S(nf_gbwd_range), &c);
    return 0;
}
