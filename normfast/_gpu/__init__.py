"""normfast GPU path: CUDA kernels (*.cu, compiled at run time with NVRTC via CuPy).

Nothing heavy is imported here: CuPy is imported inside functions only, so
`import normfast` never imports CuPy.

  normfast._gpu.engine.GpuEngine   the engine interface of normfast/_engine_cpu.py on CuPy arrays
  normfast._gpu.dispatch           the dispatcher's GPU route (operators run with GpuEngine)
  normfast._gpu.compile            offline NVRTC compile check (`python -m normfast check-kernels`)
  normfast._gpu.check              device tests + GPU benchmark (`python -m normfast gpu-check`)
  available()                      True when CuPy imports and a CUDA device is usable

Without a device, tests/cuda_emu runs these kernels through g++ and a CUDA emulation
header (the GPU tests' `emu` variant).
"""

__all__ = ["available", "GpuEngine"]


def available():
    """True when CuPy imports and at least one CUDA device is usable."""
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device
        return False


def __getattr__(name):
    if name == "GpuEngine":
        from .engine import GpuEngine
        return GpuEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
