"""Interleaved timing of the peers of a case, the copy roofline, accuracy against the reference."""
from __future__ import annotations

import contextlib
import gc
import math
import time
import traceback

import numpy as np

from ._cases import Peer, _storage_shape, build_case


def median_times(fns, reps):
    """{name: median seconds} with the peers interleaved in every repetition (fair under noise)."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_gc():
    """The garbage collector off inside (no collection pauses in the timed repetitions), as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    with no_gc():
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


