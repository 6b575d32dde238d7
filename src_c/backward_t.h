/* Row-wise backward (LayerNorm, RMSNorm), included by backward.h once per type.
 *
 * With xh = (x - mean) * rstd, g = w * dy, per row of N values:
 *   s1 = sum(g), s2 = sum(g * xh)
 *   dx = rstd * (g - s1 / N - xh * s2 / N)       (RMSNorm: mean = 0, no s1 term)
 *   dw += dy * xh, db += dy                        (summed over rows)
 * One pass reads x and dy for s1, s2, a second pass over a tile of rows (still in
 * cache) writes dx and adds the tile to the dw/db partials.  dw/db partials are kept per block of rows,
 * the blocks fixed by the shape, and summed in block order: results do not
 * depend on the thread count and no atomics are used.
 */

/* First pass.  Scalar math: g = w * dy; s1 += g; s2 += g * (x - m); then s2 *= rstd
 * (16 lanes, merged in a fixed order into acc[0] = s1, acc[1] = s2 = sum(g * xh)) */
NF_CLONES static void NF_S(nf_row_bwd_sums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t n, double m,
                                            double rstd, const double *restrict w, double *restrict acc)
{
    double s1[NF_LANES], s2[NF_LANES];
    nf_v8d a0 = nf_splat(0.0), a1 = a0, b0 = a0, b1 = a0;
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES) {
        nf_v8d w0, w1;
        memcpy(&w0, w + i, 64); memcpy(&w1, w + i + 8, 64);
        const nf_v8d g0 = w0 * NF_LOAD8(dy + i), g1 = w1 * NF_LOAD8(dy + i + 8);
        a0 += g0; a1 += g1;
        b0 += g0 * (NF_LOAD8(x + i) - m); b1 += g1 * (NF_LOAD8(x + i + 8) - m);
    }
    memcpy(s1, &a0, 64); memcpy(s1 + 8, &a1, 64); memcpy(s2, &b0, 64); memcpy(s2 + 8, &b1, 64);
    for (int j = 0; i + j < n; ++j) {
        double g = w[i + j] * (double)dy[i + j];
        s1[j] += g; s2[j] += g * ((double)x[i + j] - m);
    }
    double a = 0.0, b = 0.0;
    for (int j = 0; j < NF_LANES; ++j) { a += s1[j]; b += s2[j]; }
    acc[0] = a; acc[1] = b * rstd;
}

/* Second pass over a tile of R <= NF_BWD_TILE consecutive rows (in cache after the sums):
 * Scalar math, per row r and column j, with xh = (x - m_r) * rstd_r:
 *   dx = rstd_r * (w * dy - c1_r - xh * c2_r)  [+ gh]      (gh: the fused residual gradient)
 *   dw[j] += dy * xh, db[j] += dy                           (rows in order)
 * Taking rows in tiles loads and stores the dw/db partials once per tile, not per row. */
#define NF_BWD_TILE 4
/* Columns [j, N) of a backward tile, scalar (the tiles' last N % 16 columns).
 * Scalar math: xh = (x - m) * rstd; dw += dy * xh; db += dy; dx = rstd * (w * dy - c1 - xh * c2) [+ gh] */
static inline void NF_S(nf_bwd_cols_scalar)(const NF_T *x, const NF_T *dy, const NF_T *gh, NF_T *dx, int64_t R,
                                            int64_t N, int64_t j, const double *mr, const double *rr,
                                            const double *c1, const double *c2, const double *w, double *dw,
                                            double *db)
{
    for (; j < N; ++j)
        for (int64_t r = 0; r < R; ++r) {
            const double d = (double)dy[r * N + j], xh = ((double)x[r * N + j] - mr[r]) * rr[r];
            if (dw) dw[j] += d * xh;
            if (db) db[j] += d;
            if (dx) {
                double v = rr[r] * (w[j] * d - c1[r] - xh * c2[r]);
                if (gh) v += (double)gh[r * N + j];
                dx[r * N + j] = (NF_T)v;
            }
        }
}

NF_CLONES static void NF_S(nf_rows_bwd_tile)(const NF_T *restrict x, const NF_T *restrict dy,
                                             const NF_T *restrict gh, NF_T *restrict dx, int64_t R, int64_t N,
                                             const double *mr, const double *rr, const double *c1,
                                             const double *c2, const double *restrict w, double *restrict dw,
                                             double *restrict db, int stream, int64_t P)
{
    /* Rows [R, R + P) after the tile (the next tile, not yet read) are prefetched line by line
     * while this tile is computed from cache: the memory stream keeps going during the arithmetic
     * instead of stalling at the start of every row's sums. */
    const char *px = (const char *)(x + R * N), *pdy = (const char *)(dy + R * N);
    const int64_t pbytes = P * N * (int64_t)sizeof(NF_T);
    int64_t pdone = 0;
    const int vstream = stream && dx && ((uintptr_t)dx & 15) == 0 && (N * (int64_t)sizeof(NF_T)) % 16 == 0;
    int64_t j = 0;
    /* 16 columns per step: a whole 64-byte line of float32 dx per row, so the streaming
     * stores of the R interleaved rows fill complete write-combining lines. */
    for (; j + 16 <= N; j += 16) {
        nf_v8d w0, w1, dw0 = nf_splat(0.0), dw1 = dw0, db0 = dw0, db1 = dw0;
        memcpy(&w0, w + j, 64); memcpy(&w1, w + j + 8, 64);
        if (dw) { memcpy(&dw0, dw + j, 64); memcpy(&dw1, dw + j + 8, 64); }
        if (db) { memcpy(&db0, db + j, 64); memcpy(&db1, db + j + 8, 64); }
        /* the same share of the next rows as this step's share of the tile */
        for (const int64_t pend = pbytes * (j + 16) / N; pdone < pend; pdone += 64) {
            __builtin_prefetch(px + pdone);
            __builtin_prefetch(pdy + pdone);
        }
        for (int64_t r = 0; r < R; ++r) {
            const NF_T *xr = x + r * N + j, *gr = dy + r * N + j;
            /* (vector op scalar: the scalar is broadcast once; see nf_rows_bwd_tile32) */
            const double rv = rr[r], mv = mr[r];
            const nf_v8d d0 = NF_LOAD8(gr), d1 = NF_LOAD8(gr + 8);
            const nf_v8d h0 = (NF_LOAD8(xr) - mv) * rv, h1 = (NF_LOAD8(xr + 8) - mv) * rv;
            dw0 += d0 * h0; dw1 += d1 * h1;
            db0 += d0; db1 += d1;
            if (dx) {
                const double c1v = c1[r], c2v = c2[r];
                nf_v8d v0 = rv * (w0 * d0 - c1v - h0 * c2v), v1 = rv * (w1 * d1 - c1v - h1 * c2v);
                if (gh) { v0 += NF_LOAD8(gh + r * N + j); v1 += NF_LOAD8(gh + r * N + j + 8); }
                NF_T *o = dx + r * N + j;
                if (vstream) { NF_STREAM8(o, v0); NF_STREAM8(o + 8, v1); }
                else { NF_STORE8(o, v0); NF_STORE8(o + 8, v1); }
            }
        }
        if (dw) { memcpy(dw + j, &dw0, 64); memcpy(dw + j + 8, &dw1, 64); }
        if (db) { memcpy(db + j, &db0, 64); memcpy(db + j + 8, &db1, 64); }
    }
    NF_S(nf_bwd_cols_scalar)(x, dy, gh, dx, R, N, j, mr, rr, c1, c2, w, dw, db);
}

#ifndef NF_V16F
#define NF_V16F
/* (vector op scalar broadcasts the scalar: one vbroadcastss or an embedded {1to16} operand, where
 * a 16-element initializer list compiles to 16 masked inserts in the target clones) */
typedef float nf_v16f __attribute__((vector_size(64)));
#endif

/* The tile pass at float32 SIMD width (element types narrower than double; float64 data keeps
 * nf_rows_bwd_tile).  Per row r, from its float64 coefficients split into float32 parts:
 *   m = mh + ml, c1 = c1h + c1l,  u = (x - mh) - ml,  xh = u * rstd
 *   dx = rstd * (w * dy - c1h - c1l) - xh * (rstd * c2)  [+ gh]
 *   dw[j] += dy * xh   (a tile's R rows summed in float32, then added to the float64 block partials:
 *                       the terms carry xh's float32 rounding anyway)
 *   db[j] += dy        (float64 throughout: the terms are exact, so db keeps float64 sums)
 * x - mh is exact whenever x is within a factor 2 of the mean (Sterbenz) and w * dy - c1h is one
 * fused rounding, so large offsets in x or dy do not cancel in float32 (mean 1e4 / std 0.1, grad_out
 * offset 1e3: tests/test_layer_norm.py, TestBackward).  The two row sums s1, s2 (c1, c2) stay float64 (first pass). */
typedef NF_T NF_S(nf_bwd_v16t) __attribute__((vector_size(16 * sizeof(NF_T))));
static inline nf_v16f NF_S(nf_bwd_load16)(const NF_T *p)
{
    NF_S(nf_bwd_v16t) t;
    memcpy(&t, p, sizeof t);
    return __builtin_convertvector(t, nf_v16f);
}
static inline void NF_S(nf_bwd_store16)(NF_T *p, nf_v16f v, int stream)
{
    NF_S(nf_bwd_v16t) t = __builtin_convertvector(v, NF_S(nf_bwd_v16t));
#if NF_HAVE_STREAM
    if (stream && sizeof(NF_T) == 4) {
        __m128 q[4];
        memcpy(q, &t, 64);
        _mm_stream_ps((float *)p, q[0]); _mm_stream_ps((float *)p + 4, q[1]);
        _mm_stream_ps((float *)p + 8, q[2]); _mm_stream_ps((float *)p + 12, q[3]);
        return;
    }
#endif
    (void)stream;
    memcpy(p, &t, sizeof t);
}

NF_CLONES static void NF_S(nf_rows_bwd_tile32)(const NF_T *restrict x, const NF_T *restrict dy,
                                               const NF_T *restrict gh, NF_T *restrict dx, int64_t R, int64_t N,
                                               const double *mr, const double *rr, const double *c1,
                                               const double *c2, const double *restrict w,
                                               const float *restrict wf, double *restrict dw,
                                               double *restrict db, int stream, int64_t P)
{
    const int vstream = stream && dx && sizeof(NF_T) == 4 && ((uintptr_t)dx & 15) == 0
                        && (N * (int64_t)sizeof(NF_T)) % 16 == 0;
    float mh[NF_BWD_TILE], ml[NF_BWD_TILE], rs[NF_BWD_TILE], c1h[NF_BWD_TILE], c1l[NF_BWD_TILE], k2[NF_BWD_TILE];
    for (int64_t r = 0; r < R; ++r) {
        mh[r] = (float)mr[r]; ml[r] = (float)(mr[r] - (double)mh[r]);
        c1h[r] = (float)c1[r]; c1l[r] = (float)(c1[r] - (double)c1h[r]);
        rs[r] = (float)rr[r]; k2[r] = (float)(rr[r] * c2[r]);
    }
    const char *px = (const char *)(x + R * N), *pdy = (const char *)(dy + R * N);
    const int64_t pbytes = P * N * (int64_t)sizeof(NF_T);
    int64_t pdone = 0, j = 0;
    for (; j + 16 <= N; j += 16) {
        for (const int64_t pend = pbytes * (j + 16) / N; pdone < pend; pdone += 64) {
            __builtin_prefetch(px + pdone);
            __builtin_prefetch(pdy + pdone);
        }
        nf_v16f wv, dwv = {0};
        nf_v8d db0 = nf_splat(0.0), db1 = db0;
        memcpy(&wv, wf + j, 64);
        for (int64_t r = 0; r < R; ++r) {
            const nf_v16f d = NF_S(nf_bwd_load16)(dy + r * N + j);
            const nf_v16f h = ((NF_S(nf_bwd_load16)(x + r * N + j) - mh[r]) - ml[r]) * rs[r];
            dwv += d * h;
            if (db) {
                nf_v8f dlo, dhi;
                memcpy(&dlo, &d, 32); memcpy(&dhi, (const char *)&d + 32, 32);
                db0 += nf_f2d8(dlo); db1 += nf_f2d8(dhi);
            }
            if (dx) {
                nf_v16f v = (wv * d - c1h[r] - c1l[r]) * rs[r] - h * k2[r];
                if (gh) v += NF_S(nf_bwd_load16)(gh + r * N + j);
                NF_S(nf_bwd_store16)(dx + r * N + j, v, vstream);
            }
        }
        if (dw || db) {
            nf_v8f lo, hi;
            nf_v8d a, b;
            if (dw) {
                memcpy(&lo, &dwv, 32); memcpy(&hi, (const char *)&dwv + 32, 32);
                memcpy(&a, dw + j, 64); memcpy(&b, dw + j + 8, 64);
                a += nf_f2d8(lo); b += nf_f2d8(hi);
                memcpy(dw + j, &a, 64); memcpy(dw + j + 8, &b, 64);
            }
            if (db) {
                memcpy(&a, db + j, 64); memcpy(&b, db + j + 8, 64);
                a += db0; b += db1;
                memcpy(db + j, &a, 64); memcpy(db + j + 8, &b, 64);
            }
        }
    }
    /* the last N % 16 columns: the float64 formula */
    NF_S(nf_bwd_cols_scalar)(x, dy, gh, dx, R, N, j, mr, rr, c1, c2, w, dw, db);
}

typedef struct {
    const NF_T *x, *dy, *gh; int64_t N, M, RB;
    const double *mean, *rstd, *w; NF_T *dx; double *pw, *pb, *dw, *db; int64_t NB;
    int stream; const float *wf;
} NF_S(nf_bwd_ctx);

/* Row blocks [b0, b1) (fixed by the shape): dx and the block's dw/db partials. */
static void NF_S(nf_bwd_range)(void *vc, int64_t b0, int64_t b1)
{
    const NF_S(nf_bwd_ctx) *c = (const NF_S(nf_bwd_ctx) *)vc;
    const int64_t N = c->N, M = c->M, RB = c->RB;
    const NF_T *x = c->x, *dy = c->dy;
    for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t i1 = (blk + 1) * RB < M ? (blk + 1) * RB : M;
        for (int64_t i0 = blk * RB; i0 < i1; i0 += NF_BWD_TILE) {
            const int64_t R = i1 - i0 < NF_BWD_TILE ? i1 - i0 : NF_BWD_TILE;
            double mr[NF_BWD_TILE], c1[NF_BWD_TILE], c2[NF_BWD_TILE];
            for (int64_t r = 0; r < R; ++r) {
                const int64_t i = i0 + r;
                double acc[2];
                mr[r] = c->mean ? c->mean[i] : 0.0;
                c1[r] = c2[r] = 0.0;
                if (c->dx) {
                    NF_S(nf_row_bwd_sums)(x + i * N, dy + i * N, N, mr[r], c->rstd[i], c->w, acc);
                    c1[r] = c->mean ? acc[0] / (double)N : 0.0;
                    c2[r] = acc[1] / (double)N;
                }
            }
            const int64_t P = i1 - i0 - R < NF_BWD_TILE ? i1 - i0 - R : NF_BWD_TILE;
            if (c->wf)
                NF_S(nf_rows_bwd_tile32)(x + i0 * N, dy + i0 * N, c->gh ? c->gh + i0 * N : NULL,
                                         c->dx ? c->dx + i0 * N : NULL, R, N, mr, c->rstd + i0, c1, c2, c->w, c->wf,
                                         c->pw ? c->pw + blk * N : NULL, c->pb ? c->pb + blk * N : NULL, c->stream,
                                         c->dx ? P : 0);
            else
                NF_S(nf_rows_bwd_tile)(x + i0 * N, dy + i0 * N, c->gh ? c->gh + i0 * N : NULL,
                                       c->dx ? c->dx + i0 * N : NULL, R, N, mr, c->rstd + i0, c1, c2, c->w,
                                       c->pw ? c->pw + blk * N : NULL, c->pb ? c->pb + blk * N : NULL, c->stream,
                                       c->dx ? P : 0);
        }
    }
    if (c->stream) nf_stream_fence();
}

/* Columns [j0, j1) of dw/db: the block partials summed in block order. */
static void NF_S(nf_bwd_sum_range)(void *vc, int64_t j0, int64_t j1)
{
    const NF_S(nf_bwd_ctx) *c = (const NF_S(nf_bwd_ctx) *)vc;
    for (int64_t blk = 0; blk < c->NB; ++blk) {      /* per column: blocks added in block order */
        if (c->pw) for (int64_t j = j0; j < j1; ++j) c->dw[j] += c->pw[blk * c->N + j];
        if (c->pb) for (int64_t j = j0; j < j1; ++j) c->db[j] += c->pb[blk * c->N + j];
    }
}

/* x, dy (gh: added to dx, or NULL): M x N.  mean (NULL for rms), rstd: M float64.  w: N float64 (ones when
 * the norm has no weight).  dx / dw / db may each be NULL (not wanted).
 * dw, db: N float64 outputs.  Returns 0, or -1 when memory runs out. */
static int NF_S(nf_rows_backward)(const NF_T *x, const NF_T *dy, const NF_T *gh, int64_t M, int64_t N,
                                  const double *mean,
                                  const double *rstd, const double *w, NF_T *dx, double *dw, double *db, int nt)
{
    if (N == 0) return 0;
    if (dw) memset(dw, 0, (size_t)N * sizeof(double));
    if (db) memset(db, 0, (size_t)N * sizeof(double));
    if (M == 0) return 0;
    /* Blocks of rows, fixed by the shape: at most 32 (the parallel units), each of at least
     * NF_GRAIN_VALUES values (a block's dw/db partials cost 2 N stores and 2 N adds in the final
     * sum: with a block per row, (16, 768) spent more time on them than on dx), and their
     * partials under ~64 MB. */
    int64_t NB = 32;
    if (NB > M) NB = M;
    int64_t cap = ((int64_t)1 << 22) / N;
    if (cap < 1) cap = 1;
    if (NB > cap) NB = cap;
    int64_t RB = nf_cdiv(M, NB);
    const int64_t rb_min = nf_cdiv(NF_GRAIN_VALUES, N);
    if (RB < rb_min) RB = rb_min < M ? rb_min : M;
    NB = nf_cdiv(M, RB);
    double *pw = NULL, *pb = NULL;
    float *wf = NULL;                      /* float32 weights: the float32-width tile pass */
    if (sizeof(NF_T) < sizeof(double)) {
        if (!(wf = (float *)malloc((size_t)N * sizeof(float)))) return -1;
        for (int64_t j = 0; j < N; ++j) wf[j] = (float)w[j];
    }
    if (dw && !(pw = (double *)calloc((size_t)(NB * N), sizeof(double)))) { free(wf); return -1; }
    if (db && !(pb = (double *)calloc((size_t)(NB * N), sizeof(double)))) { free(pw); free(wf); return -1; }
    NF_S(nf_bwd_ctx) c = {x, dy, gh, N, M, RB, mean, rstd, w, dx, pw, pb, dw, db, NB,
                          NF_HAVE_STREAM && dx && (const void *)dx != (const void *)x
                          && (const void *)dx != (const void *)dy
                          && (const void *)dx != (const void *)gh && M * N * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN, wf};
    nf_parallel(nf_threads(nt, M * N), NB, nf_grain(RB * N, NF_GRAIN_VALUES), NF_S(nf_bwd_range), &c);
    if (pw || pb) nf_parallel(nf_threads(nt, NB * N), N, nf_grain(NB, NF_GRAIN_VALUES), NF_S(nf_bwd_sum_range), &c);
    free(pw); free(pb); free(wf);
    return 0;
}
