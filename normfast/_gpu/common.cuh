/* normfast GPU kernels: shared definitions.
 *
 * The .cu files of this folder are concatenated behind this header (the
 * `#include "common.cuh"` lines are dropped) and compiled with NVRTC once per
 * element type T in {__half, __nv_bfloat16, float, double}; see
 * normfast/_gpu/_kernels.py for the list of instantiations.
 *
 * NB: About the numerics (applies to every kernel)
 * - Element type T, arithmetic type A: float for __half / __nv_bfloat16 / float,
 *   double for double.  Every value is converted to A on load and every result is
 *   rounded once to T on store.
 * - Statistics and sums are accumulated in float64 for every T.  Moments are
 *   shifted sums about k, one of the data values (the row's / unit's / lane's
 *   first): per thread n, S1 = sum(x - k), S2 = sum((x - k)^2) with x - k formed
 *   in float64.  For 16/32-bit input x and k are floats, so x - k and its square
 *   are exact in float64 and the only roundings are the float64 additions
 *   (relative 2^-53 each; for 16-bit input and moderate counts the sums are exact,
 *   so even their order does not matter).  S2 - S1^2 / n loses only the bits of
 *   (mean - k)^2 / variance, a few for a shift within a few standard deviations.
 *   The threads sharing a shift add their sums in a fixed order (lanes by shuffles,
 *   warps through shared memory); partials with different shifts (the units of a
 *   reduction split over blocks, the lanes of the column mode) become (n, mean, M2)
 *   and are combined by Chan's merge in float64 by a second kernel, in a fixed
 *   order.  The backward sums (sum g, sum g * xh; dw / db partials) are
 *   float64 sums of exact float64 products of A values.
 * - The "x - mean" precision rule: every kernel that subtracts a mean computes
 *   (x - hi) - lo in A, with hi = (A)m, lo = (A)(m - hi) the split of the float64
 *   mean m.  x - hi is exact for x within a factor 2 of hi (Sterbenz), so a
 *   float32 row with mean 1e4 and std 0.1 normalizes with an error of a few
 *   float32 ulps of the result (a float32 mean alone would be off by up to 5e-4,
 *   i.e. 5e-3 after scaling by rstd).  The scale rstd * w is formed in float64
 *   and rounded once to A; the rest of the elementwise arithmetic is in A.
 * - Determinism: work is cut into units whose boundaries depend only on the
 *   shape and the launch configuration (itself a function of the shape and the
 *   device's SM count); partials are written to a buffer and merged by a second
 *   kernel in a fixed order.  No float atomics, no warp-synchronous shared memory
 *   (every exchange goes through a shuffle or a barrier): results are bitwise
 *   reproducible run to run on a given device (for the same data at the same
 *   16-byte alignment: the threads' share of a row follows its alignment, so a
 *   view at another offset may differ in the last bits of float64 sums).
 * - Indexing is 64-bit (long long) everywhere, row strides included; a division
 *   helper takes a 32-bit path when both operands fit.
 * - Loads: 16-byte vectors where the pointer is aligned, with a scalar head and
 *   tail, so any width and any (element-aligned) offset works.
 */
#ifndef NF_COMMON_CUH
#define NF_COMMON_CUH

/* What the reduce kernels accumulate (normfast._engine.Reduce, src_c/moments.h). */
#define NF_REDUCE_MOMENTS 0
#define NF_REDUCE_SQUARES 1
#define NF_REDUCE_GRAD_SUMS 2

#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef long long nf_i64;
typedef unsigned long long nf_u64;

#define NF_DEV __device__ __forceinline__
#define NF_FULL 0xffffffffu

/* a / b for a >= 0, b > 0, with a 32-bit fast path. */
NF_DEV nf_i64 nf_div(nf_i64 a, nf_i64 b)
{
    if ((((nf_u64)a | (nf_u64)b) >> 32) == 0) return (nf_i64)((unsigned)a / (unsigned)b);
    return a / b;
}

NF_DEV nf_i64 nf_min(nf_i64 a, nf_i64 b) { return a < b ? a : b; }

/* ---- element types ---------------------------------------------------- */

template <typename T> struct nf_acc { typedef float type; };
template <> struct nf_acc<double> { typedef double type; };

template <typename T> struct nf_cvt;
template <> struct nf_cvt<float> {
    static NF_DEV float to(float v) { return v; }
    static NF_DEV float from(float v) { return v; }
};
template <> struct nf_cvt<double> {
    static NF_DEV double to(double v) { return v; }
    static NF_DEV double from(double v) { return v; }
};
template <> struct nf_cvt<__half> {
    static NF_DEV float to(__half v) { return __half2float(v); }
    static NF_DEV __half from(float v) { return __float2half_rn(v); }
};
template <> struct nf_cvt<__nv_bfloat16> {
    static NF_DEV float to(__nv_bfloat16 v) { return __bfloat162float(v); }
    static NF_DEV __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

/* 16 bytes of T, loaded / stored with one instruction. */
template <typename T> struct alignas(16) nf_vec { T v[16 / sizeof(T)]; };

/* Split a float64 value into hi + lo of type A (lo = 0 for double). */
template <typename A> NF_DEV void nf_split(double m, A &hi, A &lo)
{
    hi = (A)m;
    lo = (A)(m - (double)hi);
}

/* ---- three-component statistics and their merges ------------------------ */

template <typename A> struct nf_s3 { A a, b, c; };

template <typename A> NF_DEV nf_s3<A> nf_zero3()
{
    nf_s3<A> r;
    r.a = A(0); r.b = A(0); r.c = A(0);
    return r;
}

template <typename A> NF_DEV nf_s3<A> nf_make3(A a, A b, A c)
{
    nf_s3<A> r;
    r.a = a; r.b = b; r.c = c;
    return r;
}

template <typename A> NF_DEV nf_s3<A> nf_shfl_down3(nf_s3<A> v, int off)
{
    v.a = __shfl_down_sync(NF_FULL, v.a, off);
    v.b = __shfl_down_sync(NF_FULL, v.b, off);
    v.c = __shfl_down_sync(NF_FULL, v.c, off);
    return v;
}

template <typename A> NF_DEV nf_s3<A> nf_shfl3(nf_s3<A> v, int src)
{
    v.a = __shfl_sync(NF_FULL, v.a, src);
    v.b = __shfl_sync(NF_FULL, v.b, src);
    v.c = __shfl_sync(NF_FULL, v.c, src);
    return v;
}

/* Chan et al. merge of (n, mean, M2) partials; n == 0 is the identity. */
struct nf_chan {
    template <typename A> NF_DEV nf_s3<A> operator()(nf_s3<A> x, nf_s3<A> y) const
    {
        if (y.a == A(0)) return x;
        if (x.a == A(0)) return y;
        const A n = x.a + y.a, d = y.b - x.b, f = y.a / n;
        x.b += d * f;
        x.c += y.c + d * d * (x.a * f);
        x.a = n;
        return x;
    }
};

/* Plain sums (backward sums, dw / db). */
struct nf_add {
    template <typename A> NF_DEV nf_s3<A> operator()(nf_s3<A> x, nf_s3<A> y) const
    {
        x.a += y.a; x.b += y.b; x.c += y.c;
        return x;
    }
};

/* Per-thread shifted sums in float64 about the shift k shared by every thread of a
 * row / unit / lane: (n, S1 = sum(x - k), S2 = sum((x - k)^2)) (see the notes above).
 * The sums of the threads are added (nf_add: one shift, so no Chan step is needed)
 * and nf_moments_of turns the total into (n, mean, M2). */
struct nf_moments {
    double n, k, s1, s2;
    NF_DEV void init(double shift) { n = 0.0; k = shift; s1 = 0.0; s2 = 0.0; }
    NF_DEV void push(double v)
    {
        const double d = v - k;
        n += 1.0;
        s1 += d;
        s2 += d * d;
    }
    NF_DEV void push_sq(double v) { n += 1.0; s2 += v * v; }   /* rms: S1 stays 0 */
    NF_DEV nf_s3<double> sums() const { return nf_make3(n, s1, s2); }
};

/* (n, S1, S2) about k -> (n, mean, M2) with mean = k + S1 / n, M2 = S2 - S1^2 / n >= 0. */
NF_DEV nf_s3<double> nf_moments_of(nf_s3<double> s, double k)
{
    if (s.a == 0.0) return nf_zero3<double>();
    const double d = s.b / s.a;
    double m2 = s.c - s.b * d;
    if (m2 < 0.0) m2 = 0.0;                                     /* keeps NaN */
    return nf_make3(s.a, k + d, m2);
}

/* ---- block-level reduction ----------------------------------------------
 * The block is blockDim.y groups of blockDim.x threads (blockDim.x a multiple
 * of 32, at most 32 warps in all); each group reduces its own value.  Fixed
 * order: lanes by a shfl_down tree, then the group's warps by a second tree.
 * Every thread of the block must call it (it synchronizes); every thread gets
 * its group's result.  sh and res: __shared__ arrays of 32 entries. */
template <typename A, typename Op>
NF_DEV nf_s3<A> nf_group_reduce(nf_s3<A> v, Op op, nf_s3<A> *sh, nf_s3<A> *res)
{
    const int tpr = blockDim.x, tx = threadIdx.x, ty = threadIdx.y, lane = tx & 31;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, nf_shfl_down3(v, o));
    if (tpr == 32) return nf_shfl3(v, 0);
    const int wpr = tpr >> 5, w = tx >> 5;
    if (lane == 0) sh[ty * wpr + w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < wpr ? sh[ty * wpr + lane] : nf_zero3<A>();
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = op(v, nf_shfl_down3(v, o));
        if (lane == 0) res[ty] = v;
    }
    __syncthreads();
    return res[ty];
}

/* ---- vectorized traversal of a contiguous range --------------------------
 * Thread t of nt visits elements of p[0:n): a scalar head up to the first
 * 16-byte boundary, 16-byte vectors (round robin), a scalar tail.
 * f(j, value) with value converted to the accumulator type. */
template <typename T, typename F>
NF_DEV void nf_for(const T *p, nf_i64 n, int t, int nt, F f)
{
    typedef nf_cvt<T> CV;
    const int V = 16 / sizeof(T);
    nf_i64 head = (nf_i64)(((16u - (unsigned)((nf_u64)p & 15u)) & 15u) / sizeof(T));
    if (head > n) head = n;
    for (nf_i64 j = t; j < head; j += nt) f(j, CV::to(p[j]));
    const nf_i64 nv = (n - head) / V;
    const nf_vec<T> *pv = reinterpret_cast<const nf_vec<T> *>(p + head);
#pragma unroll 2
    for (nf_i64 i = t; i < nv; i += nt) {
        const nf_vec<T> w = pv[i];
#pragma unroll
        for (int e = 0; e < V; ++e) f(head + i * V + e, CV::to(w.v[e]));
    }
    for (nf_i64 j = head + nv * V + t; j < n; j += nt) f(j, CV::to(p[j]));
}

/* Same over two arrays of one shape: f(j, x value, q value).  The vector path
 * needs q to share p's alignment; otherwise a scalar loop. */
template <typename T, typename F>
NF_DEV void nf_for2(const T *p, const T *q, nf_i64 n, int t, int nt, F f)
{
    typedef nf_cvt<T> CV;
    const int V = 16 / sizeof(T);
    if ((((nf_u64)p ^ (nf_u64)q) & 15u) != 0) {
        for (nf_i64 j = t; j < n; j += nt) f(j, CV::to(p[j]), CV::to(q[j]));
        return;
    }
    nf_i64 head = (nf_i64)(((16u - (unsigned)((nf_u64)p & 15u)) & 15u) / sizeof(T));
    if (head > n) head = n;
    for (nf_i64 j = t; j < head; j += nt) f(j, CV::to(p[j]), CV::to(q[j]));
    const nf_i64 nv = (n - head) / V;
    const nf_vec<T> *pv = reinterpret_cast<const nf_vec<T> *>(p + head);
    const nf_vec<T> *qv = reinterpret_cast<const nf_vec<T> *>(q + head);
#pragma unroll 2
    for (nf_i64 i = t; i < nv; i += nt) {
        const nf_vec<T> a = pv[i], b = qv[i];
#pragma unroll
        for (int e = 0; e < V; ++e) f(head + i * V + e, CV::to(a.v[e]), CV::to(b.v[e]));
    }
    for (nf_i64 j = head + nv * V + t; j < n; j += nt) f(j, CV::to(p[j]), CV::to(q[j]));
}

/* y[j] = f(j, p[j], q[j], r[j]) over NIN = 1, 2 or 3 inputs (q is read only when
 * NIN >= 2, r when NIN == 3; A(0) is passed instead).  y may alias any input (each
 * element is read before it is written).  16-byte vectors when every pointer shares
 * p's alignment, else scalar accesses. */
template <typename T, int NIN, typename F>
NF_DEV void nf_map(const T *p, const T *q, const T *r, T *y, nf_i64 n, int t, int nt, F f)
{
    typedef nf_cvt<T> CV;
    typedef typename nf_acc<T>::type A;
    const int V = 16 / sizeof(T);
    const nf_u64 pa = (nf_u64)p;
    const bool aligned = (((pa ^ (nf_u64)y) & 15u) == 0) && (NIN < 2 || (((pa ^ (nf_u64)q) & 15u) == 0)) &&
                         (NIN < 3 || (((pa ^ (nf_u64)r) & 15u) == 0));
    nf_i64 head = aligned ? (nf_i64)(((16u - (unsigned)(pa & 15u)) & 15u) / sizeof(T)) : n;
    if (head > n) head = n;
    for (nf_i64 j = t; j < head; j += nt)
        y[j] = CV::from(f(j, CV::to(p[j]), NIN >= 2 ? CV::to(q[j]) : A(0), NIN >= 3 ? CV::to(r[j]) : A(0)));
    const nf_i64 nv = (n - head) / V;
    const nf_vec<T> *pv = reinterpret_cast<const nf_vec<T> *>(p + head);
    const nf_vec<T> *qv = reinterpret_cast<const nf_vec<T> *>(q + head);
    const nf_vec<T> *rv = reinterpret_cast<const nf_vec<T> *>(r + head);
    nf_vec<T> *yv = reinterpret_cast<nf_vec<T> *>(y + head);
#pragma unroll 2
    for (nf_i64 i = t; i < nv; i += nt) {
        const nf_vec<T> a = pv[i];
        nf_vec<T> b, c, o;
        if (NIN >= 2) b = qv[i];
        if (NIN >= 3) c = rv[i];
#pragma unroll
        for (int e = 0; e < V; ++e)
            o.v[e] = CV::from(f(head + i * V + e, CV::to(a.v[e]), NIN >= 2 ? CV::to(b.v[e]) : A(0),
                                NIN >= 3 ? CV::to(c.v[e]) : A(0)));
        yv[i] = o;
    }
    for (nf_i64 j = head + nv * V + t; j < n; j += nt)
        y[j] = CV::from(f(j, CV::to(p[j]), NIN >= 2 ? CV::to(q[j]) : A(0), NIN >= 3 ? CV::to(r[j]) : A(0)));
}

#endif /* NF_COMMON_CUH */
