/* normfast: the thread pool every CPU kernel runs on (one per process, in normfast._cpu._pool).
 *
 * NB: About the algorithm chosen
 * OpenMP's parallel regions end with a barrier: the calling thread waits until every thread of
 * the team has arrived, also those the OS has not scheduled yet.  On a machine whose cores are
 * busy with other processes that wait is a scheduler time slice (milliseconds) for a call whose
 * serial time is microseconds.  This pool never waits for a thread that has not started:
 *  - a job is U units cut at boundaries fixed by the shape; threads claim `grain` units at a
 *    time from one shared counter, the calling thread included, so the caller alone can do all
 *    of it;
 *  - when the counter is exhausted the caller closes the job and waits only for the workers
 *    that are inside it (they hold claimed units); a worker that wakes later sees the job
 *    closed (or a newer generation) and goes back to sleep without touching it;
 *  - which thread computes a unit never changes the unit's result, so results are bitwise
 *    identical for every thread count and every schedule;
 *  - one job at a time: a caller that finds the pool busy (another Python thread's call) runs
 *    its job serially instead of queueing;
 *  - after fork() the child's pool has no threads: it is rebuilt on first use (pid check).
 * Workers spin for NF_POOL_SPIN pause instructions (~20 us) after a job, so a burst of calls
 * finds them awake (no system call on the caller's path), then sleep on a condition variable.
 * A worker the OS preempts while it holds a claimed unit still makes the caller wait (a unit
 * cannot be redone by another thread: in-place outputs and accumulated partials are not
 * idempotent).  So the pool watches itself: when the caller of a job had to wait for workers more
 * than NF_POOL_STALL_NS plus its own share of the job (a worker that took over twice the caller's
 * time: not an uneven share, e.g. first-touch page faults of a new output, which the measured
 * quarter-share rule mistook for preemption on layer_norm (2048, 1024) and sent whole runs serial),
 * the cores are busy with other work, and jobs run serially for a back-off period (NF_POOL_BACKOFF_NS, doubling on repeated stalls up to 64x, reset by a
 * job that runs without one); then one parallel job probes again.  Serial jobs give the same
 * results, so this changes only the timing.
 */
#ifndef NF_POOL_H
#define NF_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define nf_pause() _mm_pause()
#else
#define nf_pause() ((void)0)
#endif

#include "parallel.h"

#define NF_POOL_MAX 256        /* worker threads at most */
#define NF_POOL_SPIN 2000      /* pause instructions a worker spins after a job (~20 us) */
#define NF_POOL_STALL_NS 10000      /* a caller waiting > 10 us + its own share of the job for
                                       workers: a unit's worth of work is ~2-5 us, so only a preempted
                                       (or slowed) worker makes it wait that long */
#define NF_POOL_BACKOFF_NS 20000000 /* 20 ms of serial jobs after a stall (x2 per repeated stall) */

static struct {
    pthread_mutex_t submit;            /* held by the caller of the running job */
    pthread_mutex_t sleep_m;
    pthread_cond_t sleep_cv;
    _Atomic uint64_t gen;              /* bumped to publish a job */
    _Atomic int open;                  /* 1 while the current job accepts workers */
    _Atomic int64_t next;              /* next unit to claim */
    _Atomic int active;                /* workers inside the current job */
    _Atomic int sleepers;
    _Atomic int want;                  /* workers 1 .. want-1 take part */
    _Atomic int64_t U, grain;
    _Atomic(nf_range_fn) fn;
    _Atomic(void *) ctx;
    int started;                       /* worker threads created (ids 1 .. started) */
    pid_t pid;                         /* the process that created them */
    int64_t serial_until;              /* monotonic ns: jobs run serially until then (stall back-off) */
    int backoff_shift;                 /* back-off = NF_POOL_BACKOFF_NS << backoff_shift */
    _Atomic int64_t stalls;            /* jobs whose caller waited > NF_POOL_STALL_NS (statistics) */
} nf_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void nf_pool_claim(void)
{
    const int64_t U = atomic_load(&nf_pool.U), grain = atomic_load(&nf_pool.grain);
    const nf_range_fn fn = atomic_load(&nf_pool.fn);
    void *ctx = atomic_load(&nf_pool.ctx);
    for (;;) {
        const int64_t u0 = atomic_fetch_add(&nf_pool.next, grain);
        if (u0 >= U) return;
        fn(ctx, u0, u0 + grain < U ? u0 + grain : U);
    }
}

static void *nf_pool_worker(void *arg)
{
    const int id = (int)(intptr_t)arg;
    uint64_t seen = atomic_load(&nf_pool.gen);
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load(&nf_pool.gen)) == seen) {
            if (++spins < NF_POOL_SPIN) { nf_pause(); continue; }
            pthread_mutex_lock(&nf_pool.sleep_m);
            atomic_fetch_add(&nf_pool.sleepers, 1);
            while (atomic_load(&nf_pool.gen) == seen) pthread_cond_wait(&nf_pool.sleep_cv, &nf_pool.sleep_m);
            atomic_fetch_sub(&nf_pool.sleepers, 1);
            pthread_mutex_unlock(&nf_pool.sleep_m);
        }
        seen = g;
        atomic_fetch_add(&nf_pool.active, 1);
        /* Inside (active > 0) the caller cannot close and reuse the job: check it is still ours. */
        if (atomic_load(&nf_pool.open) && atomic_load(&nf_pool.gen) == seen && id < atomic_load(&nf_pool.want))
            nf_pool_claim();
        atomic_fetch_sub(&nf_pool.active, 1);
    }
    return NULL;
}

/* In a child after fork() (one thread): the locks and the pool state start afresh. */
static void nf_pool_reset_after_fork(void)
{
    pthread_mutex_init(&nf_pool.submit, NULL);
    pthread_mutex_init(&nf_pool.sleep_m, NULL);
    pthread_cond_init(&nf_pool.sleep_cv, NULL);
    nf_pool.open = nf_pool.active = nf_pool.sleepers = 0;
    nf_pool.started = 0;
    nf_pool.pid = getpid();
    nf_pool.serial_until = 0;
    nf_pool.backoff_shift = 0;
}

/* Jobs whose caller waited for a preempted worker (normfast._cpu._pool.stalls()). */
static int64_t nf_pool_stalls(void) { return atomic_load(&nf_pool.stalls); }

static inline int64_t nf_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Run fn over [0, U) in claims of `grain` units on up to nt threads (the caller included). */
static void nf_pool_run(int nt, int64_t U, int64_t grain, nf_range_fn fn, void *ctx)
{
    if (grain < 1) grain = 1;
    if (nt > NF_POOL_MAX + 1) nt = NF_POOL_MAX + 1;
    if (nt <= 1 || U <= grain) { fn(ctx, 0, U); return; }
    if (nf_pool.pid != getpid()) {
        /* First use, or a child after fork(): its copy of the pool has no threads.  A fork
         * while another thread held `submit` would leave it locked in the child: re-initialise. */
        if (nf_pool.started || nf_pool.pid) nf_pool_reset_after_fork();
        nf_pool.pid = getpid();
    }
    if (pthread_mutex_trylock(&nf_pool.submit) != 0) { fn(ctx, 0, U); return; }   /* busy: serial */
    if (nf_pool.serial_until && nf_now_ns() < nf_pool.serial_until) {             /* backing off */
        pthread_mutex_unlock(&nf_pool.submit);
        fn(ctx, 0, U);
        return;
    }
    while (nf_pool.started < nt - 1) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&t, &at, nf_pool_worker, (void *)(intptr_t)(nf_pool.started + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;                       /* run with the threads we have */
        nf_pool.started++;
    }
    atomic_store(&nf_pool.U, U);
    atomic_store(&nf_pool.grain, grain);
    atomic_store(&nf_pool.fn, fn);
    atomic_store(&nf_pool.ctx, ctx);
    atomic_store(&nf_pool.want, nt);
    atomic_store(&nf_pool.next, 0);
    atomic_store(&nf_pool.open, 1);
    atomic_fetch_add(&nf_pool.gen, 1);
    if (atomic_load(&nf_pool.sleepers) > 0) {
        pthread_mutex_lock(&nf_pool.sleep_m);
        pthread_cond_broadcast(&nf_pool.sleep_cv);
        pthread_mutex_unlock(&nf_pool.sleep_m);
    }
    const int64_t start = nf_now_ns();
    nf_pool_claim();
    atomic_store(&nf_pool.open, 0);
    if (atomic_load(&nf_pool.active) > 0) {
        const int64_t t0 = nf_now_ns();
        while (atomic_load(&nf_pool.active) > 0) nf_pause();   /* only workers holding claimed units */
        const int64_t t1 = nf_now_ns();
        if (t1 - t0 > NF_POOL_STALL_NS + (t0 - start)) {
            atomic_fetch_add(&nf_pool.stalls, 1);
            nf_pool.serial_until = t1 + ((int64_t)NF_POOL_BACKOFF_NS << nf_pool.backoff_shift);
            if (nf_pool.backoff_shift < 6) nf_pool.backoff_shift++;
            pthread_mutex_unlock(&nf_pool.submit);
            return;
        }
    }
    nf_pool.serial_until = 0;
    nf_pool.backoff_shift = 0;
    pthread_mutex_unlock(&nf_pool.submit);
}

#endif
