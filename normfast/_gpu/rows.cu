/* Row-wise kernels: fused forward (LayerNorm, RMSNorm, channels-first
 * GroupNorm / InstanceNorm) and the row-wise backward (LayerNorm, RMSNorm).
 *
 * Layout: blockDim = (TPR, RPB): RPB rows per block, TPR threads per row
 * (TPR = 32: a warp per row for short rows; up to 512 for long rows, which
 * each thread walks in 16-byte vectors).  Blocks loop over row groups.
 */
#include "common.cuh"

/* Forward: per row i of N values, statistics about k = x[i][0] (0 for rms),
 * then y = ((x - k) - mu) * (rstd * w[j / seg]) + b[j / seg] with w/b the
 * block (i % period) of the float64 affine (w == NULL: no affine).
 * mean_out = k + mu (0 for rms), rstd_out = 1 / sqrt(M2 / N + eps). */
template <typename T, bool RMS>
__global__ void __launch_bounds__(512)
nf_rows_fwd(const T *x, T *y, nf_i64 M, nf_i64 N, const double *w, const double *b, nf_i64 seg, nf_i64 period,
            double eps, double *mean_out, double *rstd_out)
{
    typedef typename nf_acc<T>::type A;
    __shared__ nf_s3<A> sh[32];
    __shared__ nf_s3<A> res[32];
    const int tx = threadIdx.x, tpr = blockDim.x, rpb = blockDim.y;
    const nf_i64 ngroups = (M + rpb - 1) / rpb;
    const nf_i64 nseg = nf_div(N, seg);
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const T *xr = x + (ok ? row : 0) * N;
        const A k = (RMS || !ok) ? A(0) : nf_cvt<T>::to(xr[0]);
        nf_moments<A> st;
        st.init();
        if (ok) {
            if (RMS) nf_for(xr, N, tx, tpr, [&](nf_i64, A v) { st.push_sq(v); });
            else nf_for(xr, N, tx, tpr, [&](nf_i64, A v) { st.push(v - k); });
        }
        const nf_s3<A> r = nf_group_reduce(st.get(), nf_chan(), sh, res);
        if (!ok) continue;                       /* no barrier below */
        const double var = (double)r.c / (double)N;
        const double rs = 1.0 / sqrt(var + eps);
        if (tx == 0) {
            mean_out[row] = RMS ? 0.0 : (double)k + (double)r.b;
            rstd_out[row] = rs;
        }
        const A ra = (A)rs, lo = RMS ? A(0) : r.b;
        T *yr = y + row * N;
        if (w == nullptr) {
            nf_map<T, false>(xr, xr, yr, N, tx, tpr, [&](nf_i64, A v, A) { return ((v - k) - lo) * ra; });
        } else {
            const nf_i64 off = (period > 1 ? row % period : 0) * nseg;
            const double *wr = w + off, *br = b + off;
            if (seg == 1)
                nf_map<T, false>(xr, xr, yr, N, tx, tpr, [&](nf_i64 j, A v, A) {
                    return ((v - k) - lo) * (ra * (A)wr[j]) + (A)br[j];
                });
            else
                nf_map<T, false>(xr, xr, yr, N, tx, tpr, [&](nf_i64 j, A v, A) {
                    const nf_i64 c = nf_div(j, seg);
                    return ((v - k) - lo) * (ra * (A)wr[c]) + (A)br[c];
                });
        }
    }
}

/* Fused residual add + row norm (transformer blocks), per row i:
 *   h = (T)(x + res) (rounded in T, as the unfused add), stored once while its statistics
 *   about k = h[i][0] (0 for rms) are taken; after the block barrier of the reduction the
 *   row of h is read back (from L2) and y = ((h - k) - mu) * (rstd * w[j]) + b[j].
 * h may alias x or res; y may alias x or res (each element is read before it is written). */
template <typename T, bool RMS>
__global__ void __launch_bounds__(512)
nf_rows_add_fwd(const T *x, const T *res, T *h, T *y, nf_i64 M, nf_i64 N, const double *w, const double *b,
                double eps, double *mean_out, double *rstd_out)
{
    typedef typename nf_acc<T>::type A;
    typedef nf_cvt<T> CV;
    __shared__ nf_s3<A> sh[32];
    __shared__ nf_s3<A> red[32];
    const int tx = threadIdx.x, tpr = blockDim.x, rpb = blockDim.y;
    const nf_i64 ngroups = (M + rpb - 1) / rpb;
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const nf_i64 o = (ok ? row : 0) * N;
        const A k = (RMS || !ok || N == 0) ? A(0) : CV::to(CV::from(CV::to(x[o]) + CV::to(res[o])));
        nf_moments<A> st;
        st.init();
        if (ok)
            nf_map<T, true>(x + o, res + o, h + o, N, tx, tpr, [&](nf_i64, A a, A c) {
                const A hv = CV::to(CV::from(a + c));
                if (RMS) st.push_sq(hv);
                else st.push(hv - k);
                return hv;
            });
        const nf_s3<A> r = nf_group_reduce(st.get(), nf_chan(), sh, red);   /* block barrier: h visible */
        if (!ok) continue;
        const double var = (double)r.c / (double)N;
        const double rs = 1.0 / sqrt(var + eps);
        if (tx == 0) {
            mean_out[row] = RMS ? 0.0 : (double)k + (double)r.b;
            rstd_out[row] = rs;
        }
        const A ra = (A)rs, lo = RMS ? A(0) : r.b;
        const T *hr = h + o;
        if (w == nullptr)
            nf_map<T, false>(hr, hr, y + o, N, tx, tpr, [&](nf_i64, A v, A) { return ((v - k) - lo) * ra; });
        else
            nf_map<T, false>(hr, hr, y + o, N, tx, tpr, [&](nf_i64 j, A v, A) {
                return ((v - k) - lo) * (ra * (A)w[j]) + (A)b[j];
            });
    }
}

/* Backward dx, one row per group:
 *   xh = (x - mean) * rstd, g = w * dy, s1 = sum g, s2 = sum g * xh,
 *   dx = rstd * (g - s1 / N - xh * s2 / N)   (mean == NULL: rms, no s1 term). */
template <typename T>
__global__ void __launch_bounds__(512)
nf_rows_bwd_dx(const T *x, const T *dy, T *dx, nf_i64 M, nf_i64 N, const double *mean, const double *rstd,
               const double *w)
{
    typedef typename nf_acc<T>::type A;
    __shared__ nf_s3<A> sh[32];
    __shared__ nf_s3<A> res[32];
    const int tx = threadIdx.x, tpr = blockDim.x, rpb = blockDim.y;
    const nf_i64 ngroups = (M + rpb - 1) / rpb;
    for (nf_i64 gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const nf_i64 row = gi * rpb + threadIdx.y;
        const bool ok = row < M;
        const T *xr = x + (ok ? row : 0) * N, *gr = dy + (ok ? row : 0) * N;
        A mh = A(0), ml = A(0), ra = A(0);
        if (ok) {
            if (mean != nullptr) nf_split(mean[row], mh, ml);
            ra = (A)rstd[row];
        }
        nf_s3<A> s = nf_zero3<A>();
        if (ok)
            nf_for2(xr, gr, N, tx, tpr, [&](nf_i64 j, A v, A d) {
                const A g = w != nullptr ? (A)w[j] * d : d;
                const A xh = ((v - mh) - ml) * ra;
                s.a += g;
                s.b += g * xh;
            });
        s = nf_group_reduce(s, nf_add(), sh, res);
        if (!ok) continue;
        const A c1 = mean != nullptr ? s.a / (A)N : A(0), c2 = s.b / (A)N;
        nf_map<T, true>(xr, gr, dx + row * N, N, tx, tpr, [&](nf_i64 j, A v, A d) {
            const A g = w != nullptr ? (A)w[j] * d : d;
            const A xh = ((v - mh) - ml) * ra;
            return ra * (g - c1 - xh * c2);
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
nf_rows_dwdb(const T *x, const T *dy, nf_i64 M, nf_i64 N, const double *mean, const double *rstd, nf_i64 R,
             nf_i64 K, int LT, nf_i64 NT, double *pw, double *pb)
{
    typedef typename nf_acc<T>::type A;
    typedef nf_cvt<T> CV;
    __shared__ nf_s3<A> sh[256];
    const int t = threadIdx.x, lx = t % LT, ry = t / LT, rpp = blockDim.x / LT;
    const nf_i64 U = K * NT;
    for (nf_i64 u = blockIdx.x; u < U; u += gridDim.x) {
        const nf_i64 tt = u % NT, kk = u / NT;
        const nf_i64 j = tt * LT + lx;
        const bool ok = ry < rpp && j < N;
        const nf_i64 i0 = kk * R, i1 = nf_min(i0 + R, M);
        A sw = A(0), sb = A(0);
        if (ok)
            for (nf_i64 i = i0 + ry; i < i1; i += rpp) {
                A mh = A(0), ml = A(0);
                if (mean != nullptr) nf_split(mean[i], mh, ml);
                const A ra = (A)rstd[i];
                const A v = CV::to(x[i * N + j]), g = CV::to(dy[i * N + j]);
                sw += g * (((v - mh) - ml) * ra);
                sb += g;
            }
        sh[t] = nf_make3(sw, sb, A(0));
        __syncthreads();
        if (ok && ry == 0) {
            for (int r = 1; r < rpp; ++r) {
                sw += sh[r * LT + lx].a;
                sb += sh[r * LT + lx].b;
            }
            if (pw != nullptr) pw[kk * N + j] = (double)sw;
            if (pb != nullptr) pb[kk * N + j] = (double)sb;
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
