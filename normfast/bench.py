"""normfast.bench: side-by-side benchmark of normfast against NumPy, PyTorch and CuPy.

Run it as ``python -m normfast bench [options]`` (``--help`` lists them).

For every case (operator x shape x memory layout) the harness times, interleaved
round by round so that machine noise hits every backend alike:

* ``normfast``  the library (outputs pre-allocated with ``out=`` where the API allows);
* ``numpy``     a plain NumPy implementation written the obvious way (this file);
* ``torch``     ``torch.nn.functional`` on CPU tensors sharing the NumPy buffers;
* ``cupy``      the plain implementation run with CuPy (only with a CUDA device);
* ``copy``      ``np.copyto(dst, src)`` moving the same number of bytes as the op:
                the memory-bandwidth roofline measured in the same run.

Each backend is warmed up, calibrated (calls are batched so one sample lasts >= 2 ms,
which matters only for the small-call cases) and then sampled ``min_reps..max_reps``
times with ``time.perf_counter``; the reported time is the MEDIAN per call.

Bytes moved (the GB/s numerator): forward = read x + write y (2 * numel * itemsize);
backward = read x, grad_out + write grad_x (3 * numel * itemsize); moments = read x;
add-norm = read x, residual + write y, h (4 * numel * itemsize).  Weights, biases
and statistics are ignored (they are tiny).  The copy row moves the same bytes
(a copy of S bytes counts 2 * S: read + write).

Accuracy: every backend's outputs are compared with the same plain NumPy code run in
float64 on the same (float32-rounded) inputs -- for moments (float64 input) reduced along a
contiguous axis, where NumPy's pairwise summation keeps the reference error ~1e-16 -- and
the max abs error is printed next to the speed.
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import math
import os
import platform
import random
import sys
import time
import traceback

import numpy as np

EPS = 1e-5
RMS_EPS = 1e-6
GROUPS = 32

# --------------------------------------------------------------------------------------
# Plain reference implementations.  `xp` is numpy (or cupy); written the way a user would
# write them, the final ufunc writing into `out` when one is given.
# --------------------------------------------------------------------------------------


def ref_moments(xp, x, axis=0):
    return x.mean(axis=axis), x.var(axis=axis)


def ref_layer_norm(xp, x, w, b, eps, out=None):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w, b, out=out)


def ref_rms_norm(xp, x, w, eps, out=None):
    ms = (x * x).mean(axis=-1, keepdims=True)
    return xp.multiply(x / xp.sqrt(ms + eps), w, out=out)


def _channel_axes(ndim, caxis):
    caxis = caxis % ndim
    pshape = [1] * ndim
    return caxis, tuple(i for i in range(ndim) if i != caxis), pshape


def ref_batch_norm(xp, x, w, b, eps, caxis, out=None):
    caxis, axes, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_batch_norm_eval(xp, x, rm, rv, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    scale = w / xp.sqrt(rv + eps)
    return xp.add((x - rm.reshape(pshape)) * scale.reshape(pshape), b.reshape(pshape), out=out)


def ref_group_norm(xp, x, G, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    N, C = x.shape[0], x.shape[caxis]
    pshape[caxis] = C
    if caxis == 1:                              # (N, G, C/G * spatial)
        xg, axes = x.reshape(N, G, -1), (2,)
    else:                                       # channels-last: (N, spatial, G, C/G)
        xg, axes = x.reshape(N, -1, G, C // G), (1, 3)
    mean = xg.mean(axis=axes, keepdims=True)
    xc = xg - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    y = (xc / xp.sqrt(var + eps)).reshape(x.shape)
    return xp.add(y * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_instance_norm(xp, x, w, b, eps, caxis, out=None):
    caxis, _, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    axes = tuple(i for i in range(1, x.ndim) if i != caxis)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    return xp.add(xc / xp.sqrt(var + eps) * w.reshape(pshape), b.reshape(pshape), out=out)


def ref_layer_norm_stats(xp, x, eps):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    return mean, 1 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)


def ref_layer_norm_backward(xp, dy, x, mean, rstd, w):
    """mean, rstd: (..., 1).  Returns (grad_x, grad_weight, grad_bias)."""
    lead = tuple(range(x.ndim - 1))
    xhat = (x - mean) * rstd
    g = dy * w
    gx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return gx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def ref_batch_norm_stats(xp, x, eps, caxis):
    _, axes, _ = _channel_axes(x.ndim, caxis)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    return mean, 1 / xp.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)


def ref_batch_norm_backward(xp, dy, x, mean, rstd, w, caxis):
    """Training-mode gradient; mean, rstd keep-dims shaped.  Returns (grad_x, grad_w, grad_b)."""
    caxis, axes, pshape = _channel_axes(x.ndim, caxis)
    pshape[caxis] = x.shape[caxis]
    xhat = (x - mean) * rstd
    dym = dy.mean(axis=axes, keepdims=True)
    dyx = (dy * xhat).mean(axis=axes, keepdims=True)
    gx = (w.reshape(pshape) * rstd) * (dy - dym - xhat * dyx)
    return gx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


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


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


class Peer:
    """One backend of a case: `fn()` is what is timed; `convert(fn())` gives the outputs
    (dict name -> NumPy array, in the reference's layout) used for the error."""

    def __init__(self, fn, convert=None, sync=None, note="", device="cpu"):
        self.fn, self.convert, self.sync, self.note, self.device = fn, convert, sync, note, device
        self.last = None


class Case:
    def __init__(self, op, shape, layout, dtype, nbytes, small=False):
        self.op, self.shape, self.layout, self.dtype = op, tuple(shape), layout, np.dtype(dtype)
        self.nbytes = int(nbytes)
        self.small = small
        self.factories = {}      # backend -> () -> Peer (built lazily, failures reported per peer)
        self.ref = None          # () -> dict name -> float64 array
        self.primary = None      # output names shown in the table (max over them)
        self.notes = {}

    @property
    def label(self):
        s = "x".join(str(n) for n in self.shape)
        if self.layout in ("NCHW", "NHWC"):
            s += " " + self.layout
        s += " " + {"float32": "f32", "float64": "f64", "float16": "f16"}[self.dtype.name]
        if self.small:
            s += " (small call)"
        return s


def _rand(rng, shape, dtype, loc=0.5, scale=2.0):
    """Uniform random with mean `loc` and standard deviation `scale` (uniform: cheap to draw)."""
    x = rng.random(size=shape, dtype=np.float64 if dtype == np.float64 else np.float32)
    x -= 0.5
    x *= scale * math.sqrt(12.0)
    x += loc
    return x.astype(dtype, copy=False)


def _storage_shape(shape, layout):
    """Logical (N, C, *spatial) -> the stored array shape for the layout."""
    if layout == "NHWC":
        return (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return tuple(shape)


def _to_torch(env, a, layout):
    t = env.torch.from_numpy(a)
    if layout == "NHWC":       # stored (N, *spatial, C) -> logical (N, C, *spatial), channels-last strides
        t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t


def _from_torch(t, layout):
    t = t.detach()
    if layout == "NHWC":
        t = t.permute(0, *range(2, t.ndim), 1)
    return t.cpu().numpy()


def _caxis(layout, ndim):
    return ndim - 1 if layout == "NHWC" else 1


def _ref_dtype(dtype):
    """The dtype the reference is computed in."""
    return np.float64


def _forward_case(env, case, x, params, nf_call, np_call, torch_call, out_name="y"):
    """Generic forward case.  nf_call(x, p, out); np_call(xp, x, p, out); torch_call(F, xt, pt) -> tensor."""
    layout = case.layout

    def nf():
        out = np.empty_like(x)
        return Peer(lambda: nf_call(x, params, out), lambda r: {out_name: r})

    def numpy_():
        out = np.empty_like(x)
        return Peer(lambda: np_call(np, x, params, out), lambda r: {out_name: r})

    def torch_():
        xt = _to_torch(env, x, layout)
        pt = {k: env.torch.from_numpy(v) for k, v in params.items()}
        F = env.F
        return Peer(lambda: torch_call(F, xt, pt), lambda r: {out_name: _from_torch(r, layout)})

    def cupy_():
        cp = env.cp
        xc = cp.asarray(x)
        pc = {k: cp.asarray(v) for k, v in params.items()}
        out = cp.empty_like(xc)
        return Peer(lambda: np_call(cp, xc, pc, out), lambda r: {out_name: cp.asnumpy(r)}, sync=env.gpu_sync,
                    device="gpu")

    def nf_gpu():
        cp = env.cp
        xc = cp.asarray(x)
        pc = {k: cp.asarray(v) for k, v in params.items()}
        out = cp.empty_like(xc)
        return Peer(lambda: nf_call(xc, pc, out), lambda r: {out_name: cp.asnumpy(r)}, sync=env.gpu_sync,
                    device="gpu")

    case.factories.update(normfast=nf, numpy=numpy_)
    if env.torch is not None:
        case.factories["torch"] = torch_
    if env.cp is not None:
        case.factories["cupy"] = cupy_
        if env.nf_gpu:
            case.factories["normfast-gpu"] = nf_gpu
    rd = _ref_dtype(x.dtype)
    case.ref = lambda: {out_name: np.asarray(np_call(np, x.astype(rd), {k: v.astype(rd) for k, v in params.items()},
                                                     None), dtype=np.float64)}
    case.primary = (out_name,)


def build_case(env, op, shape, layout, dtype, rng, small=False):
    """The Case for `op` on the logical `shape` (channel ops: (N, C, *spatial))."""
    nf = env.nf
    dtype = np.dtype(dtype)
    numel = math.prod(shape)
    it = dtype.itemsize
    fwd_bytes = 2 * numel * it

    if op == "moments":
        case = Case(op, shape, None, dtype, numel * it, small)
        x = _rand(rng, shape, dtype, loc=3.0)
        case.factories["normfast"] = lambda: Peer(lambda: nf.moments(x, axis=0), lambda r: {"mean": r[0], "var": r[1]})
        case.factories["numpy"] = lambda: Peer(lambda: ref_moments(np, x, 0), lambda r: {"mean": r[0], "var": r[1]})
        if env.torch is not None:
            def torch_():
                xt = env.torch.from_numpy(x)
                return Peer(lambda: env.torch.var_mean(xt, dim=0, correction=0),
                            lambda r: {"mean": r[1].numpy(), "var": r[0].numpy()})
            case.factories["torch"] = torch_
        if env.cp is not None:
            def cupy_():
                xc = env.cp.asarray(x)
                return Peer(lambda: ref_moments(env.cp, xc, 0),
                            lambda r: {"mean": env.cp.asnumpy(r[0]), "var": env.cp.asnumpy(r[1])},
                            sync=env.gpu_sync, device="gpu")
            case.factories["cupy"] = cupy_
        def ref():
            # float64 along a contiguous axis, where NumPy sums pairwise (error ~ log2(n) ulp)
            xt = np.ascontiguousarray(np.moveaxis(x, 0, -1), dtype=np.float64)
            mean = xt.mean(axis=-1)
            xt -= mean[..., None]
            return {"mean": mean, "var": np.square(xt, out=xt).mean(axis=-1)}
        case.ref = ref
        case.primary = ("mean", "var")
        return case

    if op in ("layer_norm", "rms_norm"):
        case = Case(op, shape, None, dtype, fwd_bytes, small)
        N = shape[-1]
        x = _rand(rng, shape, dtype)
        if op == "layer_norm":
            params = {"w": _rand(rng, (N,), dtype, 1.0, 0.5), "b": _rand(rng, (N,), dtype, 0.0, 0.5)}
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.layer_norm(x, (N,), p["w"], p["b"], EPS, out=out),
                          lambda xp, x, p, out: ref_layer_norm(xp, x, p["w"], p["b"], EPS, out),
                          lambda F, xt, p: F.layer_norm(xt, (N,), p["w"], p["b"], EPS))
        else:
            params = {"w": _rand(rng, (N,), dtype, 1.0, 0.5)}
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.rms_norm(x, (N,), p["w"], RMS_EPS, out=out),
                          lambda xp, x, p, out: ref_rms_norm(xp, x, p["w"], RMS_EPS, out),
                          lambda F, xt, p: F.rms_norm(xt, (N,), p["w"], RMS_EPS))
        return case

    if op in ("batch_norm", "batch_norm_eval", "group_norm", "instance_norm"):
        if len(shape) < (3 if op == "instance_norm" else 2):
            need = "(N, C, H, ...)" if op == "instance_norm" else "(N, C, ...)"
            raise ValueError(f"{op} needs a shape {need}, got {shape}")
        case = Case(op, shape, layout, dtype, fwd_bytes, small)
        C = shape[1]
        x = _rand(rng, _storage_shape(shape, layout), dtype)
        ca = _caxis(layout, x.ndim)
        params = {"w": _rand(rng, (C,), dtype, 1.0, 0.5), "b": _rand(rng, (C,), dtype, 0.0, 0.5)}
        if op == "batch_norm":
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.batch_norm(x, None, None, p["w"], p["b"], True, 0.1, EPS,
                                                          channel_axis=ca, out=out),
                          lambda xp, x, p, out: ref_batch_norm(xp, x, p["w"], p["b"], EPS, ca, out),
                          lambda F, xt, p: F.batch_norm(xt, None, None, p["w"], p["b"], True, 0.1, EPS))
        elif op == "batch_norm_eval":
            params["rm"] = _rand(rng, (C,), dtype, 0.5, 0.3)
            params["rv"] = (np.abs(_rand(rng, (C,), dtype, 4.0, 1.0)) + np.asarray(0.1, dtype)).astype(dtype)
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.batch_norm(x, p["rm"], p["rv"], p["w"], p["b"], False, 0.1, EPS,
                                                          channel_axis=ca, out=out),
                          lambda xp, x, p, out: ref_batch_norm_eval(xp, x, p["rm"], p["rv"], p["w"], p["b"], EPS,
                                                                    ca, out),
                          lambda F, xt, p: F.batch_norm(xt, p["rm"], p["rv"], p["w"], p["b"], False, 0.1, EPS))
        elif op == "group_norm":
            G = math.gcd(C, GROUPS)
            case.notes["groups"] = G
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.group_norm(x, G, p["w"], p["b"], EPS, channel_axis=ca, out=out),
                          lambda xp, x, p, out: ref_group_norm(xp, x, G, p["w"], p["b"], EPS, ca, out),
                          lambda F, xt, p: F.group_norm(xt, G, p["w"], p["b"], EPS))
        else:
            _forward_case(env, case, x, params,
                          lambda x, p, out: nf.instance_norm(x, None, None, p["w"], p["b"], True, 0.1, EPS,
                                                             channel_axis=ca, out=out),
                          lambda xp, x, p, out: ref_instance_norm(xp, x, p["w"], p["b"], EPS, ca, out),
                          lambda F, xt, p: F.instance_norm(xt, None, None, p["w"], p["b"], True, 0.1, EPS))
        return case

    if op in ("layer_norm_backward", "batch_norm_backward"):
        row = op == "layer_norm_backward"
        if not row and len(shape) < 2:
            raise ValueError(f"{op} needs a shape (N, C, ...), got {shape}")
        case = Case(op, shape, None if row else layout, dtype, 3 * numel * it, small)
        x = _rand(rng, shape if row else _storage_shape(shape, layout), dtype)
        dy = _rand(rng, x.shape, dtype, 0.0, 1.0)
        K = shape[-1] if row else shape[1]
        w = _rand(rng, (K,), dtype, 1.0, 0.5)
        b = _rand(rng, (K,), dtype, 0.0, 0.5)
        ca = None if row else _caxis(layout, x.ndim)
        names = ("grad_x", "grad_weight", "grad_bias")

        def conv(r):
            return dict(zip(names, r))

        if row:
            def nf_():
                _, mean, rstd = nf.layer_norm(x, (K,), w, b, EPS, return_stats=True)
                return Peer(lambda: nf.layer_norm_backward(dy, x, mean, rstd, (K,), w), conv)

            def ref(xp, x, dy, w):
                mean, rstd = ref_layer_norm_stats(xp, x, EPS)
                return lambda: ref_layer_norm_backward(xp, dy, x, mean, rstd, w)
        else:
            def nf_():
                _, mean, rstd = nf.batch_norm(x, None, None, w, b, True, 0.1, EPS, channel_axis=ca,
                                              return_stats=True)
                return Peer(lambda: nf.batch_norm_backward(dy, x, mean, rstd, w, True, channel_axis=ca), conv)

            def ref(xp, x, dy, w):
                mean, rstd = ref_batch_norm_stats(xp, x, EPS, ca)
                return lambda: ref_batch_norm_backward(xp, dy, x, mean, rstd, w, ca)

        case.factories["normfast"] = nf_
        case.factories["numpy"] = lambda: Peer(ref(np, x, dy, w), conv)
        if env.torch is not None:
            def torch_():
                torch, F = env.torch, env.F
                lay = None if row else layout
                xt = _to_torch(env, x, lay).requires_grad_(True)
                gt = _to_torch(env, dy, lay)
                wt = torch.from_numpy(w).requires_grad_(True)
                bt = torch.from_numpy(b).requires_grad_(True)
                if row:
                    y = F.layer_norm(xt, (K,), wt, bt, EPS)
                else:
                    y = F.batch_norm(xt, None, None, wt, bt, True, 0.1, EPS)
                return Peer(lambda: torch.autograd.grad(y, (xt, wt, bt), gt, retain_graph=True),
                            lambda r: dict(zip(names, (_from_torch(r[0], lay), r[1].numpy(), r[2].numpy()))),
                            note="autograd.grad on a precomputed graph (backward only)")
            case.factories["torch"] = torch_
        if env.cp is not None:
            def cupy_():
                cp = env.cp
                fn = ref(cp, cp.asarray(x), cp.asarray(dy), cp.asarray(w))
                return Peer(fn, lambda r: dict(zip(names, (cp.asnumpy(a) for a in r))), sync=env.gpu_sync,
                            device="gpu")
            case.factories["cupy"] = cupy_
        rd = _ref_dtype(dtype)
        if row:
            def case_ref():
                # row-separable: float64 in blocks of rows (cache-sized temporaries), weight grads summed
                x2, dy2 = x.reshape(-1, K), dy.reshape(-1, K)
                gx = np.empty(x2.shape, dtype=np.float64)
                gw, gb = np.zeros(K), np.zeros(K)
                step = max(1, (1 << 18) // K)
                for i in range(0, x2.shape[0], step):
                    g, dw_, db_ = ref(np, x2[i:i + step].astype(rd), dy2[i:i + step].astype(rd), w.astype(rd))()
                    gx[i:i + step] = g
                    gw += dw_
                    gb += db_
                return {"grad_x": gx.reshape(x.shape), "grad_weight": gw, "grad_bias": gb}
            case.ref = case_ref
        else:
            case.ref = lambda: {k: np.asarray(v, dtype=np.float64)
                                for k, v in zip(names, ref(np, x.astype(rd), dy.astype(rd), w.astype(rd))())}
        case.primary = ("grad_x",)
        return case

    if op in ("add_layer_norm", "add_rms_norm"):
        fused = getattr(nf, op, None)
        if fused is None:
            raise ValueError(f"normfast.{op} is not available in this build")
        ln = op == "add_layer_norm"
        case = Case(op, shape, None, dtype, 4 * numel * it, small)
        N = shape[-1]
        x = _rand(rng, shape, dtype)
        r = _rand(rng, shape, dtype, 0.0, 1.0)
        w = _rand(rng, (N,), dtype, 1.0, 0.5)
        b = _rand(rng, (N,), dtype, 0.0, 0.5)

        def conv(res):
            return {"y": res[0], "h": res[1]}

        def nf_fused():
            y, h = np.empty_like(x), np.empty_like(x)
            if ln:
                return Peer(lambda: fused(x, r, (N,), w, b, EPS, out=y, residual_out=h), conv)
            return Peer(lambda: fused(x, r, (N,), w, RMS_EPS, out=y, residual_out=h), conv)

        def unfused(xp, x, r, w, b, y, h):
            xp.add(x, r, out=h)
            if ln:
                return ref_layer_norm(xp, h, w, b, EPS, out=y), h
            return ref_rms_norm(xp, h, w, RMS_EPS, out=y), h

        def nf_unfused():
            y, h = np.empty_like(x), np.empty_like(x)

            def fn():
                np.add(x, r, out=h)
                if ln:
                    return nf.layer_norm(h, (N,), w, b, EPS, out=y), h
                return nf.rms_norm(h, (N,), w, RMS_EPS, out=y), h
            return Peer(fn, conv, note="np.add then normfast norm")

        def numpy_():
            y, h = np.empty_like(x), np.empty_like(x)
            return Peer(lambda: unfused(np, x, r, w, b, y, h), conv)

        case.factories.update({"normfast": nf_fused, "normfast-unfused": nf_unfused, "numpy": numpy_})
        if env.torch is not None:
            def torch_():
                torch, F = env.torch, env.F
                xt, rt, wt, bt = (torch.from_numpy(a) for a in (x, r, w, b))
                ht = torch.empty_like(xt)

                def fn():
                    torch.add(xt, rt, out=ht)
                    return (F.layer_norm(ht, (N,), wt, bt, EPS) if ln else F.rms_norm(ht, (N,), wt, RMS_EPS)), ht
                return Peer(fn, lambda res: {"y": res[0].numpy(), "h": res[1].numpy()})
            case.factories["torch"] = torch_
        if env.cp is not None:
            def cupy_():
                cp = env.cp
                xc, rc, wc, bc = (cp.asarray(a) for a in (x, r, w, b))
                y, h = cp.empty_like(xc), cp.empty_like(xc)
                return Peer(lambda: unfused(cp, xc, rc, wc, bc, y, h),
                            lambda res: {"y": cp.asnumpy(res[0]), "h": cp.asnumpy(res[1])},
                            sync=env.gpu_sync, device="gpu")
            case.factories["cupy"] = cupy_

        def ref():
            rd = _ref_dtype(dtype)
            h = x.astype(rd) + r.astype(rd)
            y = ref_layer_norm(np, h, w.astype(rd), b.astype(rd), EPS) if ln else ref_rms_norm(np, h, w.astype(rd),
                                                                                                RMS_EPS)
            return {"y": np.asarray(y, dtype=np.float64), "h": np.asarray(h, dtype=np.float64)}
        case.ref = ref
        case.primary = ("y", "h")
        return case

    raise ValueError(f"unknown op {op!r}")


# op -> (default shapes, quick shapes, layouts, dtype, availability test)
SUITE = [
    ("moments", [(2_000_000, 16)], [(20_000, 16)], [None], np.float64),
    ("layer_norm", [(16384, 1024), (32, 768)], [(256, 1024), (32, 768)], [None], np.float32),
    ("rms_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("batch_norm", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW", "NHWC"], np.float32),
    ("batch_norm_eval", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("group_norm", [(32, 256, 28, 28)], [(4, 64, 8, 8)], ["NCHW", "NHWC"], np.float32),
    ("instance_norm", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("layer_norm_backward", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("batch_norm_backward", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("add_layer_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("add_rms_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
]
ALL_OPS = [s[0] for s in SUITE]
SMALL_CALL_BYTES = 1 << 20      # a case below 1 MiB counts as a "small call" (latency, not bandwidth)


def plan_cases(nf, ops=None, shapes=None, quick=False):
    """[(op, shape, layout, dtype, small)] for the selection; ops not in this build are left out."""
    plan = []
    for op, default, quick_shapes, layouts, dtype in SUITE:
        if ops is not None and not any(fnmatch.fnmatchcase(op, pat) for pat in ops):
            continue
        if op.startswith("add_") and not hasattr(nf, op):
            continue
        for shape in (shapes if shapes else (quick_shapes if quick else default)):
            for layout in layouts:
                if layout == "NHWC" and len(shape) < 3:
                    continue            # channels-last is the same as channels-first without spatial dims
                small = math.prod(shape) * np.dtype(dtype).itemsize < SMALL_CALL_BYTES and not quick
                plan.append((op, tuple(shape), layout, dtype, small))
    return plan


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def _sample(fn, number, sync):
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / number


def measure(peers, min_reps, max_reps, budget_s, rng, min_sample_s=2e-3, failures=None):
    """Interleaved timing of {name: Peer}: warm-up, calibration, then rounds in shuffled
    order; a backend stops after max_reps samples, or after min_reps once its samples took
    budget_s.  Returns {name: (list of per-call seconds, number)}; failures go to `failures`."""
    failures = {} if failures is None else failures
    number, times = {}, {}
    for name, p in list(peers.items()):
        try:
            if p.sync is not None:
                p.sync()
            t0 = time.perf_counter()
            p.last = p.fn()                                # warm-up (page faults, lazy init); kept for the check
            if p.sync is not None:
                p.sync()
            t = time.perf_counter() - t0
            if t < 0.05:                                   # a second warm-up unless the call is slow anyway
                t = min(t, _sample(p.fn, 1, p.sync))
            n = 1 if t >= min_sample_s else min(10_000, int(math.ceil(min_sample_s / max(t, 1e-7))))
            if n > 1:
                _sample(p.fn, n, p.sync)
            number[name], times[name] = n, []
        except Exception as e:
            failures[name] = e
    active = list(times)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while active:
            order = active[:]
            rng.shuffle(order)
            for name in order:
                p = peers[name]
                try:
                    times[name].append(_sample(p.fn, number[name], p.sync))
                except Exception as e:
                    failures[name] = e
            active = [n for n in active if n not in failures and len(times[n]) < max_reps
                      and not (len(times[n]) >= min_reps and sum(times[n]) * number[n] >= budget_s)]
    finally:
        if gc_was:
            gc.enable()
    return {n: (t, number[n]) for n, t in times.items() if n not in failures}


# --------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------


def _copy_peer(nbytes, xp=np, sync=None, device="cpu"):
    """np.copyto of nbytes / 2 bytes: moves `nbytes` (read + write)."""
    n = max(1, nbytes // 2 // 8)
    src = xp.ones(n, dtype=xp.float64)
    dst = xp.empty_like(src)
    return Peer(lambda: xp.copyto(dst, src), None, sync=sync, device=device,
                note=f"copyto of {n * 8} B (moves {2 * n * 8} B)")


def _max_err(out, ref, names):
    errs = {}
    for k in names:
        if k not in out or out[k] is None:
            continue
        a = np.asarray(out[k], dtype=np.float64)
        r = ref[k]
        if a.shape != r.shape:
            raise ValueError(f"output {k!r} has shape {a.shape}, reference {r.shape}")
        d = np.abs(a - r)
        errs[k] = float(np.max(d)) if d.size else 0.0
        if not np.all(np.isfinite(a) == np.isfinite(r)):
            errs[k] = float("inf")
    return errs


def _exc(e):
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]


def run_case(env, spec, rng, pyrng, reps, budget_s, verbose=False):
    """Build, time and check one case.  Returns the list of result rows (dicts)."""
    op, shape, layout, dtype, small = spec
    base = {"op": op, "shape": list(shape), "layout": layout, "dtype": np.dtype(dtype).name}
    try:
        case = build_case(env, op, shape, layout, dtype, rng, small)
    except Exception as e:
        label = "x".join(map(str, shape)) + (f" {layout}" if layout else "")
        if verbose:
            traceback.print_exc()
        return [dict(base, case=label, backend="normfast", status="failed", message=_exc(e))]
    base["case"] = case.label
    base["small_call"] = bool(case.small)
    base["storage_shape"] = list(_storage_shape(shape, layout)) if layout else list(shape)
    peers, failures = {}, {}
    for name, make in case.factories.items():
        if not env.wanted(name):
            continue
        try:
            peers[name] = make()
        except Exception as e:
            failures[name] = e
            if verbose:
                traceback.print_exc()
    peers["copy"] = _copy_peer(case.nbytes)
    if env.cp is not None and any(p.device == "gpu" for p in peers.values()):
        try:
            peers["copy-gpu"] = _copy_peer(case.nbytes, env.cp, env.gpu_sync, "gpu")
        except Exception as e:
            failures["copy-gpu"] = e
    min_reps, max_reps = reps
    if case.small:      # latency-bound calls are cheap: more, shorter samples make the median robust
        min_reps, max_reps = 2 * min_reps + 1, 2 * max_reps + 1
    timed = measure(peers, min_reps, max_reps, budget_s, pyrng, failures=failures,
                    min_sample_s=5e-4 if case.small else 2e-3)

    ref = None
    try:
        ref = case.ref()
    except Exception as e:
        failures.setdefault("reference", e)
    rows = []
    med = {n: float(np.median(t)) for n, (t, _) in timed.items()}
    nf_t = med.get("normfast")
    for name in list(peers) + [n for n in failures if n not in peers]:
        row = dict(base, backend=name, bytes=case.nbytes)
        if name in peers and peers[name].note:
            row["note"] = peers[name].note
        if case.notes:
            row.update(case.notes)
        if name in failures:
            row.update(status="failed", message=_exc(failures[name]))
            if verbose:
                traceback.print_exception(type(failures[name]), failures[name], failures[name].__traceback__)
            rows.append(row)
            continue
        t, number = timed[name]
        m = med[name]
        row.update(status="ok", median_s=m, min_s=float(min(t)), times_s=[float(v) for v in t], reps=len(t),
                   number=number, gbps=case.nbytes / m / 1e9)
        copy = "copy-gpu" if peers[name].device == "gpu" and "copy-gpu" in med else "copy"
        if copy in med:
            row["copy_gbps"] = case.nbytes / med[copy] / 1e9
            row["frac_copy"] = med[copy] / m
        if nf_t is not None and name != "normfast" and not name.startswith("copy"):
            row["speedup_normfast"] = m / nf_t
        if not name.startswith("copy") and ref is not None:
            try:
                out = peers[name].convert(peers[name].last)   # the warm-up call's result (calls are deterministic)
                errs = _max_err(out, ref, ref.keys())
                row["errors"] = errs
                prim = [errs[k] for k in case.primary if k in errs]
                row["max_abs_err"] = max(prim) if prim else None
            except Exception as e:
                row.update(status="failed", message="result check: " + _exc(e))
        rows.append(row)
    del case, peers, ref
    gc.collect()
    return rows


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _fmt_time(s):
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_err(e):
    if e is None:
        return "-"
    if e == 0:
        return "0"
    if not math.isfinite(e):
        return "NaN/inf"
    return f"{e:.1e}"


def format_table(rows):
    cols = ["op", "shape / layout", "backend", "median", "GB/s", "% copy", "nf speed-up", "max abs err"]
    body, prev = [], None
    for r in rows:
        key = (r["op"], r.get("case"))
        first = key != prev
        prev = key
        if first and body:
            body.append(None)
        op, case = (r["op"], r.get("case", "")) if first else ("", "")
        if r.get("status") != "ok":
            body.append([op, case, r["backend"], "FAILED", "", "", "", r.get("message", "")[:70]])
            continue
        sp = r.get("speedup_normfast")
        body.append([
            op, case, r["backend"], _fmt_time(r["median_s"]), f"{r['gbps']:.2f}",
            f"{100 * r['frac_copy']:.0f}%" if "frac_copy" in r else "-",
            f"{sp:.2f}x" if sp is not None else ("(ref)" if r["backend"] == "normfast" else ""),
            "" if r["backend"].startswith("copy") else _fmt_err(r.get("max_abs_err")),
        ])
    widths = [max([len(c)] + [len(row[i]) for row in body
                              if row is not None and not (i == 7 and row[3] == "FAILED")])
              for i, c in enumerate(cols)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c if (i == 7 and cells[3] == "FAILED") else (c.rjust(w) if i in right else c.ljust(w)))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    lines = [line(cols), sep]
    for row in body:
        lines.append("" if row is None else line(row))
    return "\n".join(lines)


FOOTNOTES = """\
median: median of the per-call times of the repetitions (small calls: batched to >= 0.5 ms per sample, 2x reps);
  backends sampled interleaved in shuffled order.  GB/s = bytes moved / median: forward 2*numel*itemsize
  (read x, write y), backward 3*numel*itemsize (read x, grad_out; write grad_x), moments numel*itemsize (read x),
  add-norm 4*numel*itemsize (read x, residual; write y, h).  copy = np.copyto moving the same bytes (roofline);
  % copy = copy time / backend time.  nf speed-up = backend time / normfast time (>1: normfast faster).
max abs err: vs the same plain NumPy code in float64 (moments: pairwise float64 sums): y; grad_x for backward
  (all grads in --json); max over mean/var and over y/h.  numpy = plain NumPy in the input dtype (final ufunc
  with out=); torch = torch.nn.functional on tensors sharing the NumPy buffers (NHWC: channels_last strides);
  torch backward = torch.autograd.grad on a precomputed forward graph (backward only; grads of x, weight, bias),
  normfast/numpy backward = grad_x, grad_weight, grad_bias from precomputed mean/rstd.
  add-norm peers are unfused: x + residual, then the norm."""


def write_plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("normfast bench: --plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        return False
    cases, backends = [], []
    skipped_small = any(r.get("small_call") for r in rows)
    rows = [r for r in rows if not r.get("small_call")]     # latency-bound: GB/s would only squash the chart
    if not rows:
        print("normfast bench: only small-call cases: no plot written", file=sys.stderr)
        return False
    for r in rows:
        key = (r["op"], r.get("case", ""))
        if key not in cases:
            cases.append(key)
        if not r["backend"].startswith("copy") and r["backend"] not in backends:
            backends.append(r["backend"])
    rank = {b: i for i, b in enumerate(("normfast", "normfast-unfused", "normfast-gpu", "numpy", "torch", "cupy"))}
    backends.sort(key=lambda b: rank.get(b, len(rank)))
    data = {(r["op"], r.get("case", ""), r["backend"]): r for r in rows if r.get("status") == "ok"}
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(cases) + 2), 5.5))
    nb = max(1, len(backends))
    width = 0.8 / nb
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", [None] * 10)
    for j, be in enumerate(backends):
        xs, ys = [], []
        for i, (op, case) in enumerate(cases):
            r = data.get((op, case, be))
            if r is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r["gbps"])
        ax.bar(xs, ys, width, label=be, color=colors[j % len(colors)])
    labelled = False
    for i, (op, case) in enumerate(cases):
        for cname, style in (("copy", "k-"), ("copy-gpu", "k--")):
            r = data.get((op, case, cname))
            if r is not None:
                ax.plot([i - 0.45, i + 0.45], [r["gbps"]] * 2, style, lw=2,
                        label=("copy roofline" if cname == "copy" else "copy roofline (GPU)") if not labelled or
                        cname == "copy-gpu" else None)
                labelled = True
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{op}\n{case}" for op, case in cases], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GB/s (bytes moved / median time)")
    ax.set_title("normfast bench: effective bandwidth per op and backend"
                 + (" (small-call cases omitted)" if skipped_small else ""))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_shapes(text):
    shapes = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            shape = tuple(int(n) for n in part.replace("*", "x").split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}: expected e.g. 4096x1024") from None
        if not shape or any(n < 1 for n in shape):
            raise argparse.ArgumentTypeError(f"bad shape {part!r}: dimensions must be >= 1")
        shapes.append(shape)
    if not shapes:
        raise argparse.ArgumentTypeError("no shape given")
    return shapes


def make_parser():
    p = argparse.ArgumentParser(
        prog="python -m normfast bench",
        description="Benchmark normfast against plain NumPy, PyTorch CPU and CuPy (when a GPU is present), "
                    "with the np.copyto roofline and the max abs error of every backend.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"ops: {', '.join(ALL_OPS)}  (add_* only when normfast provides them)")
    p.add_argument("--quick", action="store_true", help="small shapes and few repetitions (seconds)")
    p.add_argument("--ops", help="comma-separated ops (shell-style patterns allowed, e.g. '*backward')")
    p.add_argument("--shapes", type=parse_shapes,
                   help="override the shapes of every selected op, e.g. 4096x1024 or 8x64x32x32,4096x1024 "
                        "(channel ops take the logical N x C x spatial shape)")
    p.add_argument("--threads", type=int, help="threads for normfast's OpenMP kernels (and torch)")
    p.add_argument("--backends", help="comma-separated peers to run (normfast,numpy,torch,cupy; default: all "
                                      "available; the copy roofline is always measured)")
    p.add_argument("--reps", type=int, help="maximum repetitions per backend (default 15, quick 5)")
    p.add_argument("--json", metavar="PATH", help="write machine-readable results to PATH")
    p.add_argument("--plot", metavar="PATH.png", help="bar chart of GB/s per op and backend with the copy roofline")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the interleaving order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing peers")
    p.add_argument("--scenario", choices=("kernels", "pipeline", "training"), default="kernels",
                   help="kernels: the operators against NumPy/PyTorch/CuPy (default); pipeline: "
                        "StandardScaler against scikit-learn, dask-ml and plain Dask (normfast.bench_pipeline)")
    return p


class _Progress:
    def __init__(self, total, enabled):
        self.bar = None
        self.total, self.i, self.enabled = total, 0, enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, leave=False)
            except ImportError:
                pass

    def start(self, text):
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif self.enabled:
            print(f"[{self.i + 1:>2}/{self.total}] {text} ...", file=sys.stderr, flush=True)

    def step(self):
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def main(argv=None):
    args = make_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    want = None
    if args.backends:
        want = {b.strip() for b in args.backends.split(",") if b.strip()} | {"normfast"}
    if args.threads is not None and args.threads < 1:
        print("normfast bench: --threads must be >= 1", file=sys.stderr)
        return 2
    env = Env(want)
    nf = env.nf
    saved_nf = getattr(getattr(nf, "_threads", None), "_override", None)
    saved_torch = env.torch.get_num_threads() if env.torch is not None else None
    try:
        if args.threads is not None:
            nf.set_num_threads(args.threads)
        if args.scenario == "pipeline":
            from . import bench_pipeline
            return bench_pipeline.run(args)
        if args.scenario == "training":
            return __import__("normfast.bench_training", fromlist=["run"]).run(args)
        threads = nf.get_num_threads()
        if env.torch is not None:
            try:
                env.torch.set_num_threads(threads)      # same thread count for both
            except Exception:
                pass
        return _run(args, env, threads)
    finally:                                            # main() may be called from Python: restore
        if args.threads is not None:
            nf.set_num_threads(saved_nf)
        if saved_torch is not None:
            try:
                env.torch.set_num_threads(saved_torch)
            except Exception:
                pass


def _run(args, env, threads):
    nf = env.nf
    ops = None
    if args.ops:
        ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        unknown = [o for o in ops if not any(fnmatch.fnmatchcase(op, o) for op in ALL_OPS)]
        if unknown:
            print(f"normfast bench: unknown op(s) {', '.join(unknown)}; choose from {', '.join(ALL_OPS)}",
                  file=sys.stderr)
            return 2
    if args.quick:
        reps, budget = (3, args.reps or 5), 0.05
    else:
        reps, budget = (min(7, args.reps or 15), args.reps or 15), 0.25
    plan = plan_cases(nf, ops, args.shapes, args.quick)
    if not plan:
        print("normfast bench: nothing to run (ops not available in this build?)", file=sys.stderr)
        return 2

    info = header_info(env, threads)
    header = format_header(info)
    print(header, flush=True)
    rng = np.random.default_rng(args.seed)
    pyrng = random.Random(args.seed)
    rows = []
    t0 = time.perf_counter()
    progress = _Progress(len(plan), not args.no_progress)
    try:
        for spec in plan:
            op, shape, layout = spec[:3]
            progress.start(f"{op} {'x'.join(map(str, shape))}{' ' + layout if layout else ''}")
            tc = time.perf_counter()
            case_rows = run_case(env, spec, rng, pyrng, reps, budget, args.verbose)
            for r in case_rows:
                r["case_wall_s"] = time.perf_counter() - tc
            rows.extend(case_rows)
            progress.step()
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    print()
    print(format_table(rows))
    print()
    print(FOOTNOTES)
    print(f"({len(plan)} cases in {elapsed:.1f} s; reps {reps[0]}..{reps[1]} per backend)")

    if args.json:
        doc = {"meta": dict(info, argv=args.argv, elapsed_s=elapsed,
                            reps=list(reps), budget_s=budget, seed=args.seed, eps=EPS, rms_eps=RMS_EPS),
               "conventions": {
                   "bytes": {"forward": "2*numel*itemsize (read x, write y)",
                             "backward": "3*numel*itemsize (read x, grad_out; write grad_x)",
                             "moments": "numel*itemsize (read x)",
                             "add_norm": "4*numel*itemsize (read x, residual; write y, h)"},
                   "time": "median of per-call seconds over interleaved repetitions",
                   "copy": "np.copyto moving the same bytes (copy of bytes/2)",
                   "frac_copy": "copy median / backend median",
                   "speedup_normfast": "backend median / normfast median",
                   "max_abs_err": "max |backend - plain NumPy float64 reference| over the primary outputs",
                   "torch_backward": "torch.autograd.grad on a precomputed forward graph (backward only)"},
               "results": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        print(f"results written to {args.json}")
    if args.plot:
        if write_plot(rows, args.plot):
            print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
