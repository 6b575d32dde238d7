"""``python -m normfast gpu-check``: the GPU path on a real CUDA device, in one command.

1. Device: CuPy imports and sees a CUDA device; otherwise it says so and exits with 2
   (nothing was checked).
2. Device tests: ``python -m pytest -m gpu`` on the source checkout's tests/ (the `gpu`
   variants of tests/test_gpu*.py: every kernel, dtype and layout against float64
   references and the CPU path, exactness, determinism).
3. Benchmark: layer_norm, rms_norm, batch_norm, group_norm forward and backward, float32 and
   bfloat16, timed with CUDA events (median of repeated calls after a warm-up), against
   torch on CUDA when installed and against a device-to-device copy of the same bytes
   (the memory roofline).  Each normfast result is compared with torch's.
One table, then ``PASS`` or ``FAIL: <reasons>``; exit code 0 on PASS, 1 on FAIL.  About
one to three minutes on a current GPU (``--quick``: smaller shapes, no slow tests).
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EPS = 1e-5
NO_DEVICE = 2


def device_info():
    """(info dict, None) for the current CUDA device, or (None, reason) when there is none."""
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - missing, or a broken install
        return None, f"CuPy is not importable ({type(e).__name__}: {e}); install normfast[gpu]"
    try:
        n = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:  # noqa: BLE001 - no driver, no device
        return None, f"CuPy sees no CUDA device ({type(e).__name__}: {e})"
    if n < 1:
        return None, "CuPy sees no CUDA device (device count 0)"
    info = {"devices": n, "cupy": getattr(cupy, "__version__", "?")}
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"?")
        info["name"] = name.decode() if isinstance(name, bytes) else str(name)
        info["sm"] = int(dev.attributes["MultiProcessorCount"])
        info["cc"] = str(getattr(dev, "compute_capability", "?"))
        info["mem_gb"] = round(dev.mem_info[1] / 2 ** 30, 1)
        info["cuda_runtime"] = int(cupy.cuda.runtime.runtimeGetVersion())
    except Exception as e:  # noqa: BLE001 - informative only
        info["name"] = f"? ({type(e).__name__}: {e})"
    return info, None


# ---------------------------------------------------------------------------- device tests

def tests_dir():
    """tests/ of the source checkout this normfast comes from, or None (installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    d = root / "tests"
    return d if (d / "test_gpu.py").exists() else None


_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected|warnings?)")


def run_device_tests(path, marker="gpu", timeout=150):
    """Run ``pytest -m <marker>`` on `path` in a subprocess (from the directory above it, so
    the checkout's normfast is the one imported).  Returns a dict with the exit code, the
    counts of the summary line, the seconds and the output's last lines."""
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           str(path)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(Path(path).parent))
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out, rc = out + f"\n(timed out after {timeout} s)", -1
    counts = {}
    tail = [ln for ln in out.strip().splitlines() if ln.strip()]
    for ln in reversed(tail):
        found = _SUMMARY.findall(ln)
        if found and (" in " in ln or "no tests ran" in ln):
            for num, what in found:
                counts[what.rstrip("s") if what.startswith(("error", "warning")) else what] = int(num)
            break
    return {"rc": rc, "counts": counts, "seconds": time.perf_counter() - t0, "tail": tail[-25:],
            "cmd": " ".join(cmd)}


# ---------------------------------------------------------------------------- benchmark

SHAPES = {
    # op: (full, quick)
    "layer_norm": ((16384, 4096), (2048, 1024)),
    "rms_norm": ((16384, 4096), (2048, 1024)),
    "batch_norm": ((64, 256, 56, 56), (16, 64, 32, 32)),
    "group_norm": ((32, 256, 64, 64), (8, 64, 32, 32)),
}
GROUPS = 32
MIN_TIME = 0.2                 # seconds of samples per timing
MIN_SAMPLES, WARMUP = 3, 2


def _timer(cp, fn, min_time=None, max_iter=50):
    """Median milliseconds of fn() on the current stream (CUDA events)."""
    for _ in range(WARMUP):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    t_end = time.perf_counter() + (MIN_TIME if min_time is None else min_time)
    while len(times) < MIN_SAMPLES or (len(times) < max_iter and time.perf_counter() < t_end):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(times))


def _torch_cuda():
    try:
        import torch
    except Exception:  # noqa: BLE001
        return None, "not installed"
    try:
        if not torch.cuda.is_available():
            return None, f"{torch.__version__} without CUDA"
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"
    return torch, torch.__version__


def _cases(cp, nf, op, shape, dtype, rng):
    """(nf_fwd, nf_bwd, torch_fwd, torch_bwd, nbytes_fwd, nbytes_bwd) for one op.  Each
    callable returns its main output (for the comparison)."""
    x = cp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    dy = cp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    C = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
    w = cp.asarray((1 + 0.1 * rng.standard_normal(C)).astype(np.float32))
    b = cp.asarray((0.1 * rng.standard_normal(C)).astype(np.float32))
    n = int(np.prod(shape))
    item = np.dtype(dtype).itemsize
    if op == "layer_norm":
        fwd = lambda: nf.layer_norm(x, C, w, b, return_stats=True)  # noqa: E731
        _, m, r = fwd()
        bwd = lambda: nf.layer_norm_backward(dy, x, m, r, C, w)  # noqa: E731
    elif op == "rms_norm":
        fwd = lambda: nf.rms_norm(x, C, w, eps=EPS, return_stats=True)  # noqa: E731
        r = fwd()[1]
        bwd = lambda: nf.rms_norm_backward(dy, x, r, C, w)  # noqa: E731
    elif op == "batch_norm":
        fwd = lambda: nf.batch_norm(x, None, None, w, b, True, eps=EPS, return_stats=True)  # noqa: E731
        _, m, r = fwd()
        bwd = lambda: nf.batch_norm_backward(dy, x, m, r, w)  # noqa: E731
    else:
        fwd = lambda: nf.group_norm(x, GROUPS, w, b, eps=EPS, return_stats=True)  # noqa: E731
        _, m, r = fwd()
        bwd = lambda: nf.group_norm_backward(dy, x, m, r, GROUPS, w)  # noqa: E731
    return x, dy, w, b, (lambda: fwd()[0]), (lambda: bwd()[0]), 2 * n * item, 3 * n * item


def _torch_pair(torch, cp, op, x, dy, w, b):
    """torch forward and forward+backward callables on the same device memory."""
    F = torch.nn.functional
    tx = torch.from_dlpack(x)
    tdy = torch.from_dlpack(dy)
    tw = torch.from_dlpack(w).to(tx.dtype)
    tb = torch.from_dlpack(b).to(tx.dtype)
    C = tw.shape[0]
    if op == "layer_norm":
        f = lambda t: F.layer_norm(t, (C,), tw, tb, EPS)  # noqa: E731
    elif op == "rms_norm":
        f = lambda t: F.rms_norm(t, (C,), tw, EPS)  # noqa: E731
    elif op == "batch_norm":
        f = lambda t: F.batch_norm(t, None, None, tw, tb, True, 0.1, EPS)  # noqa: E731
    else:
        f = lambda t: F.group_norm(t, GROUPS, tw, tb, EPS)  # noqa: E731
    txg = tx.detach().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return f(tx)

    def fwd_bwd():
        y = f(txg)
        return torch.autograd.grad(y, txg, tdy)[0]
    return fwd, fwd_bwd


def _max_diff(cp, a, t):
    """max |a - t| / max(1, max |t|) of a CuPy array and a torch CUDA tensor."""
    a = a.astype(cp.float32)
    b = cp.from_dlpack(t.detach().float().contiguous())
    return float(abs(a - b).max()) / max(1.0, float(abs(b).max()))


def run_bench(quick=False, ops=None, dtypes=("float32", "bfloat16"), shapes=None, min_time=None):
    """Benchmark rows (dicts) and a list of problems."""
    import cupy as cp

    import normfast as nf
    torch, _ = _torch_cuda()
    rng = np.random.default_rng(0)
    rows, problems, notes = [], [], []
    for dname in dtypes:
        if dname == "bfloat16":
            try:
                import ml_dtypes
                dtype = np.dtype(ml_dtypes.bfloat16)
                cp.zeros(2, dtype=dtype)
            except Exception as e:  # noqa: BLE001 - a CuPy / ml_dtypes limitation, not a normfast failure
                notes.append(f"bfloat16 skipped: no bfloat16 CuPy arrays here ({type(e).__name__}: {e})")
                continue
        else:
            dtype = np.dtype(dname)
        for op in ops or SHAPES:
            shape = (shapes or {}).get(op) or SHAPES[op][1 if quick else 0]
            try:
                x, dy, w, b, nf_fwd, nf_bwd, bf, bb = _cases(cp, nf, op, shape, dtype, rng)
                src = cp.empty(bf // 2, dtype=cp.uint8)
                dst = cp.empty_like(src)
                src.fill(1)
                copy_ms = _timer(cp, lambda: cp.copyto(dst, src), min_time)     # reads + writes bf bytes
                t_pair = None
                if torch is not None:
                    try:
                        t_pair = _torch_pair(torch, cp, op, x, dy, w, b)
                        t_pair[0]()
                    except Exception as e:  # noqa: BLE001 - a torch limitation, not a normfast failure
                        t_pair = None
                        notes.append(f"torch {op} {dname}: {type(e).__name__}: {e}")
                for what, fn, nbytes in (("fwd", nf_fwd, bf), ("bwd", nf_bwd, bb)):
                    ms = _timer(cp, fn, min_time)
                    row = {"op": op, "dtype": dname, "shape": "x".join(map(str, shape)), "pass": what,
                           "ms": ms, "gbs": nbytes / ms / 1e6, "copy_frac": (copy_ms * nbytes / bf) / ms,
                           "torch_ms": None, "speedup": None, "diff": None}
                    out = fn()
                    if not bool(cp.isfinite(out.astype(cp.float32)).all()):
                        problems.append(f"{op} {dname} {what}: non-finite output")
                    if t_pair is not None:
                        tf, tfb = t_pair
                        if what == "fwd":
                            tms = _timer(cp, tf, min_time)
                            ref = tf()
                        else:
                            tms = max(1e-6, _timer(cp, tfb, min_time) - _timer(cp, tf, min_time))
                            ref = tfb()
                        d = _max_diff(cp, out, ref)
                        row.update(torch_ms=tms, speedup=tms / ms, diff=d)
                        tol = 1e-4 if dname == "float32" else 2 ** -6
                        if not d <= tol:
                            problems.append(f"{op} {dname} {what}: differs from torch by {d:.2e} (> {tol:g})")
                    rows.append(row)
            except Exception as e:  # noqa: BLE001 - report, keep going
                problems.append(f"{op} {dname}: {type(e).__name__}: {e}")
    return rows, problems, notes


def format_table(rows, torch_note):
    head = (f"{'op':<11} {'dtype':<9} {'shape':<16} {'pass':<4} {'normfast ms':>11} {'GB/s':>7} {'% copy':>7} "
            f"{'torch ms':>9} {'vs torch':>8} {'max|diff|':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        t = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.3f}"
        s = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        d = "-" if r["diff"] is None else f"{r['diff']:.1e}"
        lines.append(f"{r['op']:<11} {r['dtype']:<9} {r['shape']:<16} {r['pass']:<4} {r['ms']:>11.3f} "
                     f"{r['gbs']:>7.0f} {100 * r['copy_frac']:>6.0f}% {t:>9} {s:>8} {d:>9}")
    lines.append(f"(GB/s: fwd reads x and writes y, bwd reads x, dy and writes dx; % copy: of a device copy of "
                 f"the same bytes; torch: {torch_note}; torch bwd = fwd+bwd - fwd)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gpu-check":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m normfast gpu-check",
                                 description="Run the GPU tests and a short GPU benchmark on a CUDA device.")
    ap.add_argument("--quick", action="store_true", help="smaller benchmark shapes, skip tests marked slow")
    ap.add_argument("--no-tests", action="store_true", help="skip the device tests (pytest -m gpu)")
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    ap.add_argument("--tests", default=None, help="tests directory (default: the source checkout's tests/)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds allowed for the device tests")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    info, why = device_info()
    if info is None:
        print(f"gpu-check: no usable CUDA device: {why}.", file=sys.stderr)
        print("gpu-check: nothing was checked.  Without a GPU, `python -m pytest tests/test_gpu*.py` runs the "
              "same kernels on the CUDA emulator (tests/cuda_emu).", file=sys.stderr)
        print("FAIL: no CUDA device")
        return NO_DEVICE
    t0 = time.perf_counter()
    torch, torch_note = _torch_cuda()
    print(f"normfast gpu-check: {info.get('name')} (compute capability {info.get('cc')}, {info.get('sm')} SMs, "
          f"{info.get('mem_gb')} GiB), CUDA runtime {info.get('cuda_runtime')}, CuPy {info.get('cupy')}, "
          f"torch {torch_note}")
    problems, result = [], {"device": info}

    if not args.no_tests:
        path = Path(args.tests) if args.tests else tests_dir()
        if path is None or not path.exists():
            problems.append("device tests not found (run from a source checkout, or pass --tests / --no-tests)")
        else:
            res = run_device_tests(path, "gpu and not slow" if args.quick else "gpu", args.timeout)
            result["tests"] = res
            c = res["counts"]
            summary = ", ".join(f"{v} {k}" for k, v in c.items()) or "no summary"
            print(f"device tests (pytest -m gpu{' and not slow' if args.quick else ''}): {summary} "
                  f"in {res['seconds']:.1f} s")
            if res["rc"] != 0 or c.get("failed") or c.get("error") or not c.get("passed"):
                problems.append(f"device tests: exit code {res['rc']}, {summary}")
                print("\n".join("    " + ln for ln in res["tail"]))

    if not args.no_bench:
        rows, bench_problems, notes = run_bench(quick=args.quick)
        result["bench"] = rows
        problems += bench_problems
        print(format_table(rows, torch_note))
        for n in notes:
            print(f"note: {n}")

    result["problems"] = problems
    result["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if problems:
        print("FAIL: " + "; ".join(problems))
        return 1
    print(f"PASS ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
