"""CPU engine: normfast._engine.Engine on NumPy arrays and the C kernels (src_c/).

All arrays are C-contiguous NumPy arrays; x/dy/out are float32 or float64; every
coefficient and statistic is float64.  normfast._gpu.engine.GpuEngine implements the same
interface on CuPy arrays.
"""
import math

import numpy as np

from ._cpu import _alloc, _backward, _moments, _normalize
from ._threads import get_num_threads

ALIGN = 64


def empty_aligned(shape, dtype):
    """An uninitialised output: 64-byte aligned (a cache line: NumPy only guarantees 16 bytes,
    and the streaming stores of large outputs want whole lines); from 1 MiB on, a page-aligned
    block of normfast._cpu._alloc (huge pages, reused across calls: no page faults on the
    output of a repeated shape)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if n * dtype.itemsize < (1 << 16):
        return np.empty(shape, dtype)
    if n * dtype.itemsize >= _alloc.MIN_BYTES:
        return _alloc.empty(shape, dtype)
    buf = np.empty(n * dtype.itemsize + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


def _with_stats(n, kernel, *args):
    """kernel(*args, mean, rstd, threads) with fresh (n,) float64 outputs mean, rstd: returns them."""
    mean, rstd = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    kernel(*args, mean, rstd, get_num_threads())
    return mean, rstd


class CpuEngine:
    """normfast._engine.Engine on the CPU."""
    name = "cpu"
    xp = np
    supports_samples = True
    supports_group_backward = True

    @staticmethod
    def kernel_dtype(dtype):
        """Kernels run on native float32 / float64 and, where the compiler has _Float16, float16
        (loaded and computed in float64, rounded once: no float32 copy of x or of the output);
        without it float16 is computed on float32 copies."""
        dtype = np.dtype(dtype)
        if dtype.itemsize == 8:
            return np.dtype(np.float64)
        if dtype == np.float16 and _normalize.HAVE_F16:
            return dtype
        return np.dtype(np.float32)

    @staticmethod
    def kernel_array(a, dtype):
        """C-contiguous, aligned, native-order array of `dtype` (copies only when needed)."""
        if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
            return a
        return np.require(a, dtype=dtype, requirements=("C", "A"))

    @staticmethod
    def writable_as_is(out):
        return out.flags.c_contiguous and out.flags.aligned

    empty = staticmethod(empty_aligned)

    @staticmethod
    def to_host(a):
        return np.asarray(a)

    @staticmethod
    def reduce(x, dims, kind=0, dy=None, m=None):
        """Per (a, c) of x[A, B, C, D]: see normfast._engine.Reduce for `kind`.
        Returns a (A*C, 3) float64 array."""
        A, B, C, D = dims
        out = np.empty((A * C, 3), dtype=np.float64)
        _moments.reduce4d(x, dy, m, A, B, C, D, kind, out, get_num_threads())
        return out

    @staticmethod
    def apply(x, dims, m, p, q, out, dy=None, r=None):
        """out[a, b, c, d] = (x - m[a, c]) * p[a, c] + q[a, c] (+ dy * r[a, c])."""
        A, B, C, D = dims
        _normalize.apply4d(x, dy, out, A, B, C, D, m, p, q, r, get_num_threads())
        return out

    @staticmethod
    def rows_forward(x, M, N, w, b, seg, period, eps, rms, out):
        """Fused per-row statistics and normalization.  Returns (mean, rstd), (M,) float64."""
        return _with_stats(M, _normalize.rows_forward, x, out, M, N, w, b, seg, period, eps, rms)

    @staticmethod
    def samples_forward(x, y, A, B, G, D, w, b, eps):
        """Per-sample fused channels-last group/instance norm (x[A][B][G*D], w/b float64 per
        lane or None).  Returns (mean, rstd), (A*G,) float64."""
        return _with_stats(A * G, _normalize.samples_forward, x, y, A, B, G, D, w, b, eps)

    @staticmethod
    def rows_add_forward(x, res, h, y, M, N, w, b, eps, rms):
        """Fused h = x + res (stored in h) and y = norm(h) per row.  Returns (mean, rstd)."""
        return _with_stats(M, _normalize.rows_add_forward, x, res, h, y, M, N, w, b, eps, rms)

    @staticmethod
    def rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db, gh=None, dx=None):
        """Row-wise (Layer/RMS) backward; gh (optional, M x N) is added to dx in the same pass.
        dx: the buffer to write (may be x, dy or gh itself), else one is allocated.
        Returns (dx or None, dw or None, db or None); dw/db float64."""
        if dx is None and need_dx:
            dx = empty_aligned(x.shape, x.dtype)
        dx = dx if need_dx else None
        dw = np.empty(N, dtype=np.float64) if need_dw else None
        db = np.empty(N, dtype=np.float64) if need_db else None
        if w is None:
            w = np.ones(N, dtype=np.float64)
        _backward.rows_backward(x, dy, gh, M, N, mean, rstd, w, dx, dw, db, get_num_threads())
        return dx, dw, db

    @staticmethod
    def group_backward(x, dy, dx, M, N, seg, period, mean, rstd, w):
        """Channels-first group / instance norm backward fused per row (src_c/group_backward_t.h).
        Returns the (M * N / seg, 2) float64 per-segment sums (sum dy, sum dy * (x - mean))."""
        sums = np.empty((M * (N // seg), 2), dtype=np.float64)
        _normalize.group_backward(x, dy, dx, M, N, seg, period, mean, rstd, w, sums, get_num_threads())
        return sums
