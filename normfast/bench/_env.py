"""The environment report: which peers are importable, CPU, threads, load."""
from __future__ import annotations

import os
import platform
import time

import numpy as np


# --------------------------------------------------------------------------------------
# Environment: which peers exist
# --------------------------------------------------------------------------------------


class Env:
    """Optional peers, imported once; any import failure just removes the peer."""

    def __init__(self, want=None):
        import normfast
        self.nf = normfast
        self.want = want
        self.torch = self.F = self.cp = None
        self.torch_msg = self.cupy_msg = ""
        if self.wanted("torch"):
            try:
                import torch
                import torch.nn.functional as F
                self.torch, self.F = torch, F
            except Exception as e:      # ImportError, or a broken install
                self.torch_msg = f"not installed ({type(e).__name__}: {e})"
        else:
            self.torch_msg = "not selected"
        if self.wanted("cupy"):
            try:
                import cupy as cp
                self.cupy_version = cp.__version__
                try:
                    n = cp.cuda.runtime.getDeviceCount()
                except Exception as e:
                    n, self.cupy_msg = 0, f"no CUDA device: {type(e).__name__}; peer skipped"
                if n > 0:
                    self.cp = cp
                elif not self.cupy_msg:
                    self.cupy_msg = "no CUDA device; peer skipped"
            except Exception as e:
                self.cupy_msg = f"not installed ({type(e).__name__})"
        else:
            self.cupy_msg = "not selected"
        self.nf_gpu = False           # normfast's public API accepts CuPy arrays (its GPU engine)
        if self.cp is not None:
            try:
                y = normfast.layer_norm(self.cp.ones((2, 8), dtype=self.cp.float32), 8)
                self.nf_gpu = isinstance(y, self.cp.ndarray)
            except Exception:
                self.nf_gpu = False

    def wanted(self, backend):
        if self.want is None:
            return True
        base = backend.split("-")[0]
        return backend in self.want or base in self.want

    def gpu_sync(self):
        self.cp.cuda.runtime.deviceSynchronize()


def _isa(nf):
    try:
        from normfast._cpu import _openmp
        return _openmp.isa(), bool(_openmp.openmp_enabled())
    except Exception as e:      # pragma: no cover - depends on the build
        return f"unknown ({type(e).__name__})", None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_busy(interval=0.3):
    """Fraction of all CPUs busy (with other processes: this one sleeps) over `interval` s, from
    /proc/stat; None where unavailable."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(n) for n in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)      # total, idle + iowait
    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return None if t1 <= t0 else round(1.0 - (i1 - i0) / (t1 - t0), 3)


def header_info(env, threads):
    nf = env.nf
    isa, omp = _isa(nf)
    try:
        from normfast import _core
        engine = getattr(_core.engine(), "name", "cpu")
    except Exception:
        engine = "cpu"
    info = {
        "normfast": getattr(nf, "__version__", "?"),
        "backend": engine,
        "simd_clone": isa,
        "openmp": omp,
        "threads": threads,
        "numpy": np.__version__,
        "torch": env.torch.__version__ if env.torch is not None else None,
        "torch_threads": env.torch.get_num_threads() if env.torch is not None else None,
        "torch_status": env.torch_msg or "ok",
        "cupy": getattr(env, "cupy_version", None),
        "cupy_status": env.cupy_msg or "ok",
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_1min": _loadavg(),
        "cpu_busy_before": _cpu_busy(),
    }
    if env.cp is not None:
        try:
            props = env.cp.cuda.runtime.getDeviceProperties(0)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:
            info["gpu"] = "cuda device 0"
    return info


def format_header(info):
    omp = {True: "on", False: "off", None: "?"}[info["openmp"]]
    lines = [
        f"normfast {info['normfast']} bench | backend: {info['backend']} | SIMD clone: {info['simd_clone']}"
        f" | OpenMP: {omp}, {info['threads']} thread(s)",
        f"numpy {info['numpy']} | torch " + (f"{info['torch']} ({info['torch_threads']} thread(s))" if info["torch"]
                                               else f"- ({info['torch_status']})")
        + " | cupy " + (f"{info['cupy']}" + (f" on {info['gpu']}" if info.get("gpu") else f" ({info['cupy_status']})")
                        if info["cupy"] else f"- ({info['cupy_status']})"),
        f"CPU: {info['cpu']} ({info['cpu_count']} logical cores) | Python {info['python']} | {info['platform']}",
    ]
    load, busy = info.get("loadavg_1min"), info.get("cpu_busy_before")
    if load is not None or busy is not None:
        text = "machine before the run:"
        if busy is not None:
            text += f" CPUs {100 * busy:.0f}% busy with other processes (0.3 s sample),"
        if load is not None:
            text += f" load average {load:.2f} (1 min)"
        if busy is not None and busy > 0.2:
            text += (" -- expect noisy timings, and stalls of multi-threaded (OpenMP) calls waiting for a"
                     " busy core")
        lines.append(text.rstrip(","))
    return "\n".join(lines)


