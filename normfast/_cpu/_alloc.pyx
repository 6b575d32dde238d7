# cython: language_level=3
"""Large output buffers: a small bounded cache of mapped, already-faulted blocks.

A fresh 64 MiB output costs 16 384 page faults (4 KiB pages) the first time it is written,
which is as much time as normalizing it.  Blocks of at least MIN_BYTES are mapped here with
transparent huge pages requested (one fault per 2 MiB where the kernel grants them) and, when
the array that owns one is freed, kept for the next output of a similar size instead of being
unmapped: a server normalizing the same shapes call after call writes into pages that are
already there.  The cache holds at most MAX_BLOCKS blocks and MAX_BYTES bytes (environment
NORMFAST_BLOCK_CACHE_MB, 0 disables it), evicting the least recently freed block; a block is
reused for a request of at least half its size.  ``clear()`` unmaps every cached block.
"""
import os

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_WRITABLE
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "sys/mman.h" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    void *MAP_FAILED

cdef extern from *:
    """
    #ifdef MADV_HUGEPAGE
    #define NF_MADV_HUGEPAGE MADV_HUGEPAGE
    #else
    #define NF_MADV_HUGEPAGE 0
    #endif
    """
    int NF_MADV_HUGEPAGE

MIN_BYTES = 1 << 20                 # below this NumPy's allocator (and its small-block cache) is as good
MAX_BLOCKS = 4                      # a layer's input, output, and the backward's two gradients
MAX_BYTES = int(os.environ.get("NORMFAST_BLOCK_CACHE_MB", "1024")) << 20

cdef list _cache = []               # Blocks no array uses any more: (size, address)
cdef Py_ssize_t _cached_bytes = 0


@cython.auto_pickle(False)       # a mapped address means nothing in another process
cdef class Block:
    """One mapped block; exposes it through the buffer protocol, returns it to the cache when the
    last array that views it is freed."""
    cdef char *ptr
    cdef Py_ssize_t size
    cdef Py_ssize_t shape[1]

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.ptr
        buf.obj = self
        buf.len = self.size
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = NULL
        buf.ndim = 1
        self.shape[0] = self.size
        buf.shape = self.shape
        buf.strides = NULL
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        global _cached_bytes
        if self.ptr == NULL:
            return
        if self.size > MAX_BYTES:
            munmap(self.ptr, <size_t>self.size)
            self.ptr = NULL
            return
        # least recently freed first out: a full cache of other sizes (an earlier layer's, another
        # shape's) must not turn every later output into a fresh, faulting mapping
        _cache.append((self.size, <uintptr_t>self.ptr))
        _cached_bytes += self.size
        while len(_cache) > MAX_BLOCKS or _cached_bytes > MAX_BYTES:
            size, addr = _cache.pop(0)
            _cached_bytes -= size
            munmap(<void *><uintptr_t>addr, <size_t>size)
        self.ptr = NULL


cdef Block _block(Py_ssize_t nbytes):
    global _cached_bytes
    cdef Block b = Block.__new__(Block)
    cdef Py_ssize_t i
    cdef void *p
    cdef Py_ssize_t size
    for i in range(len(_cache) - 1, -1, -1):      # the most recently freed first (warmest)
        size = _cache[i][0]
        addr = _cache[i][1]
        if nbytes <= size <= 2 * nbytes:
            del _cache[i]
            _cached_bytes -= size
            b.ptr = <char *><uintptr_t>addr
            b.size = size
            return b
    p = mmap(NULL, <size_t>nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        raise MemoryError(f"normfast: cannot map {nbytes} bytes")
    if NF_MADV_HUGEPAGE:
        madvise(p, <size_t>nbytes, NF_MADV_HUGEPAGE)
    b.ptr = <char *>p
    b.size = nbytes
    return b


def empty(shape, dtype):
    """An uninitialised C-contiguous array of at least MIN_BYTES in a (possibly reused) block,
    page-aligned; smaller requests go to NumPy."""
    import numpy as np
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= s
    nbytes = n * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(_block(nbytes), dtype=dtype, count=n).reshape(shape)


def clear():
    """Unmap every cached block."""
    global _cached_bytes
    while _cache:
        size, addr = _cache.pop()
        munmap(<void *><uintptr_t>addr, <size_t>size)
    _cached_bytes = 0


def cached_bytes():
    return _cached_bytes


def _cache_sizes():
    """Sizes of the cached blocks (tests)."""
    return [size for size, _ in _cache]
