/* Reductions over the 4-d form x[A][B][C][D] -> one result per (a, c).
 * Included by moments.h once per element type with NF_T (float or double)
 * and NF_S(name) (adds the type suffix).
 *
 * Row mode (D >= NF_ROW_MIN): a unit is a run of contiguous segments x[a][b][c][:]
 * (or a NF_CHUNK piece of one long segment).  Column mode (D small): a unit is a
 * block of rows x[a][b0:b1] of L = C*D lanes, accumulated lane by lane.
 * Units write partials to a buffer; partials are merged per (a, c) in a fixed order.
 */

/* The row sums read NF_PF_BYTES ahead: a row of a few KB ends about when the hardware prefetcher
 * has trained on it, so without this each row streams from memory at about half the bandwidth.
 * Measured (2-core AVX-512 VM, float32, medians): moments((16384, 1024), axis=-1), 1 thread,
 * 5.0 -> 2.5 ms; layer_norm (16384, 1024) out=, 2 threads, 4.7 -> 3.1 ms (a copy of the same
 * bytes: 3.1 ms); in-cache rows unchanged within noise.  A prefetch past the end never faults. */
#ifndef NF_ROW_PREFETCH
#define NF_PF_BYTES 4096
#define NF_ROW_PREFETCH(p) do { const char *pp_ = (const char *)(p) + NF_PF_BYTES; __builtin_prefetch(pp_); \
        if (sizeof(NF_T) == 8) __builtin_prefetch(pp_ + 64); } while (0)
#endif

/* Scalar math: d = x[i] - k; s1 += d; s2 += d * d   (lane i % NF_LANES) */
NF_CLONES static void NF_S(nf_seg_sums)(const NF_T *restrict x, int64_t n, double k, double *restrict acc)
{
    nf_v8d a0, a1, b0, b1, kv = nf_splat(k);
    memcpy(&a0, acc, 64); memcpy(&a1, acc + 8, 64); memcpy(&b0, acc + 16, 64); memcpy(&b1, acc + 24, 64);
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES) {
        NF_ROW_PREFETCH(x + i);
        nf_v8d d0 = NF_LOAD8(x + i) - kv, d1 = NF_LOAD8(x + i + 8) - kv;
        a0 += d0; a1 += d1; b0 += d0 * d0; b1 += d1 * d1;
    }
    memcpy(acc, &a0, 64); memcpy(acc + 8, &a1, 64); memcpy(acc + 16, &b0, 64); memcpy(acc + 24, &b1, 64);
    for (int j = 0; i + j < n; ++j) {
        double d = (double)x[i + j] - k;
        acc[j] += d; acc[NF_LANES + j] += d * d;
    }
}

/* RMSNorm's sums: s2 += x * x only (lane i % NF_LANES).  Bitwise the s2 of nf_seg_sums with
 * k = 0 (x - 0 == x), without the s1 that RMSNorm never reads: 6 instead of 10 vector operations
 * per 16 values. */
NF_CLONES static void NF_S(nf_seg_squares)(const NF_T *restrict x, int64_t n, double *restrict acc)
{
    nf_v8d b0, b1;
    memcpy(&b0, acc + NF_LANES, 64); memcpy(&b1, acc + NF_LANES + 8, 64);
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES) {
        NF_ROW_PREFETCH(x + i);
        nf_v8d d0 = NF_LOAD8(x + i), d1 = NF_LOAD8(x + i + 8);
        b0 += d0 * d0; b1 += d1 * d1;
    }
    memcpy(acc + NF_LANES, &b0, 64); memcpy(acc + NF_LANES + 8, &b1, 64);
    for (int j = 0; i + j < n; ++j) {
        double d = (double)x[i + j];
        acc[NF_LANES + j] += d * d;
    }
}

/* Scalar math: g = dy[i]; s1 += g; s2 += g * (x[i] - m)   (lane i % NF_LANES) */
NF_CLONES static void NF_S(nf_seg_dsums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t n, double m,
                                         double *restrict acc)
{
    nf_v8d a0, a1, b0, b1, mv = nf_splat(m);
    memcpy(&a0, acc, 64); memcpy(&a1, acc + 8, 64); memcpy(&b0, acc + 16, 64); memcpy(&b1, acc + 24, 64);
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES) {
        NF_ROW_PREFETCH(x + i); NF_ROW_PREFETCH(dy + i);
        nf_v8d g0 = NF_LOAD8(dy + i), g1 = NF_LOAD8(dy + i + 8);
        a0 += g0; a1 += g1;
        b0 += g0 * (NF_LOAD8(x + i) - mv); b1 += g1 * (NF_LOAD8(x + i + 8) - mv);
    }
    memcpy(acc, &a0, 64); memcpy(acc + 8, &a1, 64); memcpy(acc + 16, &b0, 64); memcpy(acc + 24, &b1, 64);
    for (int j = 0; i + j < n; ++j) {
        double g = (double)dy[i + j];
        acc[j] += g; acc[NF_LANES + j] += g * ((double)x[i + j] - m);
    }
}

/* Column mode, moments.  Scalar math per lane l over rows r (in order):
 *   d = x[r][l] - k[l]; s1[l] += d; s2[l] += d * d      (s1, s2 start at 0)
 * Tiled: blocks of NF_COL_TILE rows (contiguous, in L1) are walked lane block by lane
 * block (16 lanes in registers), so memory is read in order. */
#ifndef NF_COL_TILE
#define NF_COL_TILE 8
#endif
NF_CLONES static void NF_S(nf_col_sums)(const NF_T *restrict x, int64_t rows, int64_t L, const double *restrict k,
                                        double *restrict s1, double *restrict s2)
{
    memset(s1, 0, (size_t)L * sizeof(double));
    memset(s2, 0, (size_t)L * sizeof(double));
    for (int64_t r0 = 0; r0 < rows; r0 += NF_COL_TILE) {
        const int64_t r1 = r0 + NF_COL_TILE < rows ? r0 + NF_COL_TILE : rows;
        /* the next tile is contiguous: prefetch it line by line while this one is summed, a share
         * per lane block (one burst per tile overflows the miss queue when the rows are long) */
        const int64_t r2 = r1 + NF_COL_TILE < rows ? r1 + NF_COL_TILE : rows;
        const char *pf = (const char *)(x + r1 * L);
        const int64_t pbytes = (r2 - r1) * L * (int64_t)sizeof(NF_T);
        int64_t pdone = 0;
        int64_t l = 0;
        for (; l + 16 <= L; l += 16) {
            for (const int64_t pend = pbytes * (l + 16) / L; pdone < pend; pdone += 64)
                __builtin_prefetch(pf + pdone);
            nf_lanes16 v = nf_lanes16_load(k + l, s1 + l, s2 + l);
            for (int64_t r = r0; r < r1; ++r) {
                nf_v8d d0 = NF_LOAD8(x + r * L + l) - v.c0, d1 = NF_LOAD8(x + r * L + l + 8) - v.c1;
                v.a0 += d0; v.a1 += d1; v.b0 += d0 * d0; v.b1 += d1 * d1;
            }
            nf_lanes16_store(&v, s1 + l, s2 + l);
        }
        for (; pdone < pbytes; pdone += 64)
            __builtin_prefetch(pf + pdone);
        for (; l < L; ++l)
            for (int64_t r = r0; r < r1; ++r) {
                double d = (double)x[r * L + l] - k[l];
                s1[l] += d; s2[l] += d * d;
            }
    }
}

/* Column mode, backward sums.  Scalar math: s1[l] += dy; s2[l] += dy * (x - m[l])  (same tiling) */
NF_CLONES static void NF_S(nf_col_dsums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t rows, int64_t L,
                                         const double *restrict m, double *restrict s1, double *restrict s2)
{
    memset(s1, 0, (size_t)L * sizeof(double));
    memset(s2, 0, (size_t)L * sizeof(double));
    for (int64_t r0 = 0; r0 < rows; r0 += NF_COL_TILE) {
        const int64_t r1 = r0 + NF_COL_TILE < rows ? r0 + NF_COL_TILE : rows;
        const int64_t r2 = r1 + NF_COL_TILE < rows ? r1 + NF_COL_TILE : rows;
        /* the next tile of x and dy prefetched a share per lane block (see nf_col_sums) */
        const char *px = (const char *)(x + r1 * L), *pg = (const char *)(dy + r1 * L);
        const int64_t pbytes = (r2 - r1) * L * (int64_t)sizeof(NF_T);
        int64_t pdone = 0;
        int64_t l = 0;
        for (; l + 16 <= L; l += 16) {
            for (const int64_t pend = pbytes * (l + 16) / L; pdone < pend; pdone += 64) {
                __builtin_prefetch(px + pdone);
                __builtin_prefetch(pg + pdone);
            }
            nf_lanes16 v = nf_lanes16_load(m + l, s1 + l, s2 + l);
            for (int64_t r = r0; r < r1; ++r) {
                nf_v8d g0 = NF_LOAD8(dy + r * L + l), g1 = NF_LOAD8(dy + r * L + l + 8);
                v.a0 += g0; v.a1 += g1;
                v.b0 += g0 * (NF_LOAD8(x + r * L + l) - v.c0); v.b1 += g1 * (NF_LOAD8(x + r * L + l + 8) - v.c1);
            }
            nf_lanes16_store(&v, s1 + l, s2 + l);
        }
        for (; pdone < pbytes; pdone += 64) {
            __builtin_prefetch(px + pdone);
            __builtin_prefetch(pg + pdone);
        }
        for (; l < L; ++l)
            for (int64_t r = r0; r < r1; ++r) {
                double g = (double)dy[r * L + l];
                s1[l] += g; s2[l] += g * ((double)x[r * L + l] - m[l]);
            }
    }
}

/* Moments of one row of n contiguous values, cut in NF_CHUNK pieces merged in order with
 * the k-way merge: the same chunks and merge as nf_reduce4d's row mode (B = 1), so the
 * fused row kernels and moments() agree bitwise. */
static nf_mom NF_S(nf_row_moments)(const NF_T *x, int64_t n, int rms)
{
    nf_mom local[64], *p = local;
    const int64_t P = nf_cdiv(n, NF_CHUNK);
    if (P > 64 && !(p = (nf_mom *)malloc((size_t)P * sizeof(nf_mom)))) {
        nf_mom bad = {(double)n, NAN, NAN};   /* out of memory: poison rather than crash */
        return bad;
    }
    for (int64_t j = 0; j < P; ++j) {
        const int64_t o = j * NF_CHUNK, len = n - o < NF_CHUNK ? n - o : NF_CHUNK;
        double acc[2 * NF_LANES] = {0};
        double k = rms ? 0.0 : nf_shift((double)x[o]);
        if (rms) NF_S(nf_seg_squares)(x + o, len, acc);
        else NF_S(nf_seg_sums)(x + o, len, k, acc);
        p[j] = nf_lanes_finish(acc, acc + NF_LANES, (double)len, k, rms);
    }
    nf_mom r = P == 1 ? p[0] : nf_mom_merge_k(p, P, 1);
    if (p != local) free(p);
    return r;
}

/* One column-mode unit: `rows` rows of L = C*D lanes at X (and G for kind 2, with m the
 * per-c values of the rows' a) -> one partial per c, written to part[c * pstride]: lane partials
 * (shift = the unit's first row) combined over d with the k-way merge (kind 2: plain sums).
 * buf: scratch of 3*L doubles + L nf_mom. */
static void NF_S(nf_col_unit)(const NF_T *X, const NF_T *G, const double *m, int64_t rows, int64_t C, int64_t D,
                              int kind, double *buf, nf_mom *part, int64_t pstride)
{
    const int64_t L = C * D;
    const int rms = (kind == 1);
    double *k = buf, *s1 = buf + L, *s2 = buf + 2 * L;
    nf_mom *pl = (nf_mom *)(buf + 3 * L);
    const double nr = (double)rows;
    if (kind == 2) {
        for (int64_t l = 0; l < L; ++l) k[l] = m[l / D];
        NF_S(nf_col_dsums)(X, G, rows, L, k, s1, s2);
        for (int64_t c = 0; c < C; ++c) {
            double a1 = 0.0, a2 = 0.0;
            for (int64_t d = 0; d < D; ++d) { a1 += s1[c * D + d]; a2 += s2[c * D + d]; }
            nf_mom *pu = part + c * pstride;
            pu->n = nr * (double)D; pu->mean = a1; pu->m2 = a2;
        }
        return;
    }
    for (int64_t l = 0; l < L; ++l) k[l] = rms ? 0.0 : nf_shift((double)X[l]);
    NF_S(nf_col_sums)(X, rows, L, k, s1, s2);
    for (int64_t l = 0; l < L; ++l) {
        pl[l].n = nr;
        if (rms) { pl[l].mean = 0.0; pl[l].m2 = s2[l]; }
        else {
            pl[l].mean = k[l] + s1[l] / nr;
            double m2 = s2[l] - s1[l] * (s1[l] / nr);
            pl[l].m2 = m2 < 0 ? 0.0 : m2;
        }
    }
    for (int64_t c = 0; c < C; ++c)
        part[c * pstride] = D == 1 ? pl[c] : nf_mom_merge_k(pl + c * D, D, 1);
}

typedef struct {
    const NF_T *x, *dy; const double *m;
    int64_t B, C, D, L; int kind, row_mode; int64_t K, per_seg, g, R;
    nf_mom *part, *out;
    _Atomic int failed;
} NF_S(nf_reduce_ctx);

/* Units [u0, u1) of nf_reduce4d: each writes its own partial part[s][kk]. */
static void NF_S(nf_reduce_range)(void *vc, int64_t u0, int64_t u1)
{
    NF_S(nf_reduce_ctx) *c = (NF_S(nf_reduce_ctx) *)vc;
    const int64_t B = c->B, C = c->C, D = c->D, L = c->L, K = c->K, per_seg = c->per_seg, g = c->g, R = c->R;
    const int kind = c->kind, rms = (kind == NF_REDUCE_SQUARES);
    double *buf = NULL;
    if (!c->row_mode && !(buf = (double *)malloc((size_t)(3 * L) * sizeof(double) + (size_t)L * sizeof(nf_mom)))) {
        atomic_store(&c->failed, 1);
        return;
    }
    for (int64_t u = u0; u < u1; ++u) {
        if (c->row_mode) {
            const int64_t a = u / (K * C), kk = (u / C) % K, ch = u % C, s = a * C + ch;
            const NF_T *base = c->x + (a * B * C + ch) * D;
            const NF_T *gbase = c->dy ? c->dy + (a * B * C + ch) * D : NULL;
            double acc[2 * NF_LANES] = {0};
            int64_t b0, b1, off = 0, len = D;
            if (per_seg > 1) { b0 = kk / per_seg; b1 = b0 + 1; off = (kk % per_seg) * NF_CHUNK;
                               len = D - off < NF_CHUNK ? D - off : NF_CHUNK; }
            else { b0 = kk * g; b1 = b0 + g < B ? b0 + g : B; }
            double k = 0.0;
            if (kind == NF_REDUCE_MOMENTS) k = nf_shift((double)base[b0 * L + off]);
            for (int64_t b = b0; b < b1; ++b) {
                if (kind == NF_REDUCE_GRAD_SUMS) NF_S(nf_seg_dsums)(base + b * L + off, gbase + b * L + off, len, c->m[s], acc);
                else if (rms) NF_S(nf_seg_squares)(base + b * L + off, len, acc);
                else NF_S(nf_seg_sums)(base + b * L + off, len, k, acc);
            }
            const double n = (double)((b1 - b0) * len);
            nf_mom *pu = c->part + s * K + kk;
            if (kind == NF_REDUCE_GRAD_SUMS) {
                double a1 = 0.0, a2 = 0.0;
                for (int j = 0; j < NF_LANES; ++j) { a1 += acc[j]; a2 += acc[NF_LANES + j]; }
                pu->n = n; pu->mean = a1; pu->m2 = a2;
            } else {
                *pu = nf_lanes_finish(acc, acc + NF_LANES, n, k, rms);
            }
        } else {
            const int64_t a = u / K, kk = u % K, b0 = kk * R, b1 = b0 + R < B ? b0 + R : B;
            NF_S(nf_col_unit)(c->x + (a * B + b0) * L, c->dy ? c->dy + (a * B + b0) * L : NULL,
                              c->m ? c->m + a * C : NULL, b1 - b0, C, D, kind, buf, c->part + a * C * K + kk, K);
        }
    }
    free(buf);
}

/* Statistics [s0, s1): their K partials merged in chunk order. */
static void NF_S(nf_merge_range)(void *vc, int64_t s0, int64_t s1)
{
    const NF_S(nf_reduce_ctx) *c = (const NF_S(nf_reduce_ctx) *)vc;
    const int64_t K = c->K;
    for (int64_t s = s0; s < s1; ++s) {
        const nf_mom *p = c->part + s * K;
        if (c->kind == NF_REDUCE_GRAD_SUMS) {
            nf_mom r = {0.0, 0.0, 0.0};
            for (int64_t kk = 0; kk < K; ++kk) { r.n += p[kk].n; r.mean += p[kk].mean; r.m2 += p[kk].m2; }
            c->out[s] = r;
        } else {
            c->out[s] = nf_mom_merge_k(p, K, 1);
        }
    }
}

/* kind (moments.h): NF_REDUCE_MOMENTS (n, mean, M2), NF_REDUCE_SQUARES (n, 0, sum x^2),
 *       NF_REDUCE_GRAD_SUMS (n, sum dy, sum dy*(x - m[a,c])).
 * out has A*C entries.  Returns 0, or -1 when memory runs out.
 * Row mode: units enumerate (a, chunk kk, c) with c fastest: the memory order of x, so
 * consecutive units (and each thread's static share) read memory in order.  Column mode: a unit is a block of
 * rows of one a; its L = C*D lane partials are combined over d inside the unit.
 * Partials are stored per (stat, chunk) and merged per stat in chunk order. */
static int NF_S(nf_reduce4d)(const NF_T *x, const NF_T *dy, const double *m, int64_t A, int64_t B, int64_t C,
                             int64_t D, int kind, nf_mom *out, int nt)
{
    const int64_t S = A * C, L = C * D;
    if (S == 0) return 0;
    if (B * D == 0) {
        for (int64_t s = 0; s < S; ++s) { out[s].n = 0; out[s].mean = 0; out[s].m2 = 0; }
        return 0;
    }
    const int row_mode = (D >= NF_ROW_MIN) || (B == 1);
    int64_t K, per_seg = 1, g = 1, R = 1;
    if (row_mode) {
        if (D >= NF_CHUNK) { per_seg = nf_cdiv(D, NF_CHUNK); K = B * per_seg; }
        /* segments shorter than 1024 values are grouped g to a chunk (about NF_CHUNK values)
         * so that per-chunk partials and their merge stay small next to the data */
        else { g = D >= 1024 ? 1 : NF_CHUNK / D; K = nf_cdiv(B, g); }
    } else {
        R = nf_col_rows(L);
        K = nf_cdiv(B, R);
    }
    const int64_t U = row_mode ? S * K : A * K;
    nf_mom *part = (nf_mom *)malloc((size_t)(S * K) * sizeof(nf_mom));   /* [s][kk] */
    if (!part) return -1;
    NF_S(nf_reduce_ctx) c = {x, dy, m, B, C, D, L, kind, row_mode, K, per_seg, g, R, part, out, 0};
    nf_parallel(nf_threads(nt, A * B * L), U, nf_grain(A * B * L / U, NF_GRAIN_VALUES), NF_S(nf_reduce_range), &c);
    if (atomic_load(&c.failed)) { free(part); return -1; }

    /* Fixed-order merge over the chunks of each statistic. */
    nf_parallel(nf_threads(nt, S * K * 8), S, nf_grain(K, NF_GRAIN_VALUES / 8), NF_S(nf_merge_range), &c);
    free(part);
    return 0;
}
