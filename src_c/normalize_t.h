/* Forward normalization kernels, included by normalize.h once per element type.
 *
 * apply4d: out[a][b][c][d] = (x - m[a,c]) * p[a,c] + q[a,c] (+ dy * r[a,c])
 *   with per-(a, c) float64 coefficients: the forward (p = rstd * w, q = b) and
 *   the channel-wise backward (dx = (x - m) * beta + gamma + dy * alpha) share it.
 * rows_forward: fused per-row statistics + normalization while the row is in cache
 *   (LayerNorm, RMSNorm, and GroupNorm/InstanceNorm on channels-first input).
 */

/* The leaf loops take 8 values at a time with NF_LOAD8 / NF_STORE8 (the float16 conversions are
 * vector code, see common.h), then a scalar tail with the same operations. */

/* Scalar math: y[i] = (x[i] - m) * p + q      (stream: non-temporal stores, see common.h) */
NF_CLONES static void NF_S(nf_seg_apply)(const NF_T *restrict x, NF_T *restrict y, int64_t n,
                                         double m, double p, double q, int stream)
{
    int64_t i = 0;
    if (stream)
        for (; i < n && ((uintptr_t)(y + i) & 15); ++i) y[i] = NF_FROMD((NF_TOD(x[i]) - m) * p + q);
    const nf_v8d mv = nf_splat(m), pv = nf_splat(p), qv = nf_splat(q);
    for (; i + 8 <= n; i += 8) {
        const nf_v8d v = (NF_LOAD8(x + i) - mv) * pv + qv;
        if (stream) NF_STREAM8(y + i, v); else NF_STORE8(y + i, v);
    }
    for (; i < n; ++i) y[i] = NF_FROMD((NF_TOD(x[i]) - m) * p + q);
}

/* Scalar math: y[i] = (x[i] - m) * p + q + dy[i] * r */
NF_CLONES static void NF_S(nf_seg_apply_dy)(const NF_T *restrict x, const NF_T *restrict dy, NF_T *restrict y,
                                            int64_t n, double m, double p, double q, double r)
{
    const nf_v8d mv = nf_splat(m), pv = nf_splat(p), qv = nf_splat(q), rv = nf_splat(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) NF_STORE8(y + i, (NF_LOAD8(x + i) - mv) * pv + qv + NF_LOAD8(dy + i) * rv);
    for (; i < n; ++i) y[i] = NF_FROMD((NF_TOD(x[i]) - m) * p + q + NF_TOD(dy[i]) * r);
}

/* Scalar math: y[i] = (x[i] - m) * rstd * w[i] + b[i]   (w, b float64 vectors) */
NF_CLONES static void NF_S(nf_seg_apply_wb)(const NF_T *restrict x, NF_T *restrict y, int64_t n, double m,
                                            double rstd, const double *restrict w, const double *restrict b,
                                            int stream)
{
    int64_t i = 0;
    if (stream)
        for (; i < n && ((uintptr_t)(y + i) & 15); ++i) y[i] = NF_FROMD(((NF_TOD(x[i]) - m) * rstd) * w[i] + b[i]);
    const nf_v8d mv = nf_splat(m), rv = nf_splat(rstd);
    for (; i + 8 <= n; i += 8) {
        nf_v8d wv, bv;
        memcpy(&wv, w + i, 64); memcpy(&bv, b + i, 64);
        const nf_v8d v = ((NF_LOAD8(x + i) - mv) * rv) * wv + bv;
        if (stream) NF_STREAM8(y + i, v); else NF_STORE8(y + i, v);
    }
    for (; i < n; ++i) y[i] = NF_FROMD(((NF_TOD(x[i]) - m) * rstd) * w[i] + b[i]);
}

/* Scalar math: y[i] = ((x[i] - m) * rstd) * w[i] + b[i]   (w, b in the input type, either may be
 * NULL: w = 1, b = 0): the same operations as nf_seg_apply_wb on the float64 copies, so the fast
 * path of small calls (no parameter conversion) gives bitwise the same result. */
NF_CLONES static void NF_S(nf_seg_apply_wbT)(const NF_T *restrict x, NF_T *restrict y, int64_t n, double m,
                                             double rstd, const NF_T *restrict w, const NF_T *restrict b,
                                             int stream)
{
    int64_t i = 0;
    if (stream)
        for (; i < n && ((uintptr_t)(y + i) & 15); ++i)
            y[i] = NF_FROMD(((NF_TOD(x[i]) - m) * rstd) * (w ? NF_TOD(w[i]) : 1.0) + (b ? NF_TOD(b[i]) : 0.0));
    const nf_v8d mv = nf_splat(m), rv = nf_splat(rstd), one = nf_splat(1.0), zero = nf_splat(0.0);
    for (; i + 8 <= n; i += 8) {
        const nf_v8d v = ((NF_LOAD8(x + i) - mv) * rv) * (w ? NF_LOAD8(w + i) : one) + (b ? NF_LOAD8(b + i) : zero);
        if (stream) NF_STREAM8(y + i, v); else NF_STORE8(y + i, v);
    }
    for (; i < n; ++i)
        y[i] = NF_FROMD(((NF_TOD(x[i]) - m) * rstd) * (w ? NF_TOD(w[i]) : 1.0) + (b ? NF_TOD(b[i]) : 0.0));
}

/* Column mode: Scalar math: y[r][l] = (x[r][l] - m[l]) * p[l] + q[l] (+ dy[r][l] * s[l])
 * (stream: non-temporal stores when lanes come in whole vectors and y is 16-byte aligned) */
NF_CLONES static void NF_S(nf_col_apply)(const NF_T *restrict x, const NF_T *restrict dy, NF_T *restrict y,
                                         int64_t rows, int64_t L, const double *restrict m,
                                         const double *restrict p, const double *restrict q,
                                         const double *restrict s, int stream)
{
    stream = stream && !dy && L % 8 == 0 && ((uintptr_t)y & 15) == 0;
    for (int64_t r = 0; r < rows; ++r) {
        const NF_T *restrict xr = x + r * L;
        NF_T *restrict yr = y + r * L;
        int64_t l = 0;
        for (; l + 8 <= L; l += 8) {
            nf_v8d mv, pv, qv;
            memcpy(&mv, m + l, 64); memcpy(&pv, p + l, 64); memcpy(&qv, q + l, 64);
            nf_v8d v = (NF_LOAD8(xr + l) - mv) * pv + qv;
            if (dy) {
                nf_v8d sv;
                memcpy(&sv, s + l, 64);
                v += NF_LOAD8(dy + r * L + l) * sv;
            }
            if (stream) NF_STREAM8(yr + l, v); else NF_STORE8(yr + l, v);
        }
        if (dy) {
            const NF_T *restrict gr = dy + r * L;
            for (; l < L; ++l) yr[l] = NF_FROMD((NF_TOD(xr[l]) - m[l]) * p[l] + q[l] + NF_TOD(gr[l]) * s[l]);
        } else {
            for (; l < L; ++l) yr[l] = NF_FROMD((NF_TOD(xr[l]) - m[l]) * p[l] + q[l]);
        }
    }
}

typedef struct {
    const NF_T *x, *dy; NF_T *y;
    int64_t B, C, D, L, P, R, K;
    const double *m, *p, *q, *r;
    int stream;
    _Atomic int failed;
} NF_S(nf_apply_ctx);

/* Row mode units: one NF_CHUNK piece of a contiguous segment x[a][b][c][:]. */
static void NF_S(nf_apply_rows_range)(void *vc, int64_t u0, int64_t u1)
{
    const NF_S(nf_apply_ctx) *c = (const NF_S(nf_apply_ctx) *)vc;
    const int64_t B = c->B, C = c->C, D = c->D, P = c->P;
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t g = u / P, ch = g % C, a = g / (B * C), s = a * C + ch;
        const int64_t o = g * D + (u % P) * NF_CHUNK, n = g * D + D - o < NF_CHUNK ? g * D + D - o : NF_CHUNK;
        if (c->dy) NF_S(nf_seg_apply_dy)(c->x + o, c->dy + o, c->y + o, n, c->m[s], c->p[s], c->q[s], c->r[s]);
        else NF_S(nf_seg_apply)(c->x + o, c->y + o, n, c->m[s], c->p[s], c->q[s], c->stream);
    }
    if (c->stream) nf_stream_fence();   /* each thread orders its own streaming stores */
}

/* Column mode units: R rows of one sample a.  The claim expands the coefficients of its
 * sample to the L lanes (4*L float64: m, p, q, r per lane) in a buffer of its own, again
 * only when the sample changes: memory stays O(L) per thread, never O(A*L) (issue 12). */
static void NF_S(nf_apply_cols_range)(void *vc, int64_t u0, int64_t u1)
{
    NF_S(nf_apply_ctx) *c = (NF_S(nf_apply_ctx) *)vc;
    const int64_t L = c->L, B = c->B, C = c->C, D = c->D, R = c->R, K = c->K;
    double *cf = NULL;
    if (D > 1) {    /* D == 1: lane l is channel l, the coefficients are read in place */
        cf = (double *)malloc((size_t)(4 * L) * sizeof(double));
        if (!cf) { atomic_store(&c->failed, 1); return; }
    }
    int64_t have = -1;
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t a = u / K, b0 = (u % K) * R, b1 = b0 + R < B ? b0 + R : B, o = (a * B + b0) * L;
        if (!cf) {
            const int64_t s = a * C;
            NF_S(nf_col_apply)(c->x + o, c->dy ? c->dy + o : NULL, c->y + o, b1 - b0, L, c->m + s, c->p + s,
                               c->q + s, c->r ? c->r + s : NULL, c->stream);
            continue;
        }
        if (a != have) {
            for (int64_t l = 0; l < L; ++l) {
                const int64_t s = a * C + l / D;
                cf[l] = c->m[s]; cf[L + l] = c->p[s]; cf[2 * L + l] = c->q[s]; cf[3 * L + l] = c->r ? c->r[s] : 0.0;
            }
            have = a;
        }
        NF_S(nf_col_apply)(c->x + o, c->dy ? c->dy + o : NULL, c->y + o, b1 - b0, L, cf, cf + L, cf + 2 * L,
                           cf + 3 * L, c->stream);
    }
    if (c->stream) nf_stream_fence();
    free(cf);
}

/* y may alias x (in place).  dy/r may be NULL.  Coefficients: A*C float64 each.
 * Returns 0, or -1 when memory runs out. */
static int NF_S(nf_apply4d)(const NF_T *x, const NF_T *dy, NF_T *y, int64_t A, int64_t B, int64_t C, int64_t D,
                            const double *m, const double *p, const double *q, const double *r, int nt)
{
    const int64_t L = C * D, total = A * B * L;
    if (total == 0) return 0;
    const int nth = nf_threads(nt, total);
    NF_S(nf_apply_ctx) c = {x, dy, y, B, C, D, L, 0, 0, 0, m, p, q, r,
                            NF_HAVE_STREAM && y != x && total * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN, 0};
    if (D >= NF_ROW_MIN) {
        c.P = nf_cdiv(D, NF_CHUNK);
        const int64_t U = A * B * C * c.P;
        nf_parallel(nth, U, nf_grain(total / U, NF_GRAIN_VALUES), NF_S(nf_apply_rows_range), &c);
        return 0;
    }
    /* Column mode: blocks of R rows of one sample (coefficients expanded per claim). */
    c.R = NF_CHUNK / L; if (c.R < 1) c.R = 1;
    c.K = nf_cdiv(B, c.R);
    /* A claim expands 4*L coefficients (D > 1): at least 16 rows per claim keep that under a
     * quarter of the claim's work when rows are long (L > NF_CHUNK, R = 1). */
    int64_t grain = nf_grain(c.R * L, NF_GRAIN_VALUES);
    if (D > 1 && grain * c.R < 16) grain = nf_cdiv(16, c.R);
    nf_parallel(nth, A * c.K, grain, NF_S(nf_apply_cols_range), &c);
    return atomic_load(&c.failed) ? -1 : 0;
}

/* Fused rows: for each row i of N values, statistics then normalization.
 * Affine: w/b float64 of length period * (N / seg); the row i uses the block
 * (i % period) and value j uses entry j / seg of it (seg = 1: LayerNorm; seg = HxW:
 * GroupNorm / InstanceNorm on channels-first input).  w == NULL: no affine.
 * mean/rstd: M float64 each (mean = 0 for rms). */
typedef struct {
    const NF_T *x; NF_T *y; int64_t N, seg, nseg, period;
    const double *w, *b; double eps; int rms, stream; double *mean, *rstd;
    const NF_T *wT, *bT; int affineT;     /* affine in the input type (fast path) */
    int f32; const float *wf, *bf;        /* float32-width normalization (apply_f32.h), its affine */
} NF_S(nf_rows_ctx);

static void NF_S(nf_rows_range)(void *vc, int64_t i0, int64_t i1)
{
    const NF_S(nf_rows_ctx) *c = (const NF_S(nf_rows_ctx) *)vc;
    const int64_t N = c->N, seg = c->seg, nseg = c->nseg, period = c->period;
    for (int64_t i = i0; i < i1; ++i) {
        const NF_T *xr = c->x + i * N;
        NF_T *yr = c->y + i * N;
        nf_mom mo = NF_S(nf_row_moments)(xr, N, c->rms);
        double var = N > 0 ? mo.m2 / (double)N : NAN;
        double rs = 1.0 / sqrt(var + c->eps);
        c->mean[i] = mo.mean; c->rstd[i] = rs;
        if (c->f32) nf_seg_apply_f32w((const float *)xr, (float *)yr, N, mo.mean, rs, c->wf, c->bf, c->stream);
        else if (c->affineT) NF_S(nf_seg_apply_wbT)(xr, yr, N, mo.mean, rs, c->wT, c->bT, c->stream);
        else if (!c->w) NF_S(nf_seg_apply)(xr, yr, N, mo.mean, rs, 0.0, c->stream);
        else if (seg == 1)
            NF_S(nf_seg_apply_wb)(xr, yr, N, mo.mean, rs, c->w + (i % period) * N, c->b + (i % period) * N,
                                  c->stream);
        else {
            const double *wi = c->w + (i % period) * nseg, *bi = c->b + (i % period) * nseg;
            for (int64_t j = 0; j < nseg; ++j)
                NF_S(nf_seg_apply)(xr + j * seg, yr + j * seg, seg, mo.mean, rs * wi[j], bi[j], c->stream);
        }
    }
    if (c->stream) nf_stream_fence();
}

static int NF_S(nf_rows_forward)(const NF_T *x, NF_T *y, int64_t M, int64_t N, const double *w, const double *b,
                                 int64_t seg, int64_t period, double eps, int rms, double *mean, double *rstd,
                                 int nt)
{
    if (M == 0) return 0;
    NF_S(nf_rows_ctx) c = {x, y, N, seg, seg > 0 ? N / seg : 0, period, w, b, eps, rms,
                           NF_HAVE_STREAM && y != x && M * N * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN, mean, rstd,
                           NULL, NULL, 0, 0, NULL, NULL};
    /* float32-width normalization (opt-in) for LayerNorm / RMSNorm rows: the float64 affine
     * (copies of the caller's float32 weights) converted back to float32, exactly */
    float *wbf = NULL;
    if (nf_float32_high && sizeof(NF_T) == 4 && seg == 1 && period == 1) {
        if (w && !(wbf = (float *)malloc((size_t)(2 * N) * sizeof(float)))) return -1;
        for (int64_t j = 0; w && j < N; ++j) { wbf[j] = (float)w[j]; wbf[N + j] = b ? (float)b[j] : 0.0f; }
        c.f32 = 1; c.wf = wbf; c.bf = wbf ? wbf + N : NULL;
    }
    nf_parallel(nf_threads(nt, M * N), M, nf_grain(N, NF_GRAIN_VALUES), NF_S(nf_rows_range), &c);
    free(wbf);
    return 0;
}

/* LayerNorm / RMSNorm rows with weight / bias (N values each, either may be NULL) in the input
 * type: the fast path of small calls, bitwise equal to nf_rows_forward on float64 copies. */
static int NF_S(nf_rows_forward_T)(const NF_T *x, NF_T *y, int64_t M, int64_t N, const NF_T *w, const NF_T *b,
                                   double eps, int rms, double *mean, double *rstd, int nt)
{
    if (M == 0) return 0;
    NF_S(nf_rows_ctx) c = {x, y, N, 1, N, 1, NULL, NULL, eps, rms,
                           NF_HAVE_STREAM && y != x && M * N * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN, mean, rstd,
                           w, b, w || b, 0, NULL, NULL};
    double *wb = NULL;
    if (nf_float32_high && sizeof(NF_T) == 4) {          /* float32-width normalization (opt-in) */
        c.f32 = 1; c.wf = (const float *)w; c.bf = (const float *)b;
    }
    /* Several rows: the affine converted to float64 once (N conversions) instead of in every row's
     * loop (2 of its ~8 vector operations per 8 values); the same values, so the same results. */
    else if ((w || b) && M > 1 && (wb = (double *)malloc((size_t)(2 * N) * sizeof(double)))) {
        for (int64_t j = 0; j < N; ++j) {
            wb[j] = w ? NF_TOD(w[j]) : 1.0;
            wb[N + j] = b ? NF_TOD(b[j]) : 0.0;
        }
        c.w = wb; c.b = wb + N; c.affineT = 0;
    }
    nf_parallel(nf_threads(nt, M * N), M, nf_grain(N, NF_GRAIN_VALUES), NF_S(nf_rows_range), &c);
    free(wb);
    return 0;
}

/* Scalar math: h[i] = (T)(x[i] + r[i])  (rounded to the input type, as the unfused add: the float64
 * sum of two float32 or float16 values rounds to the same value as their sum in the type) */
NF_CLONES static void NF_S(nf_seg_add)(const NF_T *x, const NF_T *r, NF_T *h, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {        /* x and r read ahead as the row sums do (NF_ROW_PREFETCH) */
        NF_ROW_PREFETCH(x + i); NF_ROW_PREFETCH(r + i);
        NF_STORE8(h + i, NF_LOAD8(x + i) + NF_LOAD8(r + i));
        NF_STORE8(h + i + 8, NF_LOAD8(x + i + 8) + NF_LOAD8(r + i + 8));
    }
    for (; i + 8 <= n; i += 8) NF_STORE8(h + i, NF_LOAD8(x + i) + NF_LOAD8(r + i));
    for (; i < n; ++i) h[i] = NF_FROMD(NF_TOD(x[i]) + NF_TOD(r[i]));
}

/* Fused residual add + row normalization (transformer blocks):
 *   h = x + residual (stored), y = norm(h) with per-element affine (w/b float64 (N,) or NULL).
 * The row of h is built in a buffer of the claim (in L1/L2), its statistics and y are computed
 * from there and h is stored once: one read of x and residual, one write of y and h, all
 * four streaming for large inputs (the traffic of a copy of the same bytes).
 * h may alias residual or x, y may alias x or residual (row by row). */
typedef struct {
    const NF_T *x, *res; NF_T *h, *y; int64_t N;
    const double *w, *b; double eps; int rms, stream; double *mean, *rstd;
    _Atomic int failed;
} NF_S(nf_add_ctx);

static void NF_S(nf_add_range)(void *vc, int64_t i0, int64_t i1)
{
    NF_S(nf_add_ctx) *c = (NF_S(nf_add_ctx) *)vc;
    const int64_t N = c->N;
    NF_T *tmp = (NF_T *)malloc((size_t)(N > 0 ? N : 1) * sizeof(NF_T) + 64);   /* this claim's row buffer */
    if (!tmp) { atomic_store(&c->failed, 1); return; }
    NF_T *t = (NF_T *)(((uintptr_t)tmp + 63) & ~(uintptr_t)63);
    for (int64_t i = i0; i < i1; ++i) {
        NF_S(nf_seg_add)(c->x + i * N, c->res + i * N, t, N);
        nf_mom mo = NF_S(nf_row_moments)(t, N, c->rms);
        double var = N > 0 ? mo.m2 / (double)N : NAN;
        double rs = 1.0 / sqrt(var + c->eps);
        c->mean[i] = mo.mean; c->rstd[i] = rs;
        if (c->w) NF_S(nf_seg_apply_wb)(t, c->y + i * N, N, mo.mean, rs, c->w, c->b, c->stream);
        else NF_S(nf_seg_apply)(t, c->y + i * N, N, mo.mean, rs, 0.0, c->stream);
        nf_copy_bytes(c->h + i * N, t, N * (int64_t)sizeof(NF_T), c->stream);
    }
    if (c->stream) nf_stream_fence();
    free(tmp);
}

static int NF_S(nf_rows_add_forward)(const NF_T *x, const NF_T *res, NF_T *h, NF_T *y, int64_t M, int64_t N,
                                     const double *w, const double *b, double eps, int rms, double *mean,
                                     double *rstd, int nt)
{
    if (M == 0) return 0;
    NF_S(nf_add_ctx) c = {x, res, h, y, N, w, b, eps, rms,
                          NF_HAVE_STREAM && M * N * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN, mean, rstd, 0};
    nf_parallel(nf_threads(nt, M * N), M, nf_grain(N, NF_GRAIN_VALUES), NF_S(nf_add_range), &c);
    return atomic_load(&c.failed) ? -1 : 0;
}

/* Per-sample fused channels-last GroupNorm / InstanceNorm: x[A][B][L] with L = G*D lanes,
 * statistics per (a, g) over the sample's B rows and the group's D lanes, then the sample is
 * normalized while it is still in cache: one read from memory instead of two.  The statistics
 * use the column-mode chunks and merges of nf_reduce4d (nf_col_unit, k-way merge over chunks);
 * one thread owns a sample, so results do not depend on the thread count.
 * w/b: float64 per lane (L) or NULL.  mean/rstd: A*G float64.  Needs A*B*L > 0. */
typedef struct {
    const NF_T *x; NF_T *y; int64_t B, G, D, L, R, K;
    const double *w, *b; double eps; int stream; double *mean, *rstd;
    _Atomic int failed;
} NF_S(nf_samples_ctx);

static void NF_S(nf_samples_range)(void *vc, int64_t a0, int64_t a1)
{
    NF_S(nf_samples_ctx) *c = (NF_S(nf_samples_ctx) *)vc;
    const int64_t B = c->B, G = c->G, D = c->D, L = c->L, R = c->R, K = c->K;
    double *buf = (double *)malloc((size_t)(6 * L) * sizeof(double) + (size_t)(L + G * K) * sizeof(nf_mom));
    if (!buf) { atomic_store(&c->failed, 1); return; }
    double *mv = buf + 3 * L, *pv = buf + 4 * L, *qv = buf + 5 * L;
    nf_mom *part = (nf_mom *)(buf + 6 * L) + L;
    for (int64_t a = a0; a < a1; ++a) {
        const NF_T *X = c->x + a * B * L;
        for (int64_t kk = 0; kk < K; ++kk) {
            const int64_t b0 = kk * R, b1 = b0 + R < B ? b0 + R : B;
            NF_S(nf_col_unit)(X + b0 * L, NULL, NULL, b1 - b0, G, D, 0, buf, part + kk, K);
        }
        for (int64_t g = 0; g < G; ++g) {
            const nf_mom r = nf_mom_merge_k(part + g * K, K, 1);
            const double rs = 1.0 / sqrt(r.m2 / r.n + c->eps);
            c->mean[a * G + g] = r.mean;
            c->rstd[a * G + g] = rs;
            for (int64_t l = g * D; l < g * D + D; ++l) {
                mv[l] = r.mean;
                pv[l] = c->w ? rs * c->w[l] : rs;
                qv[l] = c->b ? c->b[l] : 0.0;
            }
        }
        NF_S(nf_col_apply)(X, NULL, c->y + a * B * L, B, L, mv, pv, qv, NULL, c->stream);
    }
    if (c->stream) nf_stream_fence();
    free(buf);
}

/* (one sample per unit: a sample's statistics are computed by one thread, in chunk order) */
static int NF_S(nf_samples_forward)(const NF_T *x, NF_T *y, int64_t A, int64_t B, int64_t G, int64_t D,
                                    const double *w, const double *b, double eps, double *mean, double *rstd,
                                    int nt)
{
    const int64_t L = G * D, R = nf_col_rows(L);
    NF_S(nf_samples_ctx) c = {x, y, B, G, D, L, R, nf_cdiv(B, R), w, b, eps,
                              NF_HAVE_STREAM && y != x && A * B * L * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN,
                              mean, rstd, 0};
    nf_parallel(nf_threads(nt, A * B * L), A, 1, NF_S(nf_samples_range), &c);
    return atomic_load(&c.failed) ? -1 : 0;
}
