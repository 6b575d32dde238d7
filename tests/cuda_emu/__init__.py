"""CUDA emulator for normfast's GPU tests (test code only, not part of the package).

normfast's real kernel sources (normfast/_gpu/*.cu) are compiled as C++ by g++
against cuda_emu.h (CUDA built-ins: thread / block indices, __syncthreads, warp
shuffles, __shared__, atomics, __half / __nv_bfloat16) into a shared library
(build.py; cached in a temporary directory by source hash), which runtime.cpp runs
block by block, one coroutine per CUDA thread.  fakecupy.py wraps it in a small
CuPy-like module, so normfast/_gpu/engine.py plans and launches exactly as on a GPU.

  cupy_backend(name)   'emu' -> the emulated cupy module; 'cuda' -> real CuPy when a
                       device is usable (else pytest.skip)
  install(monkeypatch) put the emulated module in sys.modules['cupy'] for one test
  dtype_of(cp, name)   the dtype `name` on backend cp (pytest.skip where bfloat16 is missing)
"""
import sys

import numpy as np
import pytest

from . import build  # noqa: F401

_FAKE = None


def emulated_cupy():
    """The emulated `cupy` module (built on first use).  pytest.fail on a build error,
    pytest.skip when there is no C++ compiler."""
    global _FAKE
    if _FAKE is None:
        from . import fakecupy
        if build.compiler() is None:
            pytest.skip("the CUDA emulator needs a C++ compiler (g++)")
        try:
            _FAKE = fakecupy.make_module()
        except build.BuildError as e:
            pytest.fail(str(e), pytrace=False)
    return _FAKE


def real_cupy():
    """CuPy with a usable device, else pytest.skip."""
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as e:  # noqa: BLE001 - no driver / no device / broken install
        pytest.skip(f"no usable CUDA device: {e}")
    return cupy


def backend(name, monkeypatch):
    """The cupy module of backend `name` ('emu' or 'cuda'); the emulated one is made
    sys.modules['cupy'] until the test ends (monkeypatch restores it)."""
    if name == "cuda":
        return real_cupy()
    cp = emulated_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    cp.emulator["launches"].clear()
    return cp


# backend ids for fixture params: the device variant carries the `gpu` mark, so
# `pytest -m gpu` (python -m normfast gpu-check) selects exactly the device runs
PARAMS = [pytest.param("emu", id="emu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None


def dtype_of(cp, name):
    """The NumPy/ml_dtypes dtype `name` as CuPy arrays of backend cp hold it."""
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed: no bfloat16 dtype")
        try:
            cp.asarray(np.ones(2, dtype=BF16))
        except Exception as e:  # noqa: BLE001 - a CuPy without bfloat16 arrays
            pytest.skip(f"this CuPy has no bfloat16 arrays ({e})")
        return BF16
    return np.dtype(name)
