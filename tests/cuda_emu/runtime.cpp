/* CUDA emulator runtime (test-only): the block scheduler behind cuda_emu.h, device
 * memory with guard pages, and the launch entry point called through ctypes.
 *
 * Compiled together with the generated kernels file (build.py): that file includes
 * cuda_emu.h, the kernel sources and one NF_EMU_KERNEL line per kernel
 * instantiation, which registers it under its name expression (the string CuPy's
 * RawModule.get_function takes).
 *
 * C API (all return 0 on success, else nonzero with a message in nf_emu_error()):
 *   nf_emu_launch(name, grid[3], block[3], args, codes, nargs, reverse)
 *       args: one 64-bit slot per kernel parameter (pointer, integer or float
 *       bits); codes: one type letter per parameter ('P' device pointer, 'q' int64,
 *       'i' int32, 'Q' uint64, 'I' uint32, 'd' float64, 'f' float32, '?' bool),
 *       checked against the kernel's C++ signature.
 *   nf_emu_alloc(nbytes) / nf_emu_free(ptr): device memory.  The block is 256-byte
 *       aligned (as cudaMalloc) and ends at most 255 bytes before a PROT_NONE page;
 *       the bytes in between hold a canary checked after every launch.  A kernel that
 *       reads or writes past that page, or writes the canary, fails the launch with
 *       the kernel's name and the buffer.  Pages are reserved lazily (MAP_NORESERVE),
 *       so a huge, mostly untouched buffer costs no memory.
 *   nf_emu_kernel_names(): the registered names, '\n'-separated.
 */
#include "cuda_emu.h"

#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__ELF__) && !defined(NF_EMU_UCONTEXT)
#define NF_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace nf_emu {

/* ---------------------------------------------------------------- context switch */

#ifdef NF_EMU_ASM_SWITCH
/* nf_emu_swap(&save_sp, next_sp): push the callee-saved registers (and MXCSR / x87
 * control word) on the current stack, store the stack pointer in *save_sp, load
 * next_sp and pop the same frame from there. */
extern "C" void nf_emu_swap(void **save_sp, void *next_sp);
asm(R"(
    .text
    .p2align 4
    .type nf_emu_swap, @function
nf_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size nf_emu_swap, .-nf_emu_swap
)");
struct Ctx { void *sp; };
#else
struct Ctx { ucontext_t uc; };
#endif

/* ---------------------------------------------------------------- threads */

enum State { RUN = 0, BAR = 1, WARP = 2, DONE = 3 };

struct Thread {
    uint3 tid;                 /* first member: threadIdx reads it through cur */
    int lane, warp;
    int state;
    unsigned wmask;            /* at a warp sync: its mask */
    int xsrc;                  /* warp exchange: source lane (-1: syncwarp) */
    uint64_t xval, xres;       /* published value, received value */
    Ctx ctx;
    char *stack;
};

Thread *cur = nullptr;
uint3 block_idx;
dim3 block_dim, grid_dim;

static const size_t STACK = 256 * 1024;                  /* per CUDA thread, lazily committed */
static const int MAXT = 1024;
static std::vector<Thread> threads(MAXT);
static char *stacks = nullptr;
static long page = 0;
static Ctx sched_ctx;
static void (*g_kernel)(const uint64_t *) = nullptr;
static const uint64_t *g_args = nullptr;
static std::string g_error;

int lane_id() { return cur->lane; }

static void to_scheduler()
{
#ifdef NF_EMU_ASM_SWITCH
    nf_emu_swap(&cur->ctx.sp, sched_ctx.sp);
#else
    swapcontext(&cur->ctx.uc, &sched_ctx.uc);
#endif
}

static void run_thread(Thread *t)
{
    cur = t;
#ifdef NF_EMU_ASM_SWITCH
    nf_emu_swap(&sched_ctx.sp, t->ctx.sp);
#else
    swapcontext(&sched_ctx.uc, &t->ctx.uc);
#endif
    cur = nullptr;
}

static void trampoline()
{
    g_kernel(g_args);
    cur->state = DONE;
    to_scheduler();
    std::abort();                                          /* never resumed */
}

static bool init_stacks()
{
    if (stacks) return true;
    page = sysconf(_SC_PAGESIZE);
    const size_t guard = 16 * (size_t)page;                /* guard pages below each stack */
    const size_t per = STACK + guard;
    void *p = mmap(nullptr, per * MAXT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    stacks = (char *)p;
    for (int i = 0; i < MAXT; ++i) {
        mprotect(stacks + per * i, guard, PROT_NONE);
        threads[i].stack = stacks + per * i + guard;
    }
    return true;
}

static void start_thread(Thread *t)
{
#ifdef NF_EMU_ASM_SWITCH
    /* frame popped by nf_emu_swap: [mxcsr, fpucw] r15 r14 r13 r12 rbx rbp ret */
    uint64_t *top = (uint64_t *)(t->stack + STACK);        /* 16-byte aligned */
    top[-1] = 0;                                           /* trampoline's (unused) return address */
    top[-2] = (uint64_t)(uintptr_t)&trampoline;
    for (int i = 3; i <= 8; ++i) top[-i] = 0;
    uint32_t csr[2] = {0x1f80u, 0x037fu};                  /* default MXCSR / x87 control word */
    std::memcpy(&top[-9], csr, 8);
    t->ctx.sp = &top[-9];
#else
    getcontext(&t->ctx.uc);
    t->ctx.uc.uc_stack.ss_sp = t->stack;
    t->ctx.uc.uc_stack.ss_size = STACK;
    t->ctx.uc.uc_link = nullptr;
    makecontext(&t->ctx.uc, trampoline, 0);
#endif
}

/* ---------------------------------------------------------------- barriers */

void syncthreads()
{
    cur->state = BAR;
    to_scheduler();
}

static void warp_wait(unsigned mask, int src, uint64_t v)
{
    if (((mask >> cur->lane) & 1u) == 0) {
        /* a lane outside its own mask: undefined on the device */
        g_error = "warp sync by a lane outside its mask";
    }
    cur->state = WARP;
    cur->wmask = mask;
    cur->xsrc = src;
    cur->xval = v;
    to_scheduler();
}

void syncwarp(unsigned mask) { warp_wait(mask, -1, 0); }

uint64_t warp_exchange(unsigned mask, uint64_t mine, int src)
{
    warp_wait(mask, src, mine);
    return cur->xres;
}

/* Run one block to completion.  Returns false on a deadlock (error in g_error). */
static bool run_block(int nthreads, bool reverse)
{
    const int nwarps = (nthreads + 31) / 32;
    for (int i = 0; i < nthreads; ++i) {
        Thread *t = &threads[i];
        t->tid.x = i % block_dim.x;
        t->tid.y = (i / block_dim.x) % block_dim.y;
        t->tid.z = i / (block_dim.x * block_dim.y);
        t->lane = i & 31;
        t->warp = i >> 5;
        t->state = RUN;
        start_thread(t);
    }
    for (;;) {
        for (int wi = 0; wi < nwarps; ++wi) {
            const int w = reverse ? nwarps - 1 - wi : wi;
            const int l0 = w * 32, n = std::min(32, nthreads - l0);
            const unsigned exists = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
            for (;;) {
                for (int li = 0; li < n; ++li) {
                    Thread *t = &threads[l0 + (reverse ? n - 1 - li : li)];
                    if (t->state == RUN) run_thread(t);
                    if (!g_error.empty()) return false;
                }
                /* release every group of lanes waiting at a warp sync with one mask */
                bool released = false;
                for (int li = 0; li < n; ++li) {
                    Thread *t = &threads[l0 + li];
                    if (t->state != WARP) continue;
                    const unsigned m = t->wmask & exists;
                    bool all = true;
                    for (int k = 0; k < n && all; ++k)
                        if ((m >> k) & 1u) {
                            const Thread *u = &threads[l0 + k];
                            all = u->state == WARP && u->wmask == t->wmask;
                        }
                    if (!all) continue;
                    for (int k = 0; k < n; ++k)
                        if ((m >> k) & 1u) {
                            Thread *u = &threads[l0 + k];
                            const int s = u->xsrc;
                            u->xres = (s >= 0 && s < n && ((m >> s) & 1u)) ? threads[l0 + s].xval : ~(uint64_t)0;
                        }
                    for (int k = 0; k < n; ++k)
                        if ((m >> k) & 1u) threads[l0 + k].state = RUN;
                    released = true;
                }
                if (!released) break;
            }
        }
        int done = 0, bar = 0, warp = 0;
        for (int i = 0; i < nthreads; ++i) {
            const int s = threads[i].state;
            done += s == DONE;
            bar += s == BAR;
            warp += s == WARP;
        }
        if (done == nthreads) return true;
        if (warp) {
            for (int i = 0; i < nthreads; ++i)
                if (threads[i].state == WARP) {
                    const Thread &t = threads[i];
                    char buf[256];
                    std::snprintf(buf, sizeof buf,
                                  "divergent warp sync: thread (%u,%u,%u) of block (%u,%u,%u) waits at a warp "
                                  "sync (mask 0x%08x) that lanes of its mask never reach (exited or at "
                                  "__syncthreads)", t.tid.x, t.tid.y, t.tid.z, block_idx.x, block_idx.y,
                                  block_idx.z, t.wmask);
                    g_error = buf;
                    return false;
                }
        }
        for (int i = 0; i < nthreads; ++i)
            if (threads[i].state == BAR) threads[i].state = RUN;
        (void)bar;
    }
}

/* ---------------------------------------------------------------- memory */

struct Alloc { char *map; size_t maplen; size_t nbytes; };
static std::map<uintptr_t, Alloc> allocs;                  /* data pointer -> mapping */
static const unsigned char CANARY = 0xa5;

static size_t round_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

/* The allocation holding address p: [data, data + nbytes + slack). */
static const Alloc *find_alloc(uintptr_t p, uintptr_t *base, size_t slack = 1)
{
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return nullptr;
    --it;
    if (p >= it->first + it->second.nbytes + slack) return nullptr;
    *base = it->first;
    return &it->second;
}

static bool check_canaries(std::string *why)
{
    for (auto &kv : allocs) {
        const char *d = (const char *)kv.first;
        const size_t n = kv.second.nbytes, end = round_up(n ? n : 1, 256);
        for (size_t i = n; i < end; ++i)
            if ((unsigned char)d[i] != CANARY) {
                char buf[200];
                std::snprintf(buf, sizeof buf, "wrote %zu byte(s) past the end of a %zu-byte device buffer",
                              i - n + 1, n);
                *why = buf;
                return false;
            }
    }
    return true;
}

/* ---------------------------------------------------------------- faults */

static sigjmp_buf fault_jmp;
static volatile sig_atomic_t in_kernel = 0;
static void *volatile fault_addr = nullptr;
static volatile int fault_sig = 0;

static void on_fault(int sig, siginfo_t *si, void *)
{
    if (!in_kernel) {                                      /* not ours: default action */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    fault_addr = si->si_addr;
    fault_sig = sig;
    siglongjmp(fault_jmp, 1);
}

/* ---------------------------------------------------------------- registry */

struct Kernel { void (*run)(const uint64_t *); std::string codes; };

static std::map<std::string, Kernel> &registry()
{
    static std::map<std::string, Kernel> r;
    return r;
}

Reg::Reg(const char *name, void (*run)(const uint64_t *), const char *codes)
{
    registry()[name] = Kernel{run, codes};
}

}  // namespace nf_emu

using namespace nf_emu;

extern "C" {

const char *nf_emu_error() { return g_error.c_str(); }

const char *nf_emu_kernel_names()
{
    static std::string s;
    s.clear();
    for (auto &kv : registry()) s += kv.first + "\n";
    return s.c_str();
}

void *nf_emu_alloc(size_t nbytes)
{
    if (!page) page = sysconf(_SC_PAGESIZE);
    const size_t body = round_up(nbytes ? nbytes : 1, 256);
    const size_t maplen = round_up(body, (size_t)page) + (size_t)page;
    void *p = mmap(nullptr, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    char *map = (char *)p;
    char *guard = map + maplen - page;
    mprotect(guard, (size_t)page, PROT_NONE);
    char *data = guard - body;
    std::memset(data + nbytes, CANARY, body - nbytes);
    allocs[(uintptr_t)data] = Alloc{map, maplen, nbytes};
    return data;
}

int nf_emu_free(void *data)
{
    auto it = allocs.find((uintptr_t)data);
    if (it == allocs.end()) return 1;
    munmap(it->second.map, it->second.maplen);
    allocs.erase(it);
    return 0;
}

int nf_emu_launch(const char *name, const unsigned *grid, const unsigned *block, const uint64_t *args,
                  const char *codes, int nargs, int reverse)
{
    g_error.clear();
    auto it = registry().find(name);
    if (it == registry().end()) {
        g_error = std::string("no kernel named '") + name + "'";
        return 1;
    }
    const Kernel &k = it->second;
    const std::string want = k.codes;
    if ((int)want.size() != nargs) {
        g_error = std::string(name) + ": takes " + std::to_string(want.size()) + " arguments, got " +
                  std::to_string(nargs);
        return 1;
    }
    for (int i = 0; i < nargs; ++i) {
        const char w = want[i], g = codes[i];
        const bool ok = w == g || (w == 'P' && g == 'Q');
        if (!ok) {
            g_error = std::string(name) + ": argument " + std::to_string(i) + " must be of kind '" + w +
                      "' (P pointer, q int64, i int32, Q uint64, I uint32, d float64, f float32, ? bool), got '" +
                      g + "'";
            return 1;
        }
        if (w == 'P' && args[i] != 0) {
            uintptr_t base;
            if (!find_alloc((uintptr_t)args[i], &base)) {
                g_error = std::string(name) + ": argument " + std::to_string(i) + " is not a device pointer";
                return 1;
            }
        }
    }
    const unsigned long long nt = (unsigned long long)block[0] * block[1] * block[2];
    if (nt == 0 || nt > 1024 || block[2] > 64 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)",
                      name, grid[0], grid[1], grid[2], block[0], block[1], block[2]);
        g_error = buf;
        return 1;
    }
    if (!init_stacks()) {
        g_error = "cannot map the thread stacks";
        return 1;
    }
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    g_kernel = k.run;
    g_args = args;

    struct sigaction sa, old_segv, old_bus;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    static char altstack_mem[1 << 16];
    stack_t alt, old_alt;
    alt.ss_sp = altstack_mem;
    alt.ss_size = sizeof altstack_mem;
    alt.ss_flags = 0;
    sigaltstack(&alt, &old_alt);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    int rc = 0;
    if (sigsetjmp(fault_jmp, 1) == 0) {
        in_kernel = 1;
        for (unsigned bz = 0; bz < grid[2] && !rc; ++bz)
            for (unsigned by = 0; by < grid[1] && !rc; ++by)
                for (unsigned bx = 0; bx < grid[0] && !rc; ++bx) {
                    block_idx = uint3{bx, by, bz};
                    if (!run_block((int)nt, reverse != 0)) rc = 1;
                }
        in_kernel = 0;
    } else {
        in_kernel = 0;
        cur = nullptr;
        uintptr_t base = 0;
        const uintptr_t a = (uintptr_t)fault_addr;
        const Alloc *al = a ? find_alloc(a, &base, 256 + (size_t)page) : nullptr;
        char buf[320];
        if (al)
            std::snprintf(buf, sizeof buf, "%s: invalid access at %p in block (%u,%u,%u): %zu bytes past the "
                          "start of a %zu-byte device buffer", name, fault_addr, block_idx.x, block_idx.y,
                          block_idx.z, (size_t)(a - base), al->nbytes);
        else if (a == 0 && fault_sig == SIGSEGV)
            std::snprintf(buf, sizeof buf, "%s: invalid memory access in block (%u,%u,%u) (null pointer, or a "
                          "general protection fault such as a misaligned 16-byte access)", name,
                          block_idx.x, block_idx.y, block_idx.z);
        else
            std::snprintf(buf, sizeof buf, "%s: invalid access at %p in block (%u,%u,%u) (outside every device "
                          "buffer, or a thread stack overflow)", name, fault_addr, block_idx.x, block_idx.y,
                          block_idx.z);
        g_error = buf;
        rc = 1;
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_alt, nullptr);
    if (rc == 0) {
        std::string why;
        if (!check_canaries(&why)) {
            g_error = std::string(name) + ": " + why;
            rc = 1;
        }
    } else if (g_error.find(name) != 0) {
        g_error = std::string(name) + ": " + g_error;
    }
    g_kernel = nullptr;
    g_args = nullptr;
    return rc;
}

}  // extern "C"
