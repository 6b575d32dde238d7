/* normfast: the row-wise normalization at float32 SIMD width (float32 data, opt-in:
 * normfast.set_float32_precision("high"); the default "highest" computes in float64).
 *
 * Scalar math, per row with float64 statistics m (mean) and r (rstd), float32 w and b:
 *   mh = (float)m, ml = (float)(m - mh), rs = (float)r
 *   y = ((((x - mh) - ml) * rs) * w) + b          (every operation in float32, 16 lanes;
 *                                                  w = 1 and b = 0 when absent)
 *
 * NB: About the error bound (u = 2^-24, the float32 unit roundoff; T = (x - m) * r * w exact):
 *   - the split: mh + ml = m up to u^2 |m|;
 *   - x - mh is exact when x is within a factor 2 of mh (Sterbenz: data near its mean, e.g.
 *     mean 1e4 / std 0.1); otherwise |x - mh| > |mh| / 2 >> |ml| and its rounding is at most
 *     u relative to x - m (to first order);
 *   - then - ml, rs = (float)r, * rs, * w: one rounding each, at most u relative;
 *   so the product is T (1 + t) with |t| <= 5u + O(u^2), and the final + b adds at most u |y|:
 *       |y - (T + b)| <= 5.01 u |T| + 1.01 u |y|
 *   (3u |T| without weight and bias: * 1 and + 0 are exact).  At mean 1e4 / std 0.1 with
 *   |T| <= 6 (six standard deviations) and no affine that is <= 1.1e-6 (the contract: 2e-6).
 *   tests/test_precision.py checks the bound element by element against a long-double reference.
 * The statistics are the float64 shifted sums of the default mode, so they, and the results'
 * independence of the thread count, do not change. */
#ifndef NF_APPLY_F32_H
#define NF_APPLY_F32_H
#include "common.h"

static int nf_float32_high = 0;       /* normfast._cpu._normalize.set_float32_precision */

#ifndef NF_V16F
#define NF_V16F
typedef float nf_v16f __attribute__((vector_size(64)));
#endif

static inline float nf_f32_apply1(float x, float mh, float ml, float rs, const float *w, const float *b, int64_t i)
{
    float v = ((x - mh) - ml) * rs;
    if (w) v = v * w[i];
    return v + (b ? b[i] : 0.0f);        /* + 0 without bias, as the default path (-0 + 0 = +0) */
}

NF_CLONES static void nf_seg_apply_f32w(const float *restrict x, float *restrict y, int64_t n, double m, double r,
                                        const float *restrict w, const float *restrict b, int stream)
{
    const float mh = (float)m, ml = (float)(m - (double)mh), rs = (float)r;
    int64_t i = 0;
    if (stream)
        for (; i < n && ((uintptr_t)(y + i) & 15); ++i) y[i] = nf_f32_apply1(x[i], mh, ml, rs, w, b, i);
    for (; i + 16 <= n; i += 16) {
        nf_v16f v, t;
        memcpy(&v, x + i, 64);
        v = ((v - mh) - ml) * rs;
        if (w) { memcpy(&t, w + i, 64); v = v * t; }
        if (b) { memcpy(&t, b + i, 64); v = v + t; } else v = v + 0.0f;
#if NF_HAVE_STREAM
        if (stream) {
            __m128 q[4];
            memcpy(q, &v, 64);
            _mm_stream_ps(y + i, q[0]); _mm_stream_ps(y + i + 4, q[1]);
            _mm_stream_ps(y + i + 8, q[2]); _mm_stream_ps(y + i + 12, q[3]);
            continue;
        }
#endif
        memcpy(y + i, &v, 64);
    }
    for (; i < n; ++i) y[i] = nf_f32_apply1(x[i], mh, ml, rs, w, b, i);
}

/* The channels-first group / instance norm backward's second pass at float32 width (float32 data,
 * always: the row-wise backward's tile does the same, see backward_t.h).  Per segment of one
 * channel (weight wj) of a row with float64 mean m, rstd r and c1 = s1 / n, c2 = s2 / n (float64
 * row sums, s2 = sum(g * xh)):
 *   Scalar math: xh = ((x - mh) - ml) * rs;  dx = (wj * dy - c1h - c1l) * rs - xh * k2   (16 lanes; the
 *   tail in float64: dx = r * (wj * dy - c1 - xh * c2))
 * with mh + ml = m, c1h + c1l = c1 (float32 splits), rs = (float)r, k2 = (float)(r * c2).
 * x - mh is exact for x within a factor 2 of the mean (Sterbenz), so a large offset in x does not
 * cancel in float32; c1 is subtracted in two parts so a large offset in dy does not either. */
NF_CLONES static void nf_seg_bwd_f32(const float *restrict x, const float *restrict dy, float *restrict dx,
                                     int64_t n, double wj, double m, double r, double c1, double c2)
{
    const float wf = (float)wj, mh = (float)m, ml = (float)(m - (double)mh), rs = (float)r;
    const float c1h = (float)c1, c1l = (float)(c1 - (double)c1h), k2 = (float)(r * c2);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        nf_v16f xv, dv;
        memcpy(&xv, x + i, 64); memcpy(&dv, dy + i, 64);
        const nf_v16f h = ((xv - mh) - ml) * rs;
        const nf_v16f v = ((wf * dv - c1h) - c1l) * rs - h * k2;
        memcpy(dx + i, &v, 64);
    }
    /* the last n % 16 values: the float64 formula (as the row-wise tile's tail, backward_t.h), so a
     * segment shorter than 16 -- one value per statistic, where g - c1 cancels exactly and rstd may
     * be 1 / sqrt(eps) -- keeps float64 accuracy */
    for (; i < n; ++i) {
        const double xh = ((double)x[i] - m) * r;
        dx[i] = (float)(r * (wj * (double)dy[i] - c1 - xh * c2));
    }
}

#endif
