"""normfast.bench.server: the CPU inference-server regime (issue 15, item 5).

Run it as ``python -m normfast bench --scenario server [--busy N] [options]`` (or
``python -m normfast.bench.server``; ``--help`` lists the options).

What is measured: ``layer_norm`` and ``rms_norm`` forward, float32, on x of shape
(batch * tokens, hidden) with batch * tokens in {1, 32, 128, 2048} and hidden in
{768, 1024, 4096}, plus layer_norm (16384, 1024).  Every call allocates its output (as torch
and ONNX Runtime do; what a server does), weight (and bias) are given.  Peers, timed in the
same process, interleaved:

* ``normfast``          ``normfast.layer_norm(x, (N,), w, b, eps)`` on NumPy arrays;
* ``normfast-torch``    the same call on torch CPU tensors (torch.Tensor back);
* ``... serial``        each of the two above forced serial: ``normfast.set_num_threads(1)``
                        around its block of calls (outside the timed region), so that the
                        table shows what the parallel path costs or saves under the same load;
* ``torch``             ``torch.nn.functional.layer_norm`` / ``rms_norm`` (eager);
* ``torch-compile``     ``torch.compile`` (inductor, ``fullgraph=True``, ``dynamic=False``) of
                        that function, compiled once per shape before any timing;
* ``onnxruntime``       CPU execution provider, a one-node graph per op and shape:
                        LayerNormalization (opset 17) or RMSNormalization (opset 23; where the
                        installed onnxruntime lacks it, the decomposition
                        Mul -> ReduceMean -> Add -> Sqrt -> Div -> Mul at opset 17, said under
                        the table), weight and bias as initializers, ``session.run`` per call
                        with ONNX Runtime's default thread settings (its intra-op threads spin
                        after a run; ``--ort-no-spin`` turns that off).

Timing: every call is timed on its own with ``time.perf_counter_ns`` (the timer's own cost,
measured on an empty call, is in the header), so that p50 (median) and p99 are per-call
latencies.  Each peer is warmed up, then sampled in repetitions; in each repetition the
peers run in a shuffled order, each a block of consecutive calls lasting about 1 ms (at least
one call), preceded by one untimed call when calls are shorter than a block (after switching
peers the first call pays the previous peer's cache and thread-pool state: an artefact of
interleaving, not the call's cost).  Repetitions go on until every peer has about 0.3 s of
timed calls (``--quick``: 0.02 s) or the case has run twice that per peer, with at least 30
(5) repetitions.  The garbage collector is off while timing.
GB/s = 2 * numel * 4 bytes (read x, write y) / p50.

Output: a table (one row per peer and case, with the p50/p99 ratios parallel / serial and the
p50 ratios to torch eager and ONNX Runtime), ``--markdown`` adds a compact one (one row per case),
``--json PATH`` writes every row with the single-call statistics.

``--busy N`` starts N processes spinning on a CPU each (``multiprocessing``, spawn) for the
whole measurement; they are terminated at the end, on Ctrl-C and on any exception (and quit
on their own if this process dies).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import sys
import time
import traceback

import numpy as np

from .. import bench as nb
from ._report import show, write_json
from ._timing import no_gc

EPS = nb.EPS
RMS_EPS = nb.RMS_EPS
OPS = ("layer_norm", "rms_norm")
TOKENS = (1, 32, 128, 2048)             # batch * tokens
HIDDEN = (768, 1024, 4096)
LARGE = ("layer_norm", (16384, 1024))   # the large output allocated by the call (page faults)
QUICK_SHAPES = [(1, 768), (32, 768), (128, 4096), (2048, 1024)]
PEERS = ("normfast", "normfast-torch", "torch", "torch-compile", "onnxruntime")
SERIAL = " serial"                      # suffix of the forced-serial rows
RMS_ONNX_NATIVE = "RMSNormalization (opset 23)"
RMS_ONNX_DECOMPOSED = "decomposed: Mul, ReduceMean, Add, Sqrt, Div, Mul (opset 17)"

# Sampling plans.  target_s: time per peer and shape (the issue asks ~0.2-0.5 s in full mode);
# block_s: consecutive calls of one peer before switching (~1 ms: shorter than a scheduler
# time slice, so busy-machine stalls hit every peer alike, long enough to amortize the switch);
# max_block: p99 needs many blocks, not a few long ones; min_reps: p99 needs enough calls even
# for the slowest shapes (16384x1024 at ~30 ms per call: 30 calls ~ 1 s per peer); max_reps
# only bounds memory; warm_s: enough calls for a stable per-call estimate (block sizes).
FULL = dict(target_s=0.3, block_s=1e-3, max_block=256, min_reps=30, max_reps=20_000, warm_s=0.05)
QUICK = dict(target_s=0.02, block_s=2e-4, max_block=64, min_reps=5, max_reps=2_000, warm_s=0.005)


# --------------------------------------------------------------------------------------
# Background load
# --------------------------------------------------------------------------------------


def _spin(ready, parent):
    """Body of a busy process: burn one CPU until killed or until the parent is gone."""
    ready.set()
    n = 0
    while True:
        n += 1
        if not n & 0xFFFFF and os.getppid() != parent:    # every ~1M iterations (~50 ms)
            return


class BusyLoad:
    """Context manager: ``n`` processes each spinning on a CPU while the block runs.

    Spawned (not forked: this process holds OpenMP and torch thread pools); ``__enter__``
    returns once every spinner runs.  ``__exit__`` terminates them whatever ended the block
    (normal exit, exception, KeyboardInterrupt), killing any that ignores SIGTERM.
    """

    def __init__(self, n, start_timeout=60.0):
        self.n, self.start_timeout = int(n), start_timeout
        self.procs = []

    def __enter__(self):
        if self.n <= 0:
            return self
        ctx = multiprocessing.get_context("spawn")
        try:
            events = []
            for _ in range(self.n):
                ev = ctx.Event()
                p = ctx.Process(target=_spin, args=(ev, os.getpid()), daemon=True, name="normfast-busy")
                p.start()
                self.procs.append(p)
                events.append(ev)
            deadline = time.monotonic() + self.start_timeout
            for ev in events:
                if not ev.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"--busy: a spinning process did not start within {self.start_timeout} s")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.procs = []

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------


class Peer:
    """One timed thing: ``fn()`` is one call; ``enter()``/``exit()`` bracket each block of
    calls outside the timed region; ``convert(result)`` gives a NumPy array for the error."""

    def __init__(self, name, fn, convert, inp, threads, enter=None, exit=None, note=""):
        self.name, self.fn, self.convert, self.input, self.threads = name, fn, convert, inp, threads
        self.enter, self.exit, self.note = enter, exit, note
        self.last = None
        self.extra = {}


class Peers:
    """Optional peers, imported once; what is missing or broken is noted once and skipped."""

    def __init__(self, nf, threads, restore_threads, want=None, ort_spin=True):
        self.nf, self.threads, self.restore_threads, self.ort_spin = nf, threads, restore_threads, ort_spin
        self.want = set(PEERS) if want is None else set(want) | {"normfast"}
        self.notes = {}                 # peer -> why it is missing (printed once)
        self.torch = self.F = self.ort = self.onnx = None
        if self.want & {"normfast-torch", "torch", "torch-compile"}:
            try:
                import torch
                import torch.nn.functional as F
                self.torch, self.F = torch, F
            except Exception as e:
                for p in ("normfast-torch", "torch", "torch-compile"):
                    self.notes[p] = f"torch not installed ({type(e).__name__})"
        if "onnxruntime" in self.want:
            try:
                import onnx
                import onnxruntime as ort
                self.onnx, self.ort = onnx, ort
            except Exception as e:
                self.notes["onnxruntime"] = (f"onnx/onnxruntime not installed ({type(e).__name__}: {e}); "
                                             "pip install onnx onnxruntime")
        self.rms_onnx = None            # how RMSNorm is expressed in ONNX, decided on first use
        self.rms_onnx_why = ""          # why not natively

    def active(self, name):
        return name in self.want and name not in self.notes

    def skip(self, name, why):
        """Drop a peer for the rest of the run, saying why once."""
        if name not in self.notes:
            self.notes[name] = why
            print(f"normfast bench: {name} skipped: {why}", file=sys.stderr, flush=True)


def _serial(nf, restore):
    """(enter, exit) hooks forcing normfast serial for a block, then restoring `restore` threads."""
    return (lambda: nf.set_num_threads(1)), (lambda: nf.set_num_threads(restore))


def onnx_model(onnx, op, shape, w, b, eps, decompose=False):
    """A one-node ONNX model computing `op` over the last axis of a float32 input of `shape`
    (weight, bias as initializers).  rms_norm: RMSNormalization (opset 23), or with
    ``decompose`` its smallest decomposition at opset 17 (ONNX has no RMSNorm before 23):
    ``Y = X / Sqrt(ReduceMean(X * X, axes=[-1]) + eps) * W``."""
    from onnx import TensorProto, helper, numpy_helper
    init = [numpy_helper.from_array(w, "W")]
    if op == "layer_norm":
        init.append(numpy_helper.from_array(b, "B"))
        nodes = [helper.make_node("LayerNormalization", ["X", "W", "B"], ["Y"], axis=-1, epsilon=eps)]
        opset = 17
    elif not decompose:
        nodes = [helper.make_node("RMSNormalization", ["X", "W"], ["Y"], axis=-1, epsilon=eps)]
        opset = 23
    else:
        init.append(numpy_helper.from_array(np.array(eps, np.float32), "E"))
        nodes = [helper.make_node("Mul", ["X", "X"], ["X2"]),
                 helper.make_node("ReduceMean", ["X2"], ["MS"], axes=[-1], keepdims=1),
                 helper.make_node("Add", ["MS", "E"], ["MSE"]),
                 helper.make_node("Sqrt", ["MSE"], ["RMS"]),
                 helper.make_node("Div", ["X", "RMS"], ["XN"]),
                 helper.make_node("Mul", ["XN", "W"], ["Y"])]
        opset = 17
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(shape))], initializer=init)
    opsets = [helper.make_opsetid("", opset)]
    # the oldest IR version that carries the opset: older onnxruntime releases load the model too
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model


def ort_session(ort, model, threads, spin=True):
    """CPU-EP session with `threads` intra-op threads; otherwise ONNX Runtime's defaults, whose
    intra-op threads spin after each run (``spin=False``: they sleep at once).  Spinning
    lowers ONNX Runtime's latency and takes CPU from whatever runs next in this process."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def make_inputs(op, shape, rng):
    """``(x, w, b)`` float32: x of `shape` (mean 0.5, std 2), w, b of its last dim; b None for rms_norm."""
    N = shape[-1]
    x = nb._rand(rng, shape, np.float32)
    w = nb._rand(rng, (N,), np.float32, 1.0, 0.5)
    b = nb._rand(rng, (N,), np.float32, 0.0, 0.5) if op == "layer_norm" else None
    return x, w, b


def reference(x, w, b):
    """float64 layer_norm (rms_norm when b is None) of x over its last axis, in row blocks
    (bounded temporaries), with the plain NumPy code of normfast.bench."""
    N = x.shape[-1]
    out = np.empty(x.shape, np.float64)
    x2, o2 = x.reshape(-1, N), out.reshape(-1, N)
    w64 = w.astype(np.float64)
    step = max(1, (1 << 18) // N)
    for i in range(0, x2.shape[0], step):
        xi = x2[i:i + step].astype(np.float64)
        o2[i:i + step] = (nb.ref_layer_norm(np, xi, w64, b.astype(np.float64), EPS) if b is not None
                          else nb.ref_rms_norm(np, xi, w64, RMS_EPS))
    return out


def build_peers(env, op, x, w, b, only=None, verbose=False):
    """{name: Peer} of one case (inputs from :func:`make_inputs`); `only`: the base peer names
    to build (default: every one the run selected and has)."""
    nf = env.nf
    shape, N = x.shape, x.shape[-1]
    ns = (N,)
    peers = {}

    def wanted(name):
        return env.active(name) and (only is None or name in only)

    def nf_call(x, w, b):
        if op == "layer_norm":
            return lambda: nf.layer_norm(x, ns, w, b, EPS)
        return lambda: nf.rms_norm(x, ns, w, RMS_EPS)

    def add_nf(name, inp, fn, convert):
        peers[name] = Peer(name, fn, convert, inp, env.threads)
        enter, exit_ = _serial(nf, env.restore_threads)
        peers[name + SERIAL] = Peer(name + SERIAL, fn, convert, inp, 1, enter, exit_,
                                    note="normfast.set_num_threads(1) around each block")

    if wanted("normfast"):
        add_nf("normfast", "numpy", nf_call(x, w, b), np.asarray)
    torch, F = env.torch, env.F
    if torch is not None:
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        bt = None if b is None else torch.from_numpy(b)
        if wanted("normfast-torch"):
            add_nf("normfast-torch", "torch", nf_call(xt, wt, bt), lambda r: r.numpy())
        if op == "layer_norm":
            def eager(x, w, b):
                return F.layer_norm(x, ns, w, b, EPS)
        else:
            def eager(x, w, b):
                return F.rms_norm(x, ns, w, RMS_EPS)
        if wanted("torch"):
            peers["torch"] = Peer("torch", lambda: eager(xt, wt, bt), lambda r: r.numpy(), "torch", env.threads)
        if wanted("torch-compile"):
            try:
                torch.compiler.reset()      # one static graph per shape: no recompile limit, no dynamic shapes
                compiled = torch.compile(eager, fullgraph=True, dynamic=False)
                t0 = time.perf_counter()
                compiled(xt, wt, bt)        # compile now: compile time is not a call's time
                compile_s = time.perf_counter() - t0
                p = Peer("torch-compile", lambda: compiled(xt, wt, bt), lambda r: r.numpy(), "torch", env.threads,
                         note="inductor, fullgraph, dynamic=False")
                p.extra["compile_s"] = compile_s
                peers["torch-compile"] = p
            except Exception as e:
                if verbose:
                    traceback.print_exc()
                env.skip("torch-compile", f"torch.compile failed: {nb._exc(e)}")
    if wanted("onnxruntime"):
        try:
            decompose = op == "rms_norm" and env.rms_onnx == RMS_ONNX_DECOMPOSED
            try:
                sess = ort_session(env.ort, onnx_model(env.onnx, op, shape, w, b, RMS_EPS if b is None else EPS,
                                                       decompose), env.threads, env.ort_spin)
                if op == "rms_norm" and env.rms_onnx is None:
                    env.rms_onnx = RMS_ONNX_NATIVE
            except Exception as e:
                if op != "rms_norm" or decompose:
                    raise
                env.rms_onnx = RMS_ONNX_DECOMPOSED  # this onnx/onnxruntime has no RMSNormalization
                env.rms_onnx_why = nb._exc(e)
                sess = ort_session(env.ort, onnx_model(env.onnx, op, shape, w, b, RMS_EPS, True), env.threads,
                                   env.ort_spin)
            feed = {"X": x}
            peers["onnxruntime"] = Peer("onnxruntime", lambda: sess.run(None, feed), lambda r: r[0], "numpy",
                                        env.threads, note="CPU EP, session.run")
        except Exception as e:
            if verbose:
                traceback.print_exc()
            env.skip("onnxruntime", f"session failed: {nb._exc(e)}")

    return peers


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def timer_overhead_ns(n=20_000):
    """Median ns the per-call timing adds: the timing loop around an empty call."""
    pc = time.perf_counter_ns
    noop = lambda: None          # noqa: E731
    t = np.empty(n, np.int64)
    for i in range(n):
        t0 = pc()
        noop()
        t[i] = pc() - t0
    return float(np.median(t))


def _block(p, k, rewarm):
    """Time k consecutive calls of p (ns), after one untimed call when `rewarm`."""
    pc, fn = time.perf_counter_ns, p.fn
    out = np.empty(k, np.int64)
    if p.enter is not None:
        p.enter()
    try:
        if rewarm:
            fn()
        for i in range(k):
            t0 = pc()
            fn()
            out[i] = pc() - t0
    finally:
        if p.exit is not None:
            p.exit()
    return out


def _warm_up(p, warm_s):
    """First call (lazy initialization; its result is kept for the error check), then calls for
    `warm_s` seconds.  Returns the median seconds per call."""
    if p.enter is not None:
        p.enter()
    try:
        p.last = p.fn()
        t_end = time.perf_counter() + warm_s
        samples = []
        while len(samples) < 3 or time.perf_counter() < t_end and len(samples) < 1000:
            t0 = time.perf_counter()
            p.fn()
            samples.append(time.perf_counter() - t0)
    finally:
        if p.exit is not None:
            p.exit()
    return float(np.median(samples))


def measure(peers, plan, rng):
    """Interleaved per-call timing of {name: Peer}.

    Each repetition runs every peer once, in a shuffled order, for a block of consecutive calls
    lasting about ``block_s`` (from the warm-up estimate; at least one call).  Repetitions go on
    until every peer has ``target_s`` of timed calls, or the case has run
    ``2 * target_s * len(peers)`` (a stalling peer must not hold the others hostage), but at
    least ``min_reps`` and at most ``max_reps`` times.  Every peer runs in every repetition, so
    all are sampled across the same stretch of machine noise.

    Returns ({name: ns per call array}, {name: block}, reps, {name: exception})."""
    failures, est = {}, {}
    for name, p in peers.items():
        try:
            est[name] = _warm_up(p, plan["warm_s"])
        except Exception as e:
            failures[name] = e
    names = list(est)
    block = {n: max(1, min(plan["max_block"], int(plan["block_s"] / max(est[n], 1e-8)))) for n in names}
    # after a switch the first call pays the previous peer's cache and thread-pool state: one
    # untimed call absorbs it, unless a call is longer than a block anyway (then it is noise)
    rewarm = {n: est[n] < plan["block_s"] for n in names}
    chunks = {n: [] for n in names}
    spent = dict.fromkeys(names, 0)
    cap_ns = 2e9 * plan["target_s"] * max(1, len(names))
    reps, t0 = 0, time.perf_counter_ns()
    with no_gc():
        while names:
            order = names[:]
            rng.shuffle(order)
            for n in order:
                try:
                    t = _block(peers[n], block[n], rewarm[n])
                except Exception as e:
                    failures[n] = e
                    continue
                chunks[n].append(t)
                spent[n] += int(t.sum())
            names = [n for n in names if n not in failures]
            reps += 1
            if reps >= plan["max_reps"] or reps >= plan["min_reps"] and (
                    min((spent[n] for n in names), default=0) >= 1e9 * plan["target_s"]
                    or time.perf_counter_ns() - t0 >= cap_ns):
                break
    times = {n: np.concatenate(c) for n, c in chunks.items() if n not in failures and c}
    return times, block, reps, failures


# --------------------------------------------------------------------------------------
# A case
# --------------------------------------------------------------------------------------


def run_case(env, op, shape, plan, rng, pyrng, verbose=False):
    """Build, time and check one (op, shape).  Returns the result rows (dicts)."""
    numel = math.prod(shape)
    base = {"op": op, "shape": list(shape), "dtype": "float32", "bytes": 2 * numel * 4, "output": "allocated"}
    try:
        x, w, b = make_inputs(op, shape, rng)
        peers = build_peers(env, op, x, w, b, verbose=verbose)
    except Exception as e:
        if verbose:
            traceback.print_exc()
        return [dict(base, peer="normfast", status="failed", message=nb._exc(e))]
    timed, block, reps, failures = measure(peers, plan, pyrng)
    try:
        r64 = reference(x, w, b)
    except Exception as e:
        r64, failures = None, dict(failures, reference=e)
    p50 = {n: float(np.percentile(t, 50)) / 1e3 for n, t in timed.items()}
    p99 = {n: float(np.percentile(t, 99)) / 1e3 for n, t in timed.items()}
    rows = []
    for name, p in peers.items():
        row = dict(base, peer=name, input=p.input, threads=p.threads, **p.extra)
        if p.note:
            row["note"] = p.note
        if name not in timed:
            e = failures.get(name)
            row.update(status="failed", message=nb._exc(e) if e is not None else "not timed")
            if verbose and e is not None:
                traceback.print_exception(type(e), e, e.__traceback__)
            rows.append(row)
            continue
        t = timed[name]
        row.update(status="ok", calls=int(t.size), reps=reps, block=block[name],
                   p50_us=p50[name], p99_us=p99[name], mean_us=float(t.mean()) / 1e3,
                   min_us=float(t.min()) / 1e3, max_us=float(t.max()) / 1e3,
                   gbps=base["bytes"] / (p50[name] * 1e-6) / 1e9)
        serial = name + SERIAL
        if serial in p50:
            row["p50_vs_serial"] = p50[name] / p50[serial]
            row["p99_vs_serial"] = p99[name] / p99[serial]
        if "torch" in p50:
            row["p50_vs_torch"] = p50[name] / p50["torch"]
        if "onnxruntime" in p50:
            row["p50_vs_onnxruntime"] = p50[name] / p50["onnxruntime"]
        if r64 is not None:
            try:
                y = np.asarray(p.convert(p.last), dtype=np.float64)
                row["max_abs_err"] = float(np.max(np.abs(y - r64))) if y.shape == r64.shape else float("inf")
            except Exception as e:
                row["max_abs_err"] = None
                row["message"] = "result check: " + nb._exc(e)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _us(v):
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}".replace(",", " ")


def _ratio(v):
    if v is None:
        return ""
    return f"{v:.2f}" if 0.01 <= v < 100 else f"{v:.3g}"


COLUMNS = ["op", "shape", "peer", "calls", "p50 us", "p99 us", "GB/s", "p50/ser", "p99/ser", "p50/torch",
           "p50/ORT", "max err"]


def format_table(rows):
    body, prev = [], None
    for r in rows:
        key = (r["op"], tuple(r["shape"]))
        first = key != prev
        if first and body:
            body.append(None)
        prev = key
        label = "x".join(map(str, r["shape"])) + (" (alloc)" if tuple(r["shape"]) == LARGE[1] else "")
        head = [r["op"], label] if first else ["", ""]
        if r.get("status") != "ok":
            body.append(head + [r["peer"], "FAILED " + r.get("message", "")[:80]])
            continue
        body.append(head + [r["peer"], str(r["calls"]), _us(r["p50_us"]), _us(r["p99_us"]), f"{r['gbps']:.2f}",
                            _ratio(r.get("p50_vs_serial")), _ratio(r.get("p99_vs_serial")),
                            _ratio(r.get("p50_vs_torch")), _ratio(r.get("p50_vs_onnxruntime")),
                            nb._fmt_err(r.get("max_abs_err"))])
    widths = [max([len(c)] + [len(b[i]) for b in body if b is not None and len(b) == len(COLUMNS)])
              for i, c in enumerate(COLUMNS)]

    def line(cells):
        if len(cells) < len(COLUMNS):           # a FAILED row: the message runs on
            return "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3]
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(COLUMNS), "  ".join("-" * w for w in widths)]
    lines += ["" if b is None else line(b) for b in body]
    return "\n".join(lines)


def format_markdown(rows):
    """One Markdown row per case, one column per peer: ``p50 / p99`` us (the parallel normfast
    columns add their p99 ratio to the serial twin)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    peers = list(dict.fromkeys(r["peer"] for r in ok))
    cases = list(dict.fromkeys((r["op"], tuple(r["shape"])) for r in ok))
    cell = {(r["op"], tuple(r["shape"]), r["peer"]): r for r in ok}
    lines = ["| call | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
    for op, shape in cases:
        label = f"{op} ({', '.join(map(str, shape))})" + (", output allocated" if shape == LARGE[1] else "")
        cells = []
        for p in peers:
            r = cell.get((op, shape, p))
            if r is None:
                cells.append("–")
                continue
            text = f"{_us(r['p50_us'])} / {_us(r['p99_us'])}"
            if "p99_vs_serial" in r:
                text += f" ({_ratio(r['p50_vs_serial'])}×, {_ratio(r['p99_vs_serial'])}×)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MARKDOWN_NOTE = ("cells: p50 / p99 us per call; normfast columns: (p50, p99 ratio to the serial column); "
                 "output allocated by every call, float32")


FOOTNOTES = """\
float32, x (batch*tokens, hidden), weight (and bias) given, output allocated by every call.  normfast = the
  public API on NumPy arrays, normfast-torch = the same call on torch CPU tensors; 'serial' = the same call with
  normfast.set_num_threads(1) around each block of calls.  calls = timed calls per peer; p50/p99 = median and
  99th percentile of single-call times (us, timer included); GB/s = 2*numel*4 bytes / p50.
p50/ser, p99/ser = parallel / serial normfast (same input, same run, interleaved; > 1: the threads cost more
  than they save).  p50/torch, p50/ORT = this row's p50 / torch eager's / ONNX Runtime's (< 1: faster).
max err = max |y - float64 reference| of the first call.  Peers interleave in shuffled blocks of ~1 ms (calls
  shorter than that: after one untimed call).  (alloc) = layer_norm (16384, 1024), a large output allocated
  by the call."""


def header(env, threads, busy, plan, quick, overhead_ns):
    """The printed header (normfast.bench's, plus this scenario's lines) and its dict for --json."""
    info = nb.header_info(env.base, threads)
    lines = [nb.format_header(info)]
    t, o = env.torch, env.ort
    parts = [f"scenario: server ({'quick' if quick else 'full'}; ~{plan['target_s']} s per peer and shape,"
             f" >= {plan['min_reps']} reps)"]
    spin = "spinning" if env.ort_spin else "not spinning"
    parts.append("onnxruntime " + (f"{o.__version__} (CPU EP, {threads} intra-op thread(s), {spin}, "
                                   f"onnx {env.onnx.__version__})" if o is not None else "- (not installed)"))
    parts.append("torch.compile " + ("inductor" if t is not None else "-"))
    lines.append(" | ".join(parts))
    lines.append(f"busy: {busy} spinning process(es) during the measurement" if busy else
                 "busy: none (--busy N adds N spinning processes)")
    lines.append(f"timer overhead: {overhead_ns / 1e3:.2f} us per call (median, included in every time)")
    return "\n".join(lines), dict(info, onnxruntime=None if o is None else o.__version__,
                                  onnx=None if env.onnx is None else env.onnx.__version__,
                                  busy=busy, timer_overhead_us=overhead_ns / 1e3)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def plan_cases(ops=None, shapes=None, quick=False):
    """[(op, shape)] of the selection: the grid, then the large allocated-output case."""
    ops = list(OPS) if ops is None else ops
    if shapes is None:
        shapes = QUICK_SHAPES if quick else [(m, n) for m in TOKENS for n in HIDDEN]
        extra = [LARGE] if LARGE[0] in ops else []
    else:
        extra = []
    return [(op, tuple(s)) for op in ops for s in shapes] + extra


def make_parser():
    p = argparse.ArgumentParser(
        prog="python -m normfast bench --scenario server",
        description="The CPU inference-server regime: layer_norm / rms_norm on (batch*tokens, hidden) float32, "
                    "NumPy and torch inputs, p50/p99 us per call, against torch eager, torch.compile and ONNX "
                    "Runtime, optionally with busy cores.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"peers: {', '.join(PEERS)} (normfast always runs; every normfast peer has a 'serial' row)")
    p.add_argument("--busy", type=int, default=0, metavar="N", help="N spinning background processes while measuring")
    p.add_argument("--threads", type=int, help="threads of normfast, torch and ONNX Runtime (default: normfast's)")
    p.add_argument("--quick", action="store_true", help="four shapes + the large one, ~0.02 s per peer (seconds)")
    p.add_argument("--ops", help="comma-separated: layer_norm,rms_norm (default both)")
    p.add_argument("--shapes", type=nb.parse_shapes, help="override the shapes, e.g. 32x768,2048x1024")
    p.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--ort-no-spin", action="store_true",
                   help="ONNX Runtime threads sleep after each run (session.intra_op.allow_spinning=0) instead of "
                        "spinning (its default, which takes CPU from the peer timed next)")
    p.add_argument("--float32-precision", choices=("highest", "high"), default="highest",
                   help="normfast.set_float32_precision for the run: 'high' normalizes float32 rows at float32 "
                        "width (see its docstring), 'highest' (default) in float64")
    p.add_argument("--json", metavar="PATH", help="write machine-readable results to PATH")
    p.add_argument("--markdown", action="store_true",
                   help="also print a compact Markdown table (one row per case, p50 / p99 per peer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the interleaving order")
    p.add_argument("--no-progress", action="store_true", help="no per-case progress lines on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing peers")
    return p


def _split(text, allowed, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ValueError(f"normfast bench: unknown {what} {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(allowed)}")
    return items


def main(argv=None):
    args = make_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.threads is not None and args.threads < 1 or args.busy < 0:
        print("normfast bench: --threads must be >= 1 and --busy >= 0", file=sys.stderr)
        return 2
    try:
        ops = _split(args.ops, OPS, "op") if args.ops else None
        want = _split(args.peers, PEERS, "peer") if args.peers else None
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    import normfast as nf
    saved_nf = getattr(getattr(nf, "_threads", None), "_override", None)
    if args.threads is not None:
        nf.set_num_threads(args.threads)
    env = Peers(nf, nf.get_num_threads(), args.threads if args.threads is not None else saved_nf, want,
                not args.ort_no_spin)
    saved_torch = env.torch.get_num_threads() if env.torch is not None else None
    saved_precision = nf.get_float32_precision()
    try:
        if env.torch is not None:
            env.torch.set_num_threads(env.threads)      # the same thread count for every peer
        nf.set_float32_precision(args.float32_precision)
        return _run(args, env, ops)
    finally:                                            # main() may be called from Python: restore
        nf.set_float32_precision(saved_precision)
        nf.set_num_threads(saved_nf)
        if saved_torch is not None:
            env.torch.set_num_threads(saved_torch)


def _run(args, env, ops):
    plan = QUICK if args.quick else FULL
    cases = plan_cases(ops, args.shapes, args.quick)
    env.base = nb.Env({"normfast", "torch"} if env.torch is not None else {"normfast"})   # for the header
    text, info = header(env, env.threads, args.busy, plan, args.quick, timer_overhead_ns())
    print(text, flush=True)
    print(f"normfast float32 precision: {args.float32_precision}", flush=True)
    for name, why in env.notes.items():
        print(f"note: {name} skipped: {why}")
    rng, pyrng = np.random.default_rng(args.seed), random.Random(args.seed)
    rows = []
    t0 = time.perf_counter()
    with BusyLoad(args.busy):
        for i, (op, shape) in enumerate(cases):
            if not args.no_progress:
                print(f"[{i + 1}/{len(cases)}] {op} {'x'.join(map(str, shape))}", file=sys.stderr, flush=True)
            rows.extend(run_case(env, op, shape, plan, rng, pyrng, args.verbose))
    elapsed = time.perf_counter() - t0
    print()
    show(format_table(rows), FOOTNOTES)
    if args.markdown:
        print()
        print(format_markdown(rows))
        print()
        print(MARKDOWN_NOTE)
    if env.rms_onnx is not None:
        why = env.rms_onnx_why
        print(f"ONNX RMSNorm graph: {env.rms_onnx}" + (f" (RMSNormalization failed: {why})" if why else ""))
    for name, why in env.notes.items():
        print(f"note: {name} skipped: {why}")
    print(f"({len(cases)} cases in {elapsed:.1f} s)")
    if args.json:
        doc = {"meta": dict(info, argv=args.argv, elapsed_s=elapsed, plan=plan, seed=args.seed, eps=EPS,
                            rms_eps=RMS_EPS, onnx_rms_graph=env.rms_onnx, onnx_rms_why=env.rms_onnx_why,
                            ort_spinning=env.ort_spin, skipped=dict(env.notes)),
               "conventions": {
                   "bytes": "2*numel*4 (read x, write y)", "output": "allocated by every call",
                   "time": "single-call perf_counter_ns, p50 = median, p99 = 99th percentile, microseconds",
                   "p50_vs_serial": "normfast p50 / the same call's p50 with set_num_threads(1), interleaved",
                   "p50_vs_torch": "p50 / torch eager p50", "p50_vs_onnxruntime": "p50 / ONNX Runtime p50",
                   "max_abs_err": "max |y - float64 reference| of the first call"},
               "results": rows}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
