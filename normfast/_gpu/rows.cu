/* Row-wise kernels: fused forward (LayerNorm, RMSNorm, channels-first
 * GroupNorm / InstanceNorm) and the row-wise backward (LayerNorm, RMSNorm).
 *
 * Layout: blockDim = (TPR, RPB): RPB rows per block, TPR threads per row
 * (TPR = 32: a warp per row for short rows; up to 512 for long rows, which
 * each thread walks in 16-byte vectors).  Blocks loop over row groups.
 * Rows may be strided: row i of an operand starts at ptr + i * ld (ld in
 * elements, any value; the elements of a row are contiguous).
 */
#include "common.cuh"

/* Every row kernel's setup: the shared scratch of one block reduction (sh, red), the thread's
 * lane in its row (tx of tpr), rows per block (rpb) and the number of row groups (ngroups) the
 * blocks loop over. */
#define NF_ROW_GROUPS_SETUP                                                   \
    __shared__ nf_s3<double> sh[32];                                          \
    __shared__ nf_s3<double> red[32];                                         \
    const int tx = threadIdx.x, tpr = blockDim.x, rpb = blockDim.y;           \
    const nf_i64 ngroups = (M + rpb - 1) / rpb

/* The statistics of a row from its reduced (count, mean, M2) r, by every thread of the row:
 * thread 0 stores mean (0 for rms) and rstd = 1 / sqrt(M2 / N + eps); returns rstd and the
 * mean split hi + lo in the compute type A (nf_split). */
template <bool RMS, typename A>
NF_DEV double nf_row_stats(const nf_s3<double> &r, nf_i64 N, double eps, nf_i64 row, int tx, double *mean_out,
                           double *rstd_out, A &mh, A &ml)
{
    const double mean = RMS ? 0.0 : r.b;
    const double rs = 1.0 / sqrt(r.c / (double)N + eps);
    if (tx == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rs;
    }
    nf_split(mean, mh, ml);
    return rs;
}

/* Forward: per row i of N values, statistics about k = x[i][0] (0 for rms) in float64,
 * then y = ((x - hi) - lo) * (A)(rstd * w[j / seg]) + b[j / seg] with hi / lo the
 * split of the float64 mean and w/b the block (i % period) of the float64 affine
 * (w == NULL: no affine).  mean_out = mean (0 for rms), rstd_out = 1 / sqrt(M2 / N + eps). */
template <typename T, bool RMS>
__global__ void __launch_bounds__(512)
nf_rows_fwd(const T *x, nf_i64 ldx, T *y, nf_i64 ldy, nf_i64 M, nf_i64 N, const double *w, const double *b,
            nf_i64 seg, nf_i64 period, double eps, double *mean_out, double *rstd_out)
{
    typedef typename nf_acc<T>::type A;
    NF_ROW_GROUPS_SETUP;
    const nf_i64 nseg = nf_div(N, seg);
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const T *xr = x + (ok ? row : 0) * ldx;
        nf_moments st;
        st.init((RMS || !ok) ? 0.0 : (double)nf_cvt<T>::to(xr[0]));
        if (ok) {
            if (RMS) nf_for(xr, N, tx, tpr, [&](nf_i64, A v) { st.push_sq((double)v); });
            else nf_for(xr, N, tx, tpr, [&](nf_i64, A v) { st.push((double)v); });
        }
        const nf_s3<double> r = nf_moments_of(nf_group_reduce(st.sums(), nf_add(), sh, red), st.k);
        if (!ok) continue;                       /* no barrier below */
        A mh, ml;
        const double rs = nf_row_stats<RMS>(r, N, eps, row, tx, mean_out, rstd_out, mh, ml);
        T *yr = y + row * ldy;
        if (w == nullptr) {
            const A ra = (A)rs;
            nf_map<T, 1>(xr, xr, xr, yr, N, tx, tpr, [&](nf_i64, A v, A, A) { return ((v - mh) - ml) * ra; });
        } else {
            const nf_i64 off = (period > 1 ? row % period : 0) * nseg;
            const double *wr = w + off, *br = b + off;
            if (seg == 1)
                nf_map<T, 1>(xr, xr, xr, yr, N, tx, tpr, [&](nf_i64 j, A v, A, A) {
                    return ((v - mh) - ml) * (A)(rs * wr[j]) + (A)br[j];
                });
            else
                nf_map<T, 1>(xr, xr, xr, yr, N, tx, tpr, [&](nf_i64 j, A v, A, A) {
                    const nf_i64 c = nf_div(j, seg);
                    return ((v - mh) - ml) * (A)(rs * wr[c]) + (A)br[c];
                });
        }
    }
}

/* Fused residual add + row norm (transformer blocks), per row i:
 *   h = (T)(x + res) (rounded in T, as the unfused add), stored once while its statistics
 *   about k = h[i][0] (0 for rms) are taken; after the block barrier of the reduction the
 *   row of h is read back (from L2) and y = ((h - hi) - lo) * (A)(rstd * w[j]) + b[j].
 * h may alias x or res; y may alias x or res (each element is read before it is written). */
template <typename T, bool RMS>
__global__ void __launch_bounds__(512)
nf_rows_add_fwd(const T *x, const T *res, T *h, T *y, nf_i64 M, nf_i64 N, const double *w, const double *b,
                double eps, double *mean_out, double *rstd_out)
{
    typedef typename nf_acc<T>::type A;
    typedef nf_cvt<T> CV;
    NF_ROW_GROUPS_SETUP;
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const nf_i64 o = (ok ? row : 0) * N;
        nf_moments st;
        st.init((RMS || !ok || N == 0) ? 0.0 : (double)CV::to(CV::from(CV::to(x[o]) + CV::to(res[o]))));
        if (ok)
            nf_map<T, 2>(x + o, res + o, res + o, h + o, N, tx, tpr, [&](nf_i64, A a, A c, A) {
                const A hv = CV::to(CV::from(a + c));
                if (RMS) st.push_sq((double)hv);
                else st.push((double)hv);
                return hv;
            });
        const nf_s3<double> r = nf_moments_of(nf_group_reduce(st.sums(), nf_add(), sh, red), st.k);   /* block barrier: h visible */
        if (!ok) continue;
        A mh, ml;
        const double rs = nf_row_stats<RMS>(r, N, eps, row, tx, mean_out, rstd_out, mh, ml);
        const T *hr = h + o;
        if (w == nullptr) {
            const A ra = (A)rs;
            nf_map<T, 1>(hr, hr, hr, y + o, N, tx, tpr, [&](nf_i64, A v, A, A) { return ((v - mh) - ml) * ra; });
        } else {
            nf_map<T, 1>(hr, hr, hr, y + o, N, tx, tpr, [&](nf_i64 j, A v, A, A) {
                return ((v - mh) - ml) * (A)(rs * w[j]) + (A)b[j];
            });
        }
    }
}

/* Backward dx, one row per group:
 *   xh = (x - mean) * rstd, g = w * dy, s1 = sum g, s2 = sum g * xh (float64),
 *   dx = rstd * (g - s1 / N - xh * s2 / N) (+ gh)   (mean == NULL: rms, no s1 term;
 *   gh == NULL: nothing added).  dx is contiguous (M x N); x, dy, gh row-strided. */
template <typename T>
__global__ void __launch_bounds__(512)
nf_rows_bwd_dx(const T *x, nf_i64 ldx, const T *dy, nf_i64 ldg, const T *gh, nf_i64 ldh, T *dx, nf_i64 M,
               nf_i64 N, const double *mean, const double *rstd, const double *w)
{
    typedef typename nf_acc<T>::type A;
    NF_ROW_GROUPS_SETUP;
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const nf_i64 i = ok ? row : 0;
        const T *xr = x + i * ldx, *gr = dy + i * ldg;
        A mh = A(0), ml = A(0), ra = A(0);
        if (ok) {
            if (mean != nullptr) nf_split(mean[row], mh, ml);
            ra = (A)rstd[row];
        }
        nf_s3<double> s = nf_zero3<double>();
        if (ok)
            nf_for2(xr, gr, N, tx, tpr, [&](nf_i64 j, A v, A d) {
                const A g = w != nullptr ? (A)w[j] * d : d;
                const A xh = ((v - mh) - ml) * ra;
                s.a += (double)g;
                s.b += (double)g * (double)xh;
            });
        s = nf_group_reduce(s, nf_add(), sh, red);
        if (!ok) continue;
        const A c1 = mean != nullptr ? (A)(s.a / (double)N) : A(0), c2 = (A)(s.b / (double)N);
        T *dxr = dx + row * N;
        if (gh == nullptr)
            nf_map<T, 2>(xr, gr, gr, dxr, N, tx, tpr, [&](nf_i64 j, A v, A d, A) {
                const A g = w != nullptr ? (A)w[j] * d : d;
                const A xh = ((v - mh) - ml) * ra;
                return ra * (g - c1 - xh * c2);
            });
        else
            nf_map<T, 3>(xr, gr, gh + row * ldh, dxr, N, tx, tpr, [&](nf_i64 j, A v, A d, A e) {
                const A g = w != nullptr ? (A)w[j] * d : d;
                const A xh = ((v - mh) - ml) * ra;
                return ra * (g - c1 - xh * c2) + e;
            });
    }
}

/* Backward dw / db partials: column j of rows [kk * R, kk * R + R).
 * Block = RPP row slots x LT lanes (thread t: lane t % LT, slot t / LT); units
 * (kk, lane tile) in a grid-stride loop; the slots of a lane are summed in
 * order through shared memory.  pw / pb: K x N float64 (either may be NULL),
 * summed over kk by nf_colsum. */
template <typename T>
__global__ void __launch_bounds__(256)
nf_rows_dwdb(const T *x, nf_i64 ldx, const T *dy, nf_i64 ldg, nf_i64 M, nf_i64 N, const double *mean,
             const double *rstd, nf_i64 R, nf_i64 K, int LT, nf_i64 NT, double *pw, double *pb)
{
    typedef typename nf_acc<T>::type A;
    typedef nf_cvt<T> CV;
    __shared__ nf_s3<double> sh[256];
    const int t = threadIdx.x, lx = t % LT, ry = t / LT, rpp = blockDim.x / LT;
    const nf_i64 U = K * NT;
    for (nf_i64 u = blockIdx.x; u < U; u += gridDim.x) {
        const nf_i64 tt = u % NT, kk = u / NT;
        const nf_i64 j = tt * LT + lx;
        const bool ok = ry < rpp && j < N;
        const nf_i64 i0 = kk * R, i1 = nf_min(i0 + R, M);
        double sw = 0.0, sb = 0.0;
        if (ok)
            for (nf_i64 i = i0 + ry; i < i1; i += rpp) {
                A mh = A(0), ml = A(0);
                if (mean != nullptr) nf_split(mean[i], mh, ml);
                const A ra = (A)rstd[i];
                const A v = CV::to(x[i * ldx + j]), g = CV::to(dy[i * ldg + j]);
                sw += (double)g * (double)(((v - mh) - ml) * ra);
                sb += (double)g;
            }
        sh[t] = nf_make3(sw, sb, 0.0);
        __syncthreads();
        if (ok && ry == 0) {
            for (int r = 1; r < rpp; ++r) {
                sw += sh[r * LT + lx].a;
                sb += sh[r * LT + lx].b;
            }
            if (pw != nullptr) pw[kk * N + j] = sw;
            if (pb != nullptr) pb[kk * N + j] = sb;
        }
        __syncthreads();
    }
}

/* out[j] = sum_k part[k * N + j], k in order. */
extern "C" __global__ void __launch_bounds__(256)
nf_colsum(const double *part, nf_i64 K, nf_i64 N, double *out)
{
    for (nf_i64 j = (nf_i64)blockIdx.x * blockDim.x + threadIdx.x; j < N; j += (nf_i64)blockDim.x * gridDim.x) {
        double s = 0.0;
        for (nf_i64 k = 0; k < K; ++k) s += part[k * N + j];
        out[j] = s;
    }
}
