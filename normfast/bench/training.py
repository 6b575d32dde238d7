"""``python -m normfast bench --scenario training``: forward + backward, as a training step runs them.

Per operator and layout (float32, the issue's shapes), every backend timed as the median of
interleaved repetitions in one process:

* ``normfast``        forward with ``return_stats=True``, then ``*_backward`` (gradients allocated
  by the call, as in a training step);
* ``normfast out=``   the same with every x-sized result written into pre-allocated arrays
  (forward ``out=``, backward ``out=``; ``out=grad_out``, in place, runs at the same speed);
* ``torch``           eager forward + ``backward`` through autograd (``x``, weight, bias require grad);
* ``torch.compile``   the forward compiled with ``torch.compile`` (default mode), backward through
  autograd (the compiled backward graph);
* ``copy``            ``np.copyto`` moving the same bytes (the memory roofline).

Separate ``backward`` rows time the backward alone (normfast with allocated and with
pre-allocated grad_x; torch: ``torch.autograd.grad`` of a retained graph).

Bytes counted (x-sized arrays of ``numel * itemsize``): forward reads x and writes y (2),
backward reads x and grad_out and writes grad_x (3): forward + backward = 5, backward = 3.
``% copy`` = copy time / backend time for the same bytes; ``nf speed-up`` = backend time /
normfast time.  ``max err``: max |grad_x - float64 reference| (torch.autograd in float64 on the
same inputs), relative to max |reference|.
"""
import sys

import numpy as np

import normfast as nf
from ._report import show, write_json
from ._timing import median_times

#: (op, layout, NCHW-style logical shape, groups); LayerNorm/RMSNorm shapes are (rows, width).
CASES = [("layer_norm", "rows", (4096, 1024), None), ("layer_norm", "rows", (16384, 1024), None),
         ("rms_norm", "rows", (16384, 1024), None),
         ("batch_norm", "NCHW", (32, 64, 56, 56), None), ("batch_norm", "NHWC", (32, 64, 56, 56), None),
         ("group_norm", "NCHW", (32, 256, 28, 28), 32), ("group_norm", "NHWC", (32, 256, 28, 28), 32),
         ("instance_norm", "NCHW", (32, 64, 56, 56), None), ("instance_norm", "NHWC", (32, 64, 56, 56), None)]
QUICK_SHAPES = {"rows": (512, 256), "NCHW": (4, 16, 12, 12), "NHWC": (4, 16, 12, 12)}
EPS = 1e-5



class Problem:
    """One operator on one shape / layout: NumPy inputs for normfast, torch views of the same memory."""

    def __init__(self, op, layout, shape, groups, seed):
        rng = np.random.default_rng(seed)
        self.op, self.layout, self.groups = op, layout, groups
        self.rows = layout == "rows"
        cshape = shape if self.rows else ((shape[0],) + shape[2:] + (shape[1],) if layout == "NHWC" else shape)
        self.x = rng.normal(0.5, 1.5, cshape).astype(np.float32)
        self.dy = rng.standard_normal(cshape).astype(np.float32)
        P = shape[-1] if self.rows else shape[1]
        self.w = (1.0 + 0.3 * rng.standard_normal(P)).astype(np.float32)
        self.b = None if op == "rms_norm" else (0.2 * rng.standard_normal(P)).astype(np.float32)
        self.ca = -1 if layout == "NHWC" else 1
        self.nbytes_fwd = 2 * self.x.nbytes
        self.nbytes_bwd = 3 * self.x.nbytes
        self.label = f"{'x'.join(map(str, shape))}" + ("" if self.rows else f" {layout}")
        self.gx = np.empty_like(self.x)
        self.y = np.empty_like(self.x)

    # -- normfast ---------------------------------------------------------------------------
    def nf_forward(self, out=None):
        x, w, b, op = self.x, self.w, self.b, self.op
        if op == "layer_norm":
            return nf.layer_norm(x, x.shape[-1], w, b, EPS, out=out, return_stats=True)
        if op == "rms_norm":
            return nf.rms_norm(x, x.shape[-1], w, EPS, out=out, return_stats=True)
        if op == "batch_norm":
            return nf.batch_norm(x, None, None, w, b, True, eps=EPS, channel_axis=self.ca, out=out,
                                 return_stats=True)
        if op == "group_norm":
            return nf.group_norm(x, self.groups, w, b, EPS, channel_axis=self.ca, out=out, return_stats=True)
        return nf.instance_norm(x, None, None, w, b, True, eps=EPS, channel_axis=self.ca, out=out,
                                return_stats=True)

    def nf_backward(self, stats, dy, out=None):
        x, w, op = self.x, self.w, self.op
        if op == "layer_norm":
            return nf.layer_norm_backward(dy, x, *stats, x.shape[-1], w, out=out)
        if op == "rms_norm":
            return nf.rms_norm_backward(dy, x, *stats, x.shape[-1], w, out=out)
        if op == "batch_norm":
            return nf.batch_norm_backward(dy, x, *stats, w, True, channel_axis=self.ca, out=out)
        if op == "group_norm":
            return nf.group_norm_backward(dy, x, *stats, self.groups, w, channel_axis=self.ca, out=out)
        return nf.instance_norm_backward(dy, x, *stats, w, channel_axis=self.ca, out=out)

    # -- torch ------------------------------------------------------------------------------
    def torch_fn(self, torch):
        F = torch.nn.functional
        op, groups = self.op, self.groups

        def f(x, w, b):
            if op == "layer_norm":
                return F.layer_norm(x, (x.shape[-1],), w, b, EPS)
            if op == "rms_norm":
                return F.rms_norm(x, (x.shape[-1],), w, EPS)
            if op == "batch_norm":
                return F.batch_norm(x, None, None, w, b, True, 0.1, EPS)
            if op == "group_norm":
                return F.group_norm(x, groups, w, b, EPS)
            return F.instance_norm(x, None, None, w, b, True, 0.1, EPS)
        return f

    def torch_inputs(self, torch, dtype=None):
        """Leaf tensors (channels-first logical shape, channels_last memory for NHWC) and grad_out."""
        def t(a):
            a = torch.from_numpy(a)
            if self.layout == "NHWC":
                a = a.permute(0, a.ndim - 1, *range(1, a.ndim - 1))       # NHWC memory, NCHW logical
            return a if dtype is None else a.to(dtype)
        x = t(self.x).detach().requires_grad_(True)
        w = torch.from_numpy(self.w).to(dtype or torch.float32).requires_grad_(True)
        b = None if self.b is None else torch.from_numpy(self.b).to(dtype or torch.float32).requires_grad_(True)
        return x, w, b, t(self.dy)

    def to_ours(self, g):
        """A torch gradient in x's logical shape -> NumPy in normfast's layout."""
        a = g.detach().numpy()
        return np.moveaxis(a, 1, -1) if self.layout == "NHWC" else a


def _peers(p, torch, want, reps_warm=1):
    """{name: (fwd+bwd callable, backward-only callable or None)}."""
    def nf_fb():
        stats = p.nf_forward()[1:]
        p.nf_backward(stats, p.dy)

    def nf_fb_out():
        stats = p.nf_forward(out=p.y)[1:]
        p.nf_backward(stats, p.dy, out=p.gx)

    stats = p.nf_forward()[1:]
    peers = {"normfast": (nf_fb, lambda: p.nf_backward(stats, p.dy)),
             "normfast out=": (nf_fb_out, lambda: p.nf_backward(stats, p.dy, out=p.gx))}
    if torch is None:
        return peers
    f = p.torch_fn(torch)
    for name, fn in (("torch", f), ("torch.compile", None)):
        if name not in want:
            continue
        try:
            if fn is None:
                fn = torch.compile(f)
            x, w, b, dy = p.torch_inputs(torch)
            leaves = tuple(t for t in (x, w, b) if t is not None)

            def fb(fn=fn, x=x, w=w, b=b, dy=dy, leaves=leaves):
                torch.autograd.grad(fn(x, w, b), leaves, dy)
            y = fn(x, w, b)

            def bwd(y=y, leaves=leaves, dy=dy):
                torch.autograd.grad(y, leaves, dy, retain_graph=True)
            for _ in range(reps_warm + 1):      # compiles (torch.compile) and warms up
                fb()
            peers[name] = (fb, bwd if name == "torch" else None)
        except Exception as e:                    # a missing compiler toolchain, an unsupported op
            print(f"({name} skipped for {p.op} {p.label}: {type(e).__name__}: {e})", file=sys.stderr)
    return peers


def _error(p, torch):
    """max |grad_x - float64 torch.autograd| / max |reference| for normfast (allocated grads)."""
    if torch is None:
        return None
    x, w, b, dy = p.torch_inputs(torch, torch.float64)
    ref = p.to_ours(torch.autograd.grad(p.torch_fn(torch)(x, w, b), x, dy)[0])
    got = p.nf_backward(p.nf_forward()[1:], p.dy)[0]
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


def run_case(op, layout, shape, groups, reps, want, torch, seed=0):
    p = Problem(op, layout, shape, groups, seed)
    peers = _peers(p, torch, want)
    copy_src = np.ones(p.nbytes_fwd + p.nbytes_bwd >> 3, np.float32)
    copy_dst = np.empty_like(copy_src)
    copy_src_b = copy_src[:p.nbytes_bwd >> 3]
    copy_dst_b = copy_dst[:p.nbytes_bwd >> 3]
    fb = {k: v[0] for k, v in peers.items()}
    fb["copy"] = lambda: np.copyto(copy_dst, copy_src)            # moves 5 * numel * 4 bytes
    bw = {k: v[1] for k, v in peers.items() if v[1] is not None}
    bw["copy"] = lambda: np.copyto(copy_dst_b, copy_src_b)        # moves 3 * numel * 4 bytes
    err = _error(p, torch)
    rows = []
    for phase, fns, nbytes in (("forward+backward", fb, p.nbytes_fwd + p.nbytes_bwd), ("backward", bw, p.nbytes_bwd)):
        for f in fns.values():
            f()
        med = median_times(fns, reps)
        for name, t in med.items():
            rows.append({"op": op, "shape": p.label, "phase": phase, "backend": name, "median_s": t,
                         "gbps": nbytes / t / 1e9, "frac_copy": med["copy"] / t,
                         "nf_speedup": t / med["normfast"] if not name.startswith("copy") else None,
                         "max_rel_err": err if name == "normfast" else None})
    return rows


def format_table(rows):
    cols = ["op", "shape / layout", "phase", "backend", "median", "GB/s", "% copy", "nf speed-up", "grad_x err"]
    lines = []
    for r in rows:
        lines.append([r["op"], r["shape"], r["phase"], r["backend"], f"{r['median_s'] * 1e3:.2f} ms",
                      f"{r['gbps']:.1f}", f"{100 * r['frac_copy']:.0f}%",
                      "" if r["nf_speedup"] is None else f"{r['nf_speedup']:.2f}x",
                      "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"])
    width = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, width)), "  ".join("-" * w for w in width)]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, width)) for line in lines]
    return "\n".join(out)


FOOTNOTES = __doc__.split("\n\n", 1)[1].strip()


def run(args):
    """Run every case and print the table.  ``args``: the parsed arguments of
    ``python -m normfast bench`` (``quick``, ``reps``, ``seed``, ``ops``, ``backends``, ``json``)."""
    quick = getattr(args, "quick", False)
    reps = getattr(args, "reps", None) or (3 if quick else 9)
    seed = getattr(args, "seed", 0) or 0
    want = {"torch", "torch.compile"}
    if getattr(args, "backends", None):
        names = {b.strip() for b in args.backends.split(",")}
        want = {n for n in want if n in names or (n == "torch.compile" and "torch-compile" in names)}
    ops = getattr(args, "ops", None)
    ops = None if not ops else {o.strip() for o in ops.split(",")}
    torch = None
    if want:
        try:
            import torch
            torch.set_num_threads(nf.get_num_threads())
        except ImportError:
            print("(torch is not installed: torch peers skipped)", file=sys.stderr)
    rows = []
    for op, layout, shape, groups in CASES:
        if ops is not None and op not in ops:
            continue
        if quick:
            shape = QUICK_SHAPES[layout]
            groups = 4 if groups else None
        label = f"{'x'.join(map(str, shape))}" + ("" if layout == "rows" else f" {layout}")
        if any(r["op"] == op and r["shape"] == label for r in rows):
            continue                                 # quick: one row shape per op
        rows += run_case(op, layout, shape, groups, reps, want, torch, seed)
    if not rows:
        return 2
    print(f"normfast {nf.__version__}, {nf.get_num_threads()} threads, float32, medians of {reps} interleaved runs")
    show(format_table(rows), FOOTNOTES)
    write_json(getattr(args, "json", None), {"scenario": "training", "reps": reps, "results": rows})
    return 0
