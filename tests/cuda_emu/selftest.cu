/* Self-test kernels of the emulator (tests/test_gpu_emulator.py), not normfast code:
 * each exercises one emulated CUDA feature, or a bug the emulator must report. */
#include "cuda_emu.h"

typedef long long i64;

/* warp reduction by __shfl_down_sync: one sum per warp */
extern "C" __global__ void emu_warp_sum(const float *x, float *y)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) y[i >> 5] = v;
}

/* every shuffle flavour on lane ids: y[4 * i + (0: shfl from lane 3 of each 8-wide segment,
 * 1: shfl_up 1, 2: shfl_xor 5, 3: shfl_down 2 with width 16)] */
extern "C" __global__ void emu_shfl_ops(int *y)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
    y[4 * i + 0] = __shfl_sync(0xffffffffu, lane, 3, 8);
    y[4 * i + 1] = __shfl_up_sync(0xffffffffu, lane, 1);
    y[4 * i + 2] = __shfl_xor_sync(0xffffffffu, lane, 5);
    y[4 * i + 3] = __shfl_down_sync(0xffffffffu, lane, 2, 16);
}

/* block reduction through __shared__ memory and __syncthreads (blockDim.x a power of 2) */
extern "C" __global__ void emu_block_sum(const double *x, double *y)
{
    __shared__ double s[1024];
    const int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) y[blockIdx.x] = s[0];
}

/* 2-d / 3-d indices: y[linear thread] = packed (threadIdx, blockIdx) */
extern "C" __global__ void emu_indices(int *y)
{
    const int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    y[b * nt + t] = (int)(threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 |
                          blockIdx.z << 20);
}

extern "C" __global__ void emu_atomic_count(int *c, double *s)
{
    atomicAdd(c, 1);
    atomicAdd(s, 0.5);
}

/* parameter passing: every supported type lands in out[] */
extern "C" __global__ void emu_params(int a, i64 b, double c, float d, unsigned e, bool f, double *out)
{
    if (threadIdx.x == 0) {
        out[0] = a; out[1] = (double)b; out[2] = c; out[3] = d; out[4] = e; out[5] = f ? 1.0 : 0.0;
    }
}

/* float -> half / bfloat16 (round to nearest even) and back */
extern "C" __global__ void emu_convert(const float *x, unsigned short *h, unsigned short *b, float *hf, float *bf,
                                       i64 n)
{
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)blockDim.x * gridDim.x) {
        const __half hv = __float2half_rn(x[i]);
        const __nv_bfloat16 bv = __float2bfloat16_rn(x[i]);
        h[i] = __half_as_ushort(hv);
        b[i] = __bfloat16_as_ushort(bv);
        hf[i] = __half2float(__ushort_as_half(h[i]));
        bf[i] = __bfloat162float(__ushort_as_bfloat16(b[i]));
    }
}

/* ---- bugs the emulator must report --------------------------------------- */

/* reads / writes element i of a buffer (out of bounds when i is past the end) */
extern "C" __global__ void emu_read_at(const float *x, i64 i, float *y)
{
    if (threadIdx.x == 0) y[0] = x[i];
}

extern "C" __global__ void emu_write_at(float *y, i64 i)
{
    if (threadIdx.x == 0) y[i] = 1.0f;
}

/* half a warp at a full-mask shuffle */
extern "C" __global__ void emu_divergent_shfl(float *y)
{
    if ((threadIdx.x & 31) < 16) y[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0);
}

/* threads that exit before a __syncthreads count as arrived (as on the device) */
extern "C" __global__ void emu_exit_then_sync(float *y)
{
    if (threadIdx.x >= 32) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

/* a race: thread 0 writes shared memory that the others read without a barrier; the
 * result depends on the order of the threads */
extern "C" __global__ void emu_race(int tag, int *y)
{
    __shared__ int s;
    if (threadIdx.x == 0) s = tag;
    y[threadIdx.x] = s;
}

/* unbounded recursion: a stack overflow into the guard page */
__device__ __noinline__ int emu_deep(volatile int *p, int n)
{
    volatile char pad[1024];
    pad[0] = (char)n;
    return n <= 0 ? pad[0] : emu_deep(p, n - 1) + pad[0] + *p;
}

extern "C" __global__ void emu_stack_overflow(int *y)
{
    y[threadIdx.x] = emu_deep(y, 1 << 20);
}

NF_EMU_KERNEL("emu_warp_sum", emu_warp_sum)
NF_EMU_KERNEL("emu_shfl_ops", emu_shfl_ops)
NF_EMU_KERNEL("emu_block_sum", emu_block_sum)
NF_EMU_KERNEL("emu_indices", emu_indices)
NF_EMU_KERNEL("emu_atomic_count", emu_atomic_count)
NF_EMU_KERNEL("emu_params", emu_params)
NF_EMU_KERNEL("emu_convert", emu_convert)
NF_EMU_KERNEL("emu_read_at", emu_read_at)
NF_EMU_KERNEL("emu_write_at", emu_write_at)
NF_EMU_KERNEL("emu_divergent_shfl", emu_divergent_shfl)
NF_EMU_KERNEL("emu_exit_then_sync", emu_exit_then_sync)
NF_EMU_KERNEL("emu_race", emu_race)
NF_EMU_KERNEL("emu_stack_overflow", emu_stack_overflow)
