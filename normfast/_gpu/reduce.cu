/* Reductions over the 4-d form x[A][B][C][D] -> one (n, s1, s2) per (a, c).
 *   KIND 0 (NF_REDUCE_MOMENTS): (n, mean, M2)     KIND 1 (NF_REDUCE_SQUARES): (n, 0, sum x^2)
 *   KIND 2 (NF_REDUCE_GRAD_SUMS): (n, sum dy, sum dy * (x - m[a, c]))
 * (the numbers of normfast._engine.Reduce and src_c/moments.h)
 * Each (a, c) is split over several blocks ("units") writing partials to a
 * buffer; nf_merge combines them in a fixed order (no atomics), so a
 * BatchNorm with few channels still fills the GPU.  Everything is accumulated
 * in float64 (see common.cuh): KIND 2 sums exact products dy * (x - m) with
 * x - m formed in float64.
 *
 * Row mode (D >= 32): the B segments x[a][b][c][:] of (a, c), cut in pieces of
 * P values (pps pieces per segment), are dealt to K units of ppu consecutive
 * pieces.  A block works on SPB = blockDim / TPS pieces at a time, TPS threads
 * (vectorized) per piece; one partial per unit (shift: the unit's first value).
 * Column mode (D < 32): the rows x[a][b][:] (L = C * D lanes) of one a are cut
 * in K blocks of R rows and lane tiles of LT lanes; a block holds RPP row slots
 * x LT lanes (coalesced rows), one partial per (a, row block, lane), the shift
 * being the lane's first value.  Partials of (a, c) are its D lanes.
 */
#include "common.cuh"

template <typename T, int KIND>
__global__ void __launch_bounds__(256)
nf_reduce_row(const T *x, const T *dy, const double *m, nf_i64 A_, nf_i64 B, nf_i64 C, nf_i64 D, nf_i64 P,
              nf_i64 pps, nf_i64 ppu, nf_i64 K, int TPS, double *part)
{
    typedef typename nf_acc<T>::type A;
    __shared__ nf_s3<double> sh[32];
    __shared__ nf_s3<double> res[32];
    const int t = threadIdx.x, tx = t % TPS, ty = t / TPS, spb = blockDim.x / TPS;
    const nf_i64 L = C * D, S = A_ * C, U = S * K, np = B * pps;
    for (nf_i64 u = blockIdx.x; u < U; u += gridDim.x) {
        const nf_i64 s = nf_div(u, K), kk = u - s * K, a = nf_div(s, C), c = s - a * C;
        const nf_i64 base = a * B * L + c * D;
        const nf_i64 p0 = kk * ppu, p1 = nf_min(p0 + ppu, np);
        double k = 0.0;
        if (KIND == NF_REDUCE_MOMENTS) {
            const nf_i64 b0 = nf_div(p0, pps);
            k = (double)nf_cvt<T>::to(x[base + b0 * L + (p0 - b0 * pps) * P]);
        }
        const double md = KIND == NF_REDUCE_GRAD_SUMS ? m[s] : 0.0;
        nf_moments st;
        st.init(k);
        nf_s3<double> sums = nf_zero3<double>();
        for (nf_i64 p = p0 + ty; p < p1; p += spb) {
            const nf_i64 b = nf_div(p, pps), off = (p - b * pps) * P, len = nf_min(P, D - off);
            const nf_i64 o = base + b * L + off;
            if (KIND == NF_REDUCE_GRAD_SUMS)
                nf_for2(x + o, dy + o, len, tx, TPS, [&](nf_i64, A v, A g) {
                    sums.b += (double)g;
                    sums.c += (double)g * ((double)v - md);
                });
            else if (KIND == NF_REDUCE_SQUARES)
                nf_for(x + o, len, tx, TPS, [&](nf_i64, A v) { st.push_sq((double)v); });
            else
                nf_for(x + o, len, tx, TPS, [&](nf_i64, A v) { st.push((double)v); });
        }
        nf_s3<double> r = nf_group_reduce(KIND == NF_REDUCE_GRAD_SUMS ? sums : st.sums(), nf_add(), sh, res);
        if (KIND != NF_REDUCE_GRAD_SUMS) r = nf_moments_of(r, k);
        if (t == 0) {
            /* exact count: ppu pieces of P, less the short last piece of each segment */
            const nf_i64 lasts = nf_div(p1, pps) - nf_div(p0, pps);
            const double n = (double)((p1 - p0) * P - lasts * (pps * P - D));
            double *o = part + 3 * u;
            o[0] = n;
            o[1] = KIND == NF_REDUCE_SQUARES ? 0.0 : r.b;
            o[2] = r.c;
        }
    }
}

template <typename T, int KIND>
__global__ void __launch_bounds__(256)
nf_reduce_col(const T *x, const T *dy, const double *m, nf_i64 A_, nf_i64 B, nf_i64 C, nf_i64 D, nf_i64 R,
              nf_i64 K, int LT, nf_i64 NT, double *part)
{
    typedef nf_cvt<T> CV;
    __shared__ nf_s3<double> sh[256];
    const int t = threadIdx.x, lx = t % LT, ry = t / LT, rpp = blockDim.x / LT;
    const nf_i64 L = C * D, U = A_ * K * NT;
    for (nf_i64 u = blockIdx.x; u < U; u += gridDim.x) {
        const nf_i64 q = nf_div(u, NT), tt = u - q * NT, a = nf_div(q, K), kk = q - a * K;
        const nf_i64 l = tt * LT + lx;
        const bool ok = ry < rpp && l < L;
        const nf_i64 b0 = kk * R, b1 = nf_min(b0 + R, B);
        const T *X = x + a * B * L + l;
        nf_moments st;
        st.init(ok && KIND == NF_REDUCE_MOMENTS ? (double)CV::to(X[b0 * L]) : 0.0);
        nf_s3<double> sums = nf_zero3<double>();
        if (ok) {
            if (KIND == NF_REDUCE_GRAD_SUMS) {
                const double md = m[a * C + nf_div(l, D)];
                const T *G = dy + a * B * L + l;
                for (nf_i64 b = b0 + ry; b < b1; b += rpp) {
                    const double v = (double)CV::to(X[b * L]), g = (double)CV::to(G[b * L]);
                    sums.b += g;
                    sums.c += g * (v - md);
                }
            } else if (KIND == NF_REDUCE_SQUARES) {
                for (nf_i64 b = b0 + ry; b < b1; b += rpp) st.push_sq((double)CV::to(X[b * L]));
            } else {
                for (nf_i64 b = b0 + ry; b < b1; b += rpp) st.push((double)CV::to(X[b * L]));
            }
        }
        sh[t] = KIND == NF_REDUCE_GRAD_SUMS ? sums : st.sums();
        __syncthreads();
        if (ok && ry == 0) {
            nf_s3<double> r = sh[lx];
            for (int j = 1; j < rpp; ++j) r = nf_add()(r, sh[j * LT + lx]);
            if (KIND != NF_REDUCE_GRAD_SUMS) r = nf_moments_of(r, st.k);
            double *o = part + 3 * ((a * K + kk) * L + l);
            o[0] = (double)(b1 - b0);
            o[1] = KIND == NF_REDUCE_SQUARES ? 0.0 : r.b;
            o[2] = r.c;
        }
        __syncthreads();
    }
}

/* out[s] = merge of the partials of s = (a, c): items (kk, d) for kk < K,
 * d < Dm at part[3 * ((a * K + kk) * L + c * Dm + d)], merged in (kk, d) order
 * (Chan, or plain sums when sums != 0).  Row mode: C = L = Dm = 1.
 * One warp per s: lane j folds items j, j + 32, ... then a fixed shuffle tree. */
extern "C" __global__ void __launch_bounds__(256)
nf_merge(const double *part, nf_i64 S, nf_i64 C, nf_i64 K, nf_i64 L, nf_i64 Dm, int sums, double *out)
{
    const int lane = threadIdx.x & 31;
    const nf_i64 wpb = blockDim.x >> 5, nitems = K * Dm;
    for (nf_i64 s = (nf_i64)blockIdx.x * wpb + (threadIdx.x >> 5); s < S; s += (nf_i64)gridDim.x * wpb) {
        const nf_i64 a = nf_div(s, C), c = s - a * C;
        const nf_i64 base = a * K * L + c * Dm;
        nf_s3<double> r = nf_zero3<double>();
        for (nf_i64 i = lane; i < nitems; i += 32) {
            const nf_i64 kk = nf_div(i, Dm), d = i - kk * Dm;
            const double *p = part + 3 * (base + kk * L + d);
            const nf_s3<double> v = nf_make3(p[0], p[1], p[2]);
            r = sums ? nf_add()(r, v) : nf_chan()(r, v);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const nf_s3<double> v = nf_shfl_down3(r, o);
            r = sums ? nf_add()(r, v) : nf_chan()(r, v);
        }
        if (lane == 0) {
            out[3 * s] = r.a;
            out[3 * s + 1] = r.b;
            out[3 * s + 2] = r.c;
        }
    }
}
