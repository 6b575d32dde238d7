/* Elementwise apply over the 4-d form x[A][B][C][D]:
 *   y = ((x - mh) - ml) * p[a, c] + q[a, c] (+ dy * r[a, c])
 * with (mh, ml) the hi/lo split of the float64 m[a, c]; coefficients float64.
 * The forward (p = rstd * w, q = b) and the channel-wise backward
 * (dx = (x - m) * beta + gamma + dy * alpha) share it.  y may alias x.
 *
 * Segment mode (D >= 32): grid-stride loop over pieces (at most P values) of
 * the segments x[a][b][c][:], SPB pieces per block at a time, TPS threads
 * (16-byte vectors) per piece; coefficients once per piece.
 * Column mode (D < 32): units (a, row block, lane tile), RPP row slots x LT
 * lanes per block as in nf_reduce_col; each thread keeps its lane's
 * coefficients in registers.
 */
#include "common.cuh"

template <typename T, bool DY>
__global__ void __launch_bounds__(256)
nf_apply_seg(const T *x, const T *dy, T *y, nf_i64 G, nf_i64 BC, nf_i64 C, nf_i64 D, nf_i64 P, nf_i64 pps,
             int TPS, const double *m, const double *p, const double *q, const double *r)
{
    typedef typename nf_acc<T>::type A;
    const int t = threadIdx.x, tx = t % TPS, ty = t / TPS, spb = blockDim.x / TPS;
    const nf_i64 np = G * pps;
    for (nf_i64 pc = (nf_i64)blockIdx.x * spb + ty; pc < np; pc += (nf_i64)gridDim.x * spb) {
        const nf_i64 g = nf_div(pc, pps), off = (pc - g * pps) * P, len = nf_min(P, D - off);
        const nf_i64 a = nf_div(g, BC), c = g - nf_div(g, C) * C, s = a * C + c;
        A mh, ml;
        nf_split(m[s], mh, ml);
        const A ps = (A)p[s], qs = (A)q[s], rs = DY ? (A)r[s] : A(0);
        const nf_i64 o = g * D + off;
        nf_map<T, DY ? 2 : 1>(x + o, dy + o, dy + o, y + o, len, tx, TPS, [&](nf_i64, A v, A d, A) {
            A z = ((v - mh) - ml) * ps + qs;
            if (DY) z += d * rs;
            return z;
        });
    }
}

template <typename T, bool DY>
__global__ void __launch_bounds__(256)
nf_apply_col(const T *x, const T *dy, T *y, nf_i64 A_, nf_i64 B, nf_i64 C, nf_i64 D, nf_i64 R, nf_i64 K,
             int LT, nf_i64 NT, const double *m, const double *p, const double *q, const double *r)
{
    typedef typename nf_acc<T>::type A;
    typedef nf_cvt<T> CV;
    const int t = threadIdx.x, lx = t % LT, ry = t / LT, rpp = blockDim.x / LT;
    if (ry >= rpp) return;                       /* no barrier in this kernel */
    const nf_i64 L = C * D, U = A_ * K * NT;
    for (nf_i64 u = blockIdx.x; u < U; u += gridDim.x) {
        const nf_i64 qq = nf_div(u, NT), tt = u - qq * NT, a = nf_div(qq, K), kk = qq - a * K;
        const nf_i64 l = tt * LT + lx;
        if (l >= L) continue;
        const nf_i64 s = a * C + nf_div(l, D);
        A mh, ml;
        nf_split(m[s], mh, ml);
        const A ps = (A)p[s], qs = (A)q[s], rs = DY ? (A)r[s] : A(0);
        const nf_i64 b0 = kk * R, b1 = nf_min(b0 + R, B), o = a * B * L + l;
        for (nf_i64 b = b0 + ry; b < b1; b += rpp) {
            const nf_i64 e = o + b * L;
            A z = ((CV::to(x[e]) - mh) - ml) * ps + qs;
            if (DY) z += CV::to(dy[e]) * rs;
            y[e] = CV::from(z);
        }
    }
}
