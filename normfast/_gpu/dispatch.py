"""The GPU route of the dispatcher: CuPy arrays run the same operator code as the CPU with
GpuAdapter as the engine.  x-sized arrays stay on the device; statistics, coefficients and
parameters are small host float64 arrays (moved by the engine), returned to the caller as
CuPy arrays."""
import numpy as np

from .. import _core
from .engine import GpuEngine, ctype_of


class _CupyNS:
    def __get__(self, obj, owner):
        import cupy
        return cupy


def _cp():
    import cupy
    return cupy


def _host(a):
    return a if a is None or isinstance(a, np.ndarray) else _cp().asnumpy(a)


class GpuAdapter:
    """CpuEngine's interface on top of GpuEngine (see normfast/_engine_cpu.py)."""

    name = "cuda"
    xp = _CupyNS()

    @staticmethod
    def kernel_dtype(dtype):
        dt = np.dtype(dtype).newbyteorder("=")
        ctype_of(dt)                     # TypeError for dtypes without a kernel
        return dt

    @staticmethod
    def kernel_array(a, dtype):
        cp = _cp()
        return cp.ascontiguousarray(cp.asarray(a, dtype=dtype))

    @staticmethod
    def writable_as_is(out):
        return out.flags.c_contiguous

    @staticmethod
    def empty(shape, dtype):
        return _cp().empty(shape, dtype=dtype)

    to_host = staticmethod(_host)

    @staticmethod
    def reduce(x, dims, kind=0, dy=None, m=None):
        return _host(GpuEngine.reduce(x, dims, kind, dy, m))

    @staticmethod
    def apply(x, dims, m, p, q, out, dy=None, r=None):
        return GpuEngine.apply(x, dims, m, p, q, out, dy, r)

    @staticmethod
    def rows_forward(x, M, N, w, b, seg, period, eps, rms, out):
        mean, rstd = GpuEngine.rows_forward(x, M, N, w, b, seg, period, eps, rms, out)
        return _host(mean), _host(rstd)

    @staticmethod
    def rows_add_forward(x, res, h, y, M, N, w, b, eps, rms):
        mean, rstd = GpuEngine.rows_add_forward(x, res, h, y, M, N, w, b, eps, rms)
        return _host(mean), _host(rstd)

    @staticmethod
    def rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db, gh=None):
        dx, dw, db = GpuEngine.rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db)
        if gh is not None and dx is not None:
            dx += gh
        return dx, _host(dw), _host(db)


def _to_device(res):
    if isinstance(res, tuple):
        return tuple(_to_device(r) for r in res)
    if isinstance(res, np.ndarray):
        return _cp().asarray(res)
    return res


def call(fn, args, kwargs, x):
    """Run operator `fn` (undecorated) with the GPU engine; host results come back as CuPy."""
    with _core.using(GpuAdapter):
        return _to_device(fn(*args, **kwargs))
