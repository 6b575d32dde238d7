"""The GPU route of the dispatcher: CuPy arrays run the same operator code as the CPU with
GpuEngine (normfast._gpu.engine) as the engine.  x-sized arrays stay on the device;
statistics, coefficients and parameters are small host float64 arrays (moved by the
engine), returned to the caller as CuPy arrays."""
import numpy as np

from .. import _core
from .engine import GpuEngine


def _cp():
    import cupy
    return cupy


def _to_device(res):
    if isinstance(res, tuple):
        return tuple(_to_device(r) for r in res)
    if isinstance(res, np.ndarray):
        return _cp().asarray(res)
    return res


def call(fn, args, kwargs, x):
    """Run operator `fn` (undecorated) with the GPU engine; host results come back as CuPy."""
    with _core.using(GpuEngine):
        return _to_device(fn(*args, **kwargs))
