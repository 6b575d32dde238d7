/* normfast: shared definitions for the C kernels.
 *
 * NB: About the algorithm chosen (read once, applies to every kernel)
 * - Statistics: a reduction is cut into chunks whose boundaries depend only on
 *   the shape (NF_CHUNK = 8192 values in row mode; NF_COL_CHUNK = 32768 values,
 *   at least NF_MIN_ROWS rows, in column mode), never on the thread count.
 *   Inside a chunk we accumulate shifted sums S1 = sum(x - k), S2 = sum((x - k)^2)
 *   in float64, one accumulator per lane (NF_LANES = 16), where the shift k is the
 *   chunk's first value: for float32 input x - k is exact in float64 and the shift
 *   removes the cancellation of S2 - S1^2/n.  Each chunk becomes (n, mean, M2)
 *   and the chunks of a statistic are merged in chunk order with Chan's formula
 *   in its k-way form (nf_mom_merge_k).  Result: single pass, mergeable, bitwise
 *   identical for any thread count (and for every SIMD clone).
 * - Row mode (contiguous segments of D >= NF_ROW_MIN = 32 values) versus column
 *   mode (channels-last: L = C*D lanes per row, walked in tiles of NF_COL_TILE rows
 *   with 16 lanes in registers and the next tile prefetched).
 * - Normalization: y = (x - mean) * (rstd * w) + b is evaluated in float64 and
 *   rounded once to the output type, so the mean keeps all its bits (no
 *   pre-folded shift c = b - mean * a, which cancels catastrophically).
 * - Stores: outputs of NF_STREAM_MIN = 20 MiB or more that are not the input
 *   (not in place) are written with streaming stores (no read-for-ownership).
 * - SIMD: the leaf loops use 8-wide GCC vector types (nf_v8d) written lane by
 *   lane (no reassociation), compiled several times with GCC target_clones
 *   (AVX-512, AVX2, baseline), picked at load time.  -ffp-contract=off keeps
 *   every clone bitwise equal.
 * - Threads: normfast's own pool (pool.h: the caller never waits for a thread
 *   that has not started), work claimed NF_GRAIN_VALUES values at a time, and a
 *   serial threshold NF_PAR_MIN = 32768 values (about 8 us of work, set from a
 *   measured crossover: see below); below it a call runs on the calling thread.
 */
#ifndef NF_COMMON_H
#define NF_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdatomic.h>
#include "parallel.h"

/* target_clones needs GNU ifunc: glibc only (musl has none), GCC on x86-64. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) \
    && !defined(NF_NO_CLONES) && !defined(__SANITIZE_ADDRESS__)
#define NF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NF_CLONES
#endif

#define NF_LANES 16           /* float64 accumulators per leaf loop: 2 zmm / 4 ymm, enough independent
                                 add chains to hide the 4-cycle FP add latency */
#define NF_CHUNK 8192         /* elements per statistics chunk (row mode): 32-64 KB, in L1/L2 while summed;
                                 the shift of a chunk is its first value, so a chunk this short keeps
                                 |x - k| near the data's spread; also the unit of the apply loops */
#define NF_MIN_ROWS 64        /* minimum rows per chunk (column mode): enough rows per lane that the
                                 per-lane (n, mean, M2) and their merge cost < 5% of the pass */
#define NF_COL_CHUNK 32768    /* values per column-mode chunk (kept in L2 while lanes are walked) */
#define NF_PAR_MIN 32768      /* below this many elements a call stays serial.  Measured (2-core AVX-512
                                 VM, float32, serial vs 2 threads interleaved, medians): row forward
                                 18k values 6.4 vs 7.8 us (threads cost), 36k 14.1 vs 10.3, 72k 27.5
                                 vs 16.1; row backward 18k 8.6 vs 9.0, 36k 15.4 vs 11.9; column
                                 reduce / apply 16k-64k: 0.94-1.14x (no gain either way).  Below 32k
                                 values the pool's publish, wake-up and claims (~1-2 us, and a p99 tail
                                 from late workers) cost more than a second core saves. */
#define NF_GRAIN_VALUES 8192  /* values per claim of pool work: ~2 us, far above the ~50 ns of a claim,
                                 small enough that two threads share a job of NF_PAR_MIN values (4 claims) */

typedef struct { double n, mean, m2; } nf_mom;

/* Portable 8-wide vectors (GCC/Clang vector extensions): each target clone lowers them to
 * its widest registers (1 zmm, 2 ymm or 4 xmm) with identical lane-wise results. */
typedef double nf_v8d __attribute__((vector_size(64)));
typedef float nf_v8f __attribute__((vector_size(32)));
static inline nf_v8d nf_splat(double v) { nf_v8d r = {v, v, v, v, v, v, v, v}; return r; }
/* float -> double, 8 lanes.  Written element by element because GCC 12 lowers
 * __builtin_convertvector(nf_v8f, nf_v8d) to two 128-bit conversions plus an extract and an insert
 * even in the AVX-512 clone (5 instructions where one vcvtps2pd zmm does it); the element-wise
 * initializer gives the single instruction.  The same exact conversion, so the same values.
 * Measured (2-core AVX-512 VM, float32, 1 thread, kernel only): the row-wise backward (16, 768)
 * 8.2 -> 4.9 us, (128, 768) 54 -> 35 us; layer_norm (128, 4096) 149 -> 131 us. */
#define nf_f2d8(f) __extension__({ const nf_v8f f_ = (f); \
        (nf_v8d){f_[0], f_[1], f_[2], f_[3], f_[4], f_[5], f_[6], f_[7]}; })
#define NF_LOAD8_float(p) __extension__({ nf_v8f t_; memcpy(&t_, (p), sizeof t_); nf_f2d8(t_); })
#define NF_LOAD8_double(p) __extension__({ nf_v8d t_; memcpy(&t_, (p), sizeof t_); t_; })
#define NF_STORE8_float(p, v) do { nf_v8f t_ = __builtin_convertvector((v), nf_v8f); memcpy((p), &t_, sizeof t_); } while (0)
#define NF_STORE8_double(p, v) do { nf_v8d t_ = (v); memcpy((p), &t_, sizeof t_); } while (0)
/* float16 (issue 12, bounded memory): computed natively where the compiler has _Float16 (GCC >= 12
 * on x86-64), so no float32 copy of x or of the output is ever made.  8 halves are loaded and
 * widened to float64 in registers (exact); results are rounded once from float64 to float16
 * (GCC's double -> _Float16 conversion is correctly rounded, never through float32).  Without
 * _Float16 (NF_HAVE_F16 0) the Python layer converts float16 to float32 as before. */
#if defined(__FLT16_MAX__) && defined(__x86_64__) && !defined(NF_NO_F16)
#define NF_HAVE_F16 1
typedef _Float16 nf_half;
typedef uint16_t nf_v8hu __attribute__((vector_size(16)));
typedef int32_t nf_v8i __attribute__((vector_size(32)));
typedef int64_t nf_v8l __attribute__((vector_size(64)));
/* The conversions are written with integer vector operations (GCC lowers _Float16 <-> double to
 * a library call per value on x86-64 without AVX512-FP16, 30x slower than the kernels).
 * half -> double (exact):  |h| << 13 as float bits times 2^112 is the value for normal and
 *   subnormal halves; exponent 31 (inf/NaN) maps to exponent 255; then widen and copy the sign.
 * double -> half (round to nearest even, once):  a = |d|;
 *   a < 2^-14 (half subnormal or 0): k = rint(a * 2^24), the half's bits are k (k = 1024 is the
 *     smallest normal, whose bits are 1024 too);
 *   else: the 42 dropped mantissa bits rounded to even in the integer bits u of a, then
 *     (u >> 42) - ((1023 - 15) << 10) (a carry moves into the exponent; 65520 and up give
 *     0x7c00 = inf, as IEEE rounding does);  a >= 2^16 -> inf, NaN -> 0x7e00; then the sign. */
static inline __attribute__((always_inline)) nf_v8d nf_h2d8(nf_v8hu h)
{
    const nf_v8i v = __builtin_convertvector(h, nf_v8i), em = v & 0x7fff;
    nf_v8i fb = em << 13;
    nf_v8f f;
    memcpy(&f, &fb, 32);
    f = f * (nf_v8f){0x1p112f, 0x1p112f, 0x1p112f, 0x1p112f, 0x1p112f, 0x1p112f, 0x1p112f, 0x1p112f};
    memcpy(&fb, &f, 32);
    fb |= (em >= 0x7c00) & 0x7f800000;
    memcpy(&f, &fb, 32);
    nf_v8d d = nf_f2d8(f);
    nf_v8l db;
    memcpy(&db, &d, 64);
    db |= __builtin_convertvector(v & 0x8000, nf_v8l) << 48;
    memcpy(&d, &db, 64);
    return d;
}
static inline __attribute__((always_inline)) nf_v8hu nf_d2h8(nf_v8d d)
{
    nf_v8l u;
    memcpy(&u, &d, 64);
    const nf_v8l sign = (u >> 48) & 0x8000;
    u &= 0x7fffffffffffffffLL;
    nf_v8d a;
    memcpy(&a, &u, 64);
    const nf_v8d big = nf_splat(0x1p52);
    nf_v8d k = (a * nf_splat(0x1p24) + big) - big;          /* rint for a < 2^-14 */
    const nf_v8l sub = __builtin_convertvector(k, nf_v8l);
    const nf_v8l nrm = ((u + 0x1ffffffffffLL + ((u >> 42) & 1)) >> 42) - ((int64_t)(1023 - 15) << 10);
    const nf_v8l is_sub = (nf_v8l)(a < nf_splat(0x1p-14)), is_inf = (nf_v8l)(a >= nf_splat(0x1p16)),
                 is_nan = (nf_v8l)(a != a);
    nf_v8l r = (sub & is_sub) | (nrm & ~is_sub);
    r = (r & ~is_inf) | (0x7c00 & is_inf);
    r = (r & ~is_nan) | (0x7e00 & is_nan);
    return __builtin_convertvector(r | sign, nf_v8hu);
}
static inline __attribute__((always_inline)) double nf_h2d(nf_half x)
{
    nf_v8hu h = {0};
    memcpy(&h, &x, 2);
    return nf_h2d8(h)[0];
}
static inline __attribute__((always_inline)) nf_half nf_d2h(double d)
{
    nf_v8hu h = nf_d2h8(nf_splat(d));
    nf_half r;
    memcpy(&r, &h, 2);
    return r;
}
#define NF_LOAD8__Float16(p) __extension__({ nf_v8hu t_; memcpy(&t_, (p), sizeof t_); nf_h2d8(t_); })
#define NF_STORE8__Float16(p, v) do { nf_v8hu t_ = nf_d2h8(v); memcpy((p), &t_, sizeof t_); } while (0)
#define NF_TOD__Float16(v) nf_h2d(v)
#define NF_FROMD__Float16(v) nf_d2h(v)
#else
#define NF_HAVE_F16 0
typedef uint16_t nf_half;     /* storage only: no kernel is instantiated for it */
#endif
/* Scalar conversions of the element type to and from float64 (plain casts but for float16). */
#define NF_TOD_float(v) ((double)(v))
#define NF_TOD_double(v) ((double)(v))
#define NF_FROMD_float(v) ((float)(v))
#define NF_FROMD_double(v) ((double)(v))
#define NF_CAT_(a, b) a##b
#define NF_CAT(a, b) NF_CAT_(a, b)
#define NF_LOAD8(p) NF_CAT(NF_LOAD8_, NF_T)(p)
#define NF_STORE8(p, v) NF_CAT(NF_STORE8_, NF_T)(p, v)
#define NF_TOD(v) NF_CAT(NF_TOD_, NF_T)(v)
#define NF_FROMD(v) NF_CAT(NF_FROMD_, NF_T)(v)


/* Streaming (non-temporal) stores for large outputs that are not read back soon: a normal
 * store first reads the destination line (read-for-ownership), a streaming store does not,
 * which saves a third of the memory traffic of a normalization.  SSE2 (every x86-64) is
 * enough: write-combining merges the 16-byte stores into full lines.  The destination must
 * be 16-byte aligned; callers peel the unaligned head.  Finish with nf_stream_fence(). */
/* Output bytes from which streaming pays: when input and output no longer fit in the last-level
 * cache together.  Measured (2-core AVX-512 VM, 32 MiB L3, float32 layer_norm, 2 threads, out=,
 * medians): output 8 MiB (2048 x 1024): streaming 350 us, cached stores 267 us; 16 MiB: 1048 vs
 * 787 us; 25 MiB (batch_norm NCHW (32, 64, 56, 56)): streaming 1.56 vs 1.87 ms; 32 MiB: 1495 vs
 * 2117 us.  (It was 4 MiB, which sent outputs that fit in L3 to memory.) */
#define NF_STREAM_MIN ((int64_t)20 << 20)
#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define NF_HAVE_STREAM 1
static inline void nf_stream8_float(float *p, nf_v8d v)
{
    nf_v8f f = __builtin_convertvector(v, nf_v8f);
    __m128 lo, hi;
    memcpy(&lo, &f, 16); memcpy(&hi, (const char *)&f + 16, 16);
    _mm_stream_ps(p, lo); _mm_stream_ps(p + 4, hi);
}
static inline void nf_stream8_double(double *p, nf_v8d v)
{
    __m128d a, b, c, d;
    memcpy(&a, &v, 16); memcpy(&b, (const char *)&v + 16, 16);
    memcpy(&c, (const char *)&v + 32, 16); memcpy(&d, (const char *)&v + 48, 16);
    _mm_stream_pd(p, a); _mm_stream_pd(p + 2, b); _mm_stream_pd(p + 4, c); _mm_stream_pd(p + 6, d);
}
#if NF_HAVE_F16
static inline __attribute__((always_inline)) void nf_stream8__Float16(_Float16 *p, nf_v8d v)
{
    nf_v8hu h = nf_d2h8(v);
    __m128i t;
    memcpy(&t, &h, 16);
    _mm_stream_si128((__m128i *)p, t);
}
#endif
static inline void nf_stream_fence(void) { _mm_sfence(); }
/* Bit-exact copy of n bytes, streaming from the first 16-byte aligned destination byte. */
static inline void nf_copy_bytes(void *dst, const void *src, int64_t n, int stream)
{
    char *d = (char *)dst;
    const char *s = (const char *)src;
    if (stream) {
        int64_t head = (int64_t)((16 - ((uintptr_t)d & 15)) & 15);
        if (head > n) head = n;
        memcpy(d, s, (size_t)head);
        d += head; s += head; n -= head;
        for (; n >= 16; n -= 16, d += 16, s += 16)
            _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
    }
    memcpy(d, s, (size_t)n);
}
#else
static inline void nf_copy_bytes(void *dst, const void *src, int64_t n, int stream)
{
    (void)stream; memcpy(dst, src, (size_t)n);
}
#define NF_HAVE_STREAM 0
static inline void nf_stream8_float(float *p, nf_v8d v) { nf_v8f f = __builtin_convertvector(v, nf_v8f); memcpy(p, &f, 32); }
static inline void nf_stream8_double(double *p, nf_v8d v) { memcpy(p, &v, 64); }
static inline void nf_stream_fence(void) {}
#if NF_HAVE_F16
static inline __attribute__((always_inline)) void nf_stream8__Float16(_Float16 *p, nf_v8d v) { NF_STORE8__Float16(p, v); }
#endif
#endif
#define NF_STREAM8(p, v) NF_CAT(nf_stream8_, NF_T)(p, v)

/* Chan's merge in its k-way form: K partials p[0], p[stride], ... (any counts):
 *   n = sum n_i,  mean = m_0 + sum n_i (m_i - m_0) / n,  M2 = sum M2_i + sum n_i (m_i - mean)^2
 * Two short passes and one division instead of K pairwise merges; shifting by m_0 keeps a
 * constant input's mean exact.  Partials with n_i = 0 are skipped. */
static inline nf_mom nf_mom_merge_k(const nf_mom *p, int64_t K, int64_t stride)
{
    nf_mom r = {0.0, 0.0, 0.0};
    int64_t first = -1;
    double n = 0.0, sd = 0.0;
    for (int64_t i = 0; i < K; ++i) {
        const nf_mom *q = p + i * stride;
        if (q->n == 0) continue;
        if (first < 0) first = i;
        n += q->n;
        sd += q->n * (q->mean - p[first * stride].mean);
    }
    if (first < 0) return r;
    double mean = p[first * stride].mean + sd / n;
    if (!isfinite(mean)) {
        /* inf/NaN partials: m_i - m_0 would be inf - inf.  The plain weighted mean gives what
         * NumPy and torch give (inf for [1, inf, 2], NaN for [inf, -inf]). */
        double s = 0.0;
        for (int64_t i = first; i < K; ++i)
            if (p[i * stride].n != 0) s += p[i * stride].n * p[i * stride].mean;
        mean = s / n;
    }
    double m2 = 0.0;
    for (int64_t i = first; i < K; ++i) {
        const nf_mom *q = p + i * stride;
        if (q->n == 0) continue;
        const double d = q->mean - mean;
        m2 += q->m2 + q->n * d * d;
    }
    r.n = n; r.mean = mean; r.m2 = m2;
    return r;
}

/* Lanes -> (n, mean, M2).  rms: the shift is 0 and M2 holds sum(x^2), so that
 * merging (n, 0, sum x^2) with Chan's formula is a plain sum. */
static inline nf_mom nf_lanes_finish(const double *s1, const double *s2, double n, double k, int rms)
{
    double a = 0.0, b = 0.0;
    for (int j = 0; j < NF_LANES; ++j) { a += s1[j]; b += s2[j]; }
    nf_mom r;
    r.n = n;
    if (n == 0) { r.mean = 0.0; r.m2 = 0.0; return r; }
    if (rms) { r.mean = 0.0; r.m2 = b; return r; }
    r.mean = k + a / n;
    r.m2 = b - a * (a / n);
    if (r.m2 < 0) r.m2 = 0.0;   /* keeps NaN */
    return r;
}

/* The shift of a chunk's shifted sums: a data value, but 0 when that value is inf/NaN
 * (x - inf would turn every finite value into NaN instead of propagating the inf). */
static inline double nf_shift(double v) { return isfinite(v) ? v : 0.0; }

static inline int nf_threads(int nt, int64_t work)
{
    return (nt > 1 && work >= NF_PAR_MIN) ? nt : 1;
}

static inline int64_t nf_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Column-mode chunking (shared by every column-mode kernel): rows per chunk of L lanes. */
static inline int64_t nf_col_rows(int64_t L)
{
    int64_t R = NF_COL_CHUNK / L;
    return R < NF_MIN_ROWS ? NF_MIN_ROWS : R;
}

#endif
