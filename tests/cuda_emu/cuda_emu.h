/* cuda_emu.h: just enough CUDA for g++ to compile normfast's .cu kernels as C++
 * and run them on the CPU (test-only; see tests/cuda_emu/__init__.py).
 *
 * Execution model (runtime.cpp):
 * - A launch runs its blocks one after another.  Every CUDA thread of a block is
 *   a coroutine (own stack, cooperative switch: a few instructions on x86-64,
 *   ucontext elsewhere), all on one OS thread.  Scheduling is deterministic:
 *   warp by warp, lanes in order (or in reverse order: NF_EMU_ORDER / launch
 *   option, to expose code that depends on the order of unsynchronized threads).
 * - __syncthreads(): the thread waits until every thread of the block that has
 *   not exited waits there too (exited threads count as arrived).
 * - Warp intrinsics (__shfl*_sync, __syncwarp): the lane waits until every lane
 *   of its warp named in the mask is there; a lane of the mask that has exited
 *   or waits at another barrier is reported as an error (divergent warp sync).
 *   A shuffle reading a lane outside the mask returns NaN bits.
 * - __shared__ variables are function statics: one block runs at a time, so every
 *   block has them to itself.  They are not reset between blocks (on a GPU a block
 *   starts with garbage; here with what the previous block left).
 * - Atomics are plain read-modify-write (threads never preempt each other).
 * - Arithmetic is the host's IEEE arithmetic, compiled without contraction
 *   (-ffp-contract=off: no FMA, i.e. never more accurate than the device) and
 *   without flush-to-zero.  __half / __nv_bfloat16 convert with round to
 *   nearest even, as __float2half_rn / __float2bfloat16_rn do.
 *
 * Not emulated (the kernels must not rely on it): implicit warp-synchronous
 * execution (a warp's lanes run one after another between sync points, so shared
 * memory written by one lane is only visible to the others after a barrier or a
 * __syncwarp), the memory model of concurrent blocks, timing, texture / surface
 * memory, cooperative groups, dynamic parallelism.
 */
#ifndef NF_CUDA_EMU_H
#define NF_CUDA_EMU_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define NF_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static __attribute__((section("nf_emu_shared"), aligned(16)))

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };

namespace nf_emu {

struct Thread;                                  /* runtime.cpp */
extern Thread *cur;                             /* the running CUDA thread */
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
void syncthreads();
void syncwarp(unsigned mask);
/* Publish 8 bytes for the lanes of the warp, wait for every lane of `mask`, and
 * return what lane `src` published (NaN bits when src is outside the mask). */
uint64_t warp_exchange(unsigned mask, uint64_t mine, int src);
int lane_id();

template <typename T> inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T> inline T from_bits(uint64_t b)
{
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace nf_emu

/* ---- kernel registry (the generated kernels file registers every instantiation) ---- */
namespace nf_emu {
struct Reg { Reg(const char *name, void (*run)(const uint64_t *), const char *codes); };

template <typename P, typename = void> struct code_of;      /* no entry: unsupported parameter type */
template <typename P> struct code_of<P *> { static constexpr char c = 'P'; };
template <> struct code_of<long long> { static constexpr char c = 'q'; };
template <> struct code_of<long> { static constexpr char c = sizeof(long) == 8 ? 'q' : 'i'; };
template <> struct code_of<int> { static constexpr char c = 'i'; };
template <> struct code_of<unsigned long long> { static constexpr char c = 'Q'; };
template <> struct code_of<unsigned long> { static constexpr char c = sizeof(long) == 8 ? 'Q' : 'I'; };
template <> struct code_of<unsigned> { static constexpr char c = 'I'; };
template <> struct code_of<double> { static constexpr char c = 'd'; };
template <> struct code_of<float> { static constexpr char c = 'f'; };
template <> struct code_of<bool> { static constexpr char c = '?'; };

template <typename P> inline P arg_of(uint64_t v)
{
    if constexpr (std::is_pointer<P>::value) {
        return reinterpret_cast<P>((uintptr_t)v);
    } else {
        P r;
        std::memcpy(&r, &v, sizeof(P));                       /* little endian: the low bytes */
        return r;
    }
}

template <auto F> struct Entry;
template <typename... P, void (*F)(P...)> struct Entry<F> {
    static constexpr char codes[] = {code_of<typename std::decay<P>::type>::c..., 0};
    template <size_t... I> static void call(const uint64_t *a, std::index_sequence<I...>)
    {
        F(arg_of<typename std::decay<P>::type>(a[I])...);
    }
    static void run(const uint64_t *a) { call(a, std::index_sequence_for<P...>{}); }
};
}  // namespace nf_emu

#define NF_EMU_CAT2(a, b) a##b
#define NF_EMU_CAT(a, b) NF_EMU_CAT2(a, b)
#define NF_EMU_KERNEL(name, ...)                                                                   \
    static nf_emu::Reg NF_EMU_CAT(nf_emu_reg_, __COUNTER__)(name, &nf_emu::Entry<&__VA_ARGS__>::run, \
                                                            nf_emu::Entry<&__VA_ARGS__>::codes);

#define threadIdx (*reinterpret_cast<const uint3 *>(nf_emu::cur))
#define blockIdx (nf_emu::block_idx)
#define blockDim (nf_emu::block_dim)
#define gridDim (nf_emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { nf_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { nf_emu::syncwarp(mask); }

template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    const int lane = nf_emu::lane_id();
    const int s = (lane & ~(width - 1)) + (src & (width - 1));
    return nf_emu::from_bits<T>(nf_emu::warp_exchange(mask, nf_emu::to_bits(v), s));
}

template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    const int lane = nf_emu::lane_id();
    const int s = ((lane & (width - 1)) + (int)delta < width) ? lane + (int)delta : lane;
    return nf_emu::from_bits<T>(nf_emu::warp_exchange(mask, nf_emu::to_bits(v), s));
}

template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    const int lane = nf_emu::lane_id();
    const int s = ((lane & (width - 1)) >= (int)delta) ? lane - (int)delta : lane;
    return nf_emu::from_bits<T>(nf_emu::warp_exchange(mask, nf_emu::to_bits(v), s));
}

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32)
{
    const int lane = nf_emu::lane_id();
    int s = lane ^ lm;
    if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
    return nf_emu::from_bits<T>(nf_emu::warp_exchange(mask, nf_emu::to_bits(v), s));
}

/* ---- atomics: the threads of the emulator never preempt each other -------- */
template <typename T> inline T atomicAdd(T *p, T v) { T o = *p; *p = o + v; return o; }
template <typename T> inline T atomicSub(T *p, T v) { T o = *p; *p = o - v; return o; }
template <typename T> inline T atomicMax(T *p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <typename T> inline T atomicMin(T *p, T v) { T o = *p; if (v < o) *p = v; return o; }
template <typename T> inline T atomicExch(T *p, T v) { T o = *p; *p = v; return o; }
template <typename T> inline T atomicCAS(T *p, T c, T v) { T o = *p; if (o == c) *p = v; return o; }

/* ---- math intrinsics ----------------------------------------------------- */
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
using std::sqrt;
template <typename T> inline T __ldg(const T *p) { return *p; }

/* ---- __half / __nv_bfloat16 (cuda_fp16.h / cuda_bf16.h) ------------------ */
struct __half { unsigned short __x; };
struct __nv_bfloat16 { unsigned short __x; };

inline float __half2float(__half h)
{
    const uint32_t s = (uint32_t)(h.__x & 0x8000u) << 16, e = (h.__x >> 10) & 0x1fu, m = h.__x & 0x3ffu;
    uint32_t b;
    if (e == 0x1f) {
        b = s | 0x7f800000u | (m << 13);                       /* inf / NaN */
    } else if (e != 0) {
        b = s | ((e + 112u) << 23) | (m << 13);                /* normal: bias 15 -> 127 */
    } else if (m == 0) {
        b = s;                                                 /* +-0 */
    } else {                                                   /* subnormal: m * 2^-24 */
        const float f = (float)m * 5.9604644775390625e-08f;
        std::memcpy(&b, &f, 4);
        b |= s;
    }
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

inline __half __float2half_rn(float f)
{
    uint32_t b;
    std::memcpy(&b, &f, 4);
    const uint32_t s = (b >> 16) & 0x8000u;
    const uint32_t a = b & 0x7fffffffu;
    __half h;
    if (a >= 0x7f800000u) {                                    /* inf / NaN (NaN stays NaN) */
        h.__x = (unsigned short)(s | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0u));
        return h;
    }
    if (a >= 0x477ff000u) {                                    /* rounds to >= 65520: inf */
        h.__x = (unsigned short)(s | 0x7c00u);
        return h;
    }
    if (a >= 0x38800000u) {                                    /* normal half (>= 2^-14) */
        const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);      /* round to nearest even at bit 13 */
        h.__x = (unsigned short)(s | ((r - 0x38000000u) >> 13));
        return h;
    }
    /* subnormal half or zero: value = a_float; half subnormal unit 2^-24 */
    float af;
    std::memcpy(&af, &a, 4);
    const float q = af * 16777216.0f;                          /* exact scaling by 2^24 */
    float r = std::nearbyint(q);                               /* round half even (default mode) */
    h.__x = (unsigned short)(s | (uint32_t)r);                 /* r <= 1024: 1024 is the smallest normal */
    return h;
}

inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 h)
{
    const uint32_t b = (uint32_t)h.__x << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t b;
    std::memcpy(&b, &f, 4);
    __nv_bfloat16 h;
    if ((b & 0x7fffffffu) > 0x7f800000u) {                     /* NaN: keep it quiet NaN */
        h.__x = (unsigned short)((b >> 16) | 0x40u);
        return h;
    }
    b += 0x7fffu + ((b >> 16) & 1u);                           /* round to nearest even */
    h.__x = (unsigned short)(b >> 16);
    return h;
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }

#endif /* NF_CUDA_EMU_H */
