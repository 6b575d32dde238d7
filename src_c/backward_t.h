/* Row-wise backward (LayerNorm, RMSNorm), included by backward.h once per type.
 *
 * With xh = (x - mean) * rstd, g = w * dy, per row of N values:
 *   s1 = sum(g), s2 = sum(g * xh)
 *   dx = rstd * (g - s1 / N - xh * s2 / N)       (RMSNorm: mean = 0, no s1 term)
 *   dw += dy * xh, db += dy                        (summed over rows)
 * One pass reads x and dy for s1, s2 (and the dw/db partials), a second pass
 * (row still in cache) writes dx.  dw/db partials are kept per block of rows,
 * the blocks fixed by the shape, and summed in block order: results do not
 * depend on the thread count and no atomics are used.
 */

/* Scalar math: xh = (x - m) * rstd; g = w * dy; s1 += g; s2 += g * xh; dw += dy * xh; db += dy */
NF_CLONES static void NF_S(nf_row_bwd_sums)(const NF_T *restrict x, const NF_T *restrict dy, int64_t n, double m,
                                            double rstd, const double *restrict w, double *restrict acc,
                                            double *restrict dw, double *restrict db)
{
    double s1[NF_LANES] = {0}, s2[NF_LANES] = {0};
    nf_v8d a0 = nf_splat(0.0), a1 = a0, b0 = a0, b1 = a0, mv = nf_splat(m), rv = nf_splat(rstd);
    int64_t i = 0;
    for (; i + NF_LANES <= n; i += NF_LANES) {
        nf_v8d d0 = NF_LOAD8(dy + i), d1 = NF_LOAD8(dy + i + 8);
        nf_v8d h0 = (NF_LOAD8(x + i) - mv) * rv, h1 = (NF_LOAD8(x + i + 8) - mv) * rv;
        nf_v8d w0, w1;
        memcpy(&w0, w + i, 64); memcpy(&w1, w + i + 8, 64);
        nf_v8d g0 = w0 * d0, g1 = w1 * d1;
        a0 += g0; a1 += g1; b0 += g0 * h0; b1 += g1 * h1;
        if (dw) {
            nf_v8d p0, p1;
            memcpy(&p0, dw + i, 64); memcpy(&p1, dw + i + 8, 64);
            p0 += d0 * h0; p1 += d1 * h1;
            memcpy(dw + i, &p0, 64); memcpy(dw + i + 8, &p1, 64);
        }
        if (db) {
            nf_v8d p0, p1;
            memcpy(&p0, db + i, 64); memcpy(&p1, db + i + 8, 64);
            p0 += d0; p1 += d1;
            memcpy(db + i, &p0, 64); memcpy(db + i + 8, &p1, 64);
        }
    }
    memcpy(s1, &a0, 64); memcpy(s1 + 8, &a1, 64); memcpy(s2, &b0, 64); memcpy(s2 + 8, &b1, 64);
    for (int j = 0; i + j < n; ++j) {
        double xh = ((double)x[i + j] - m) * rstd, d = (double)dy[i + j], g = w[i + j] * d;
        s1[j] += g; s2[j] += g * xh;
        if (dw) dw[i + j] += d * xh;
        if (db) db[i + j] += d;
    }
    double a = 0.0, b = 0.0;
    for (int j = 0; j < NF_LANES; ++j) { a += s1[j]; b += s2[j]; }
    acc[0] = a; acc[1] = b;
}

/* Scalar math: dx = rstd * (w * dy - c1 - (x - m) * rstd * c2)  [+ gh]  (gh: the fused
 * residual gradient of add_layer_norm / add_rms_norm, NULL otherwise) */
NF_CLONES static void NF_S(nf_row_bwd_dx)(const NF_T *restrict x, const NF_T *restrict dy, const NF_T *restrict gh,
                                          NF_T *restrict dx, int64_t n, double m, double rstd,
                                          const double *restrict w, double c1, double c2, int stream)
{
    int64_t i = 0;
    if (gh)
        for (; i < n; ++i)
            dx[i] = (NF_T)(rstd * (w[i] * (double)dy[i] - c1 - ((double)x[i] - m) * rstd * c2) + (double)gh[i]);
    if (stream) {
        for (; i < n && ((uintptr_t)(dx + i) & 15); ++i)
            dx[i] = (NF_T)(rstd * (w[i] * (double)dy[i] - c1 - ((double)x[i] - m) * rstd * c2));
        const nf_v8d mv = nf_splat(m), rv = nf_splat(rstd), c1v = nf_splat(c1), c2v = nf_splat(c2);
        for (; i + 8 <= n; i += 8) {
            nf_v8d wv;
            memcpy(&wv, w + i, 64);
            NF_STREAM8(dx + i, rv * (wv * NF_LOAD8(dy + i) - c1v - (NF_LOAD8(x + i) - mv) * rv * c2v));
        }
    }
    for (; i < n; ++i)
        dx[i] = (NF_T)(rstd * (w[i] * (double)dy[i] - c1 - ((double)x[i] - m) * rstd * c2));
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
    int64_t NB = 32;                       /* blocks of rows: fixed by the shape */
    if (NB > M) NB = M;
    int64_t cap = ((int64_t)1 << 22) / N;  /* keep the partials under ~64 MB */
    if (cap < 1) cap = 1;
    if (NB > cap) NB = cap;
    const int64_t RB = nf_cdiv(M, NB);
    NB = nf_cdiv(M, RB);
    double *pw = NULL, *pb = NULL;
    if (dw && !(pw = (double *)calloc((size_t)(NB * N), sizeof(double)))) return -1;
    if (db && !(pb = (double *)calloc((size_t)(NB * N), sizeof(double)))) { free(pw); return -1; }
    const int nth = nf_threads(nt, M * N);
    const int stream = NF_HAVE_STREAM && dx && (const void *)dx != (const void *)x && (const void *)dx != (const void *)dy
                       && M * N * (int64_t)sizeof(NF_T) >= NF_STREAM_MIN;
    #pragma omp parallel num_threads(nth) if (nth > 1)
    {
    #pragma omp for schedule(static)
    for (int64_t blk = 0; blk < NB; ++blk) {
        const int64_t i1 = (blk + 1) * RB < M ? (blk + 1) * RB : M;
        for (int64_t i = blk * RB; i < i1; ++i) {
            const NF_T *xr = x + i * N, *gr = dy + i * N;
            const double m = mean ? mean[i] : 0.0;
            double acc[2];
            NF_S(nf_row_bwd_sums)(xr, gr, N, m, rstd[i], w, acc, pw ? pw + blk * N : NULL, pb ? pb + blk * N : NULL);
            if (dx) NF_S(nf_row_bwd_dx)(xr, gr, gh ? gh + i * N : NULL, dx + i * N, N, m, rstd[i], w, mean ? acc[0] / (double)N : 0.0,
                                        acc[1] / (double)N, stream);
        }
    }
    if (stream) nf_stream_fence();
    }
    if (pw || pb) {
        const int nth2 = nf_threads(nt, NB * N);
        #pragma omp parallel for schedule(static) num_threads(nth2) if (nth2 > 1)
        for (int64_t j = 0; j < N; ++j)
            for (int64_t blk = 0; blk < NB; ++blk) {
                if (pw) dw[j] += pw[blk * N + j];
                if (pb) db[j] += pb[blk * N + j];
            }
    }
    free(pw); free(pb);
    return 0;
}
