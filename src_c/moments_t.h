/* Reductions over the 4-d form x[A][B][C][D] -> one result per (a, c).
 * Included by moments.h once per element type with NF_T (float or double)
 * and NF_S(name) (adds the type suffix).
 *
 * Row mode (D >= NF_ROW_MIN): a unit is a run of contiguous segments x[a][b][c][:]
 * (or a NF_CHUNK piece of one long segment).  Column mode (D small): a unit is a
 * block of rows x[a][b0:b1] of L = C*D lanes, accumulated lane by lane.
 * Units write partials to a buffer; partials are merged per (a, c) in a fixed order.
 */

/* Scalar math: d = x[i] - k; s1 += d; s2 += d * d   (lane i % NF_LANES) */
NF_CLONES static void NF_S(nf_seg_sums)(const NF_T *restrict x, int64_t n, double k, double *restrict acc)
{
    double s1[NF_LANES], s2[NF_LANES];
    for (int j = 0; j < NF_LANES; ++j) { s1[j] = acc[j]; s2[j] = acc[NF_LANES + j]; }
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES)
        for (int j = 0; j < NF_LANES; ++j) {
            double d = (double)x[i + j] - k;
            s1[j] += d; s2[j] += d * d;
        }
    for (int j = 0; i + j < n; ++j) {
        double d = (double)x[i + j] - k;
        s1[j] += d; s2[j] += d * d;
    }
    for (int j = 0; j < NF_LANES; ++j) { acc[j] = s1[j]; acc[NF_LANES + j] = s2[j]; }
}

/* Scalar math: g = dy[i]; s1 += g; s2 += g * (x[i] - m)   (lane i % NF_LANES) */
NF_CLONES static void NF_S(nf_seg_dsums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t n, double m,
                                         double *restrict acc)
{
    double s1[NF_LANES], s2[NF_LANES];
    for (int j = 0; j < NF_LANES; ++j) { s1[j] = acc[j]; s2[j] = acc[NF_LANES + j]; }
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES)
        for (int j = 0; j < NF_LANES; ++j) {
            double g = (double)dy[i + j];
            s1[j] += g; s2[j] += g * ((double)x[i + j] - m);
        }
    for (int j = 0; i + j < n; ++j) {
        double g = (double)dy[i + j];
        s1[j] += g; s2[j] += g * ((double)x[i + j] - m);
    }
    for (int j = 0; j < NF_LANES; ++j) { acc[j] = s1[j]; acc[NF_LANES + j] = s2[j]; }
}

/* Column mode, moments.  Scalar math per lane l over rows r:
 *   d = x[r][l] - k[l]; s1[l] += d; s2[l] += d * d */
NF_CLONES static void NF_S(nf_col_sums)(const NF_T *restrict x, int64_t rows, int64_t L, const double *restrict k,
                                        double *restrict s1, double *restrict s2)
{
    for (int64_t r = 0; r < rows; ++r) {
        const NF_T *restrict xr = x + r * L;
        for (int64_t l = 0; l < L; ++l) {
            double d = (double)xr[l] - k[l];
            s1[l] += d; s2[l] += d * d;
        }
    }
}

/* Column mode, backward sums.  Scalar math: s1[l] += dy; s2[l] += dy * (x - m[l]) */
NF_CLONES static void NF_S(nf_col_dsums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t rows, int64_t L,
                                         const double *restrict m, double *restrict s1, double *restrict s2)
{
    for (int64_t r = 0; r < rows; ++r) {
        const NF_T *restrict xr = x + r * L;
        const NF_T *restrict gr = dy + r * L;
        for (int64_t l = 0; l < L; ++l) {
            double g = (double)gr[l];
            s1[l] += g; s2[l] += g * ((double)xr[l] - m[l]);
        }
    }
}

/* Moments of one row of n contiguous values, cut in NF_CHUNK pieces merged in order.
 * Shared by the reductions and the fused row kernels, so both agree bitwise. */
static nf_mom NF_S(nf_row_moments)(const NF_T *x, int64_t n, int rms)
{
    nf_mom r = {0.0, 0.0, 0.0};
    for (int64_t p = 0; p < n; p += NF_CHUNK) {
        int64_t len = n - p < NF_CHUNK ? n - p : NF_CHUNK;
        double acc[2 * NF_LANES] = {0};
        double k = rms ? 0.0 : (double)x[p];
        NF_S(nf_seg_sums)(x + p, len, k, acc);
        nf_mom_merge(&r, nf_lanes_finish(acc, acc + NF_LANES, (double)len, k, rms));
    }
    return r;
}

/* kind: 0 = moments (n, mean, M2), 1 = rms moments (n, 0, sum x^2),
 *       2 = backward sums (n, sum dy, sum dy*(x - m[a,c])).
 * out has A*C entries.  Returns 0, or -1 when memory runs out. */
static int NF_S(nf_reduce4d)(const NF_T *x, const NF_T *dy, const double *m, int64_t A, int64_t B, int64_t C,
                             int64_t D, int kind, nf_mom *out, int nt)
{
    const int64_t S = A * C, L = C * D;
    const int rms = (kind == 1);
    if (S == 0) return 0;
    if (B * D == 0) {
        for (int64_t s = 0; s < S; ++s) { out[s].n = 0; out[s].mean = 0; out[s].m2 = 0; }
        return 0;
    }
    const int row_mode = (D >= NF_ROW_MIN) || (B == 1);
    int64_t K, per_seg = 1, g = 1, R = 1;
    if (row_mode) {
        if (D >= NF_CHUNK) { per_seg = nf_cdiv(D, NF_CHUNK); K = B * per_seg; }
        else { g = NF_CHUNK / D; if (g < 1) g = 1; K = nf_cdiv(B, g); }
    } else {
        R = NF_CHUNK / L; if (R < NF_MIN_ROWS) R = NF_MIN_ROWS;
        K = nf_cdiv(B, R);
    }
    const int64_t U = row_mode ? S * K : A * K;
    const int64_t per_unit = row_mode ? 1 : L;
    nf_mom *part = (nf_mom *)malloc((size_t)(U * per_unit) * sizeof(nf_mom));
    if (!part) return -1;
    int failed = 0;
    const int nth = nf_threads(nt, A * B * L);

    #pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1)
    for (int64_t u = 0; u < U; ++u) {
        if (row_mode) {
            const int64_t s = u / K, kk = u % K, a = s / C, c = s % C;
            const NF_T *base = x + (a * B * C + c) * D;
            const NF_T *gbase = dy ? dy + (a * B * C + c) * D : NULL;
            double acc[2 * NF_LANES] = {0};
            int64_t b0, b1, off = 0, len = D;
            if (per_seg > 1) { b0 = kk / per_seg; b1 = b0 + 1; off = (kk % per_seg) * NF_CHUNK;
                               len = D - off < NF_CHUNK ? D - off : NF_CHUNK; }
            else { b0 = kk * g; b1 = b0 + g < B ? b0 + g : B; }
            double k = 0.0;
            if (kind == 0) k = (double)base[b0 * L + off];
            for (int64_t b = b0; b < b1; ++b) {
                if (kind == 2) NF_S(nf_seg_dsums)(base + b * L + off, gbase + b * L + off, len, m[s], acc);
                else NF_S(nf_seg_sums)(base + b * L + off, len, k, acc);
            }
            double n = (double)((b1 - b0) * len);
            if (kind == 2) {
                double a1 = 0.0, a2 = 0.0;
                for (int j = 0; j < NF_LANES; ++j) { a1 += acc[j]; a2 += acc[NF_LANES + j]; }
                part[u].n = n; part[u].mean = a1; part[u].m2 = a2;
            } else {
                part[u] = nf_lanes_finish(acc, acc + NF_LANES, n, k, rms);
            }
        } else {
            const int64_t a = u / K, kk = u % K, b0 = kk * R, b1 = b0 + R < B ? b0 + R : B;
            const NF_T *X = x + (a * B + b0) * L;
            double *buf = (double *)calloc((size_t)(3 * L), sizeof(double));
            if (!buf) { failed = 1; continue; }
            double *k = buf, *s1 = buf + L, *s2 = buf + 2 * L;
            nf_mom *pu = part + u * L;
            const double rows = (double)(b1 - b0);
            if (kind == 2) {
                for (int64_t l = 0; l < L; ++l) k[l] = m[a * C + l / D];
                NF_S(nf_col_dsums)(X, dy + (a * B + b0) * L, b1 - b0, L, k, s1, s2);
                for (int64_t l = 0; l < L; ++l) { pu[l].n = rows; pu[l].mean = s1[l]; pu[l].m2 = s2[l]; }
            } else {
                if (kind == 0) for (int64_t l = 0; l < L; ++l) k[l] = (double)X[l];
                NF_S(nf_col_sums)(X, b1 - b0, L, k, s1, s2);
                for (int64_t l = 0; l < L; ++l) {
                    pu[l].n = rows;
                    if (rms) { pu[l].mean = 0.0; pu[l].m2 = s2[l]; }
                    else {
                        pu[l].mean = k[l] + s1[l] / rows;
                        double m2 = s2[l] - s1[l] * (s1[l] / rows);
                        pu[l].m2 = m2 < 0 ? 0.0 : m2;
                    }
                }
            }
            free(buf);
        }
    }
    if (failed) { free(part); return -1; }

    /* Fixed-order merge: row mode over chunks; column mode over chunks, then lanes d. */
    const int nth2 = nf_threads(nt, U * per_unit);
    #pragma omp parallel for schedule(static) num_threads(nth2) if (nth2 > 1)
    for (int64_t s = 0; s < S; ++s) {
        nf_mom r = {0.0, 0.0, 0.0};
        if (row_mode) {
            for (int64_t kk = 0; kk < K; ++kk) {
                nf_mom p = part[s * K + kk];
                if (kind == 2) { r.n += p.n; r.mean += p.mean; r.m2 += p.m2; }
                else nf_mom_merge(&r, p);
            }
        } else {
            const int64_t a = s / C, c = s % C;
            for (int64_t kk = 0; kk < K; ++kk)
                for (int64_t d = 0; d < D; ++d) {
                    nf_mom p = part[(a * K + kk) * L + c * D + d];
                    if (kind == 2) { r.n += p.n; r.mean += p.mean; r.m2 += p.m2; }
                    else nf_mom_merge(&r, p);
                }
        }
        out[s] = r;
    }
    free(part);
    return 0;
}
