# cython: language_level=3
"""OpenMP and CPU-feature queries: the one place that talks to the OpenMP runtime."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int nf_omp_enabled(void) { return 1; }
    static int nf_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int nf_omp_enabled(void) { return 0; }
    static int nf_omp_max_threads(void) { return 1; }
    #endif
    static const char *nf_isa(void) {
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return "avx512f";
        if (__builtin_cpu_supports("avx2")) return "avx2";
        return "sse2";
    #else
        return "generic";
    #endif
    }
    """
    int nf_omp_enabled() nogil
    int nf_omp_max_threads() nogil
    const char *nf_isa() nogil


def openmp_enabled():
    """True when the kernels were built with OpenMP."""
    return bool(nf_omp_enabled())


def max_threads():
    """omp_get_max_threads(): honours OMP_NUM_THREADS and threadpoolctl limits."""
    return nf_omp_max_threads()


def isa():
    """The instruction set the kernels' target_clones picked on this CPU."""
    return nf_isa().decode()
