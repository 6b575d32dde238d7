"""The report: table, footnotes, plot."""
from __future__ import annotations

import json
import math
import sys



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


def show(table, footnotes):
    """Print a scenario's table and its footnotes."""
    print(table)
    print()
    print(footnotes)


def write_json(path, doc):
    """Write a scenario's results document ``doc`` to ``path`` as JSON (nothing when path is None)."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    print(f"results written to {path}")


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


