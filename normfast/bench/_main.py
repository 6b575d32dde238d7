"""Command line: python -m normfast bench."""
from __future__ import annotations

import argparse
import fnmatch
import random
import sys
import time

import numpy as np

from ._cases import ALL_OPS, plan_cases
from ._env import Env, format_header, header_info
from ._references import EPS, RMS_EPS
from ._report import FOOTNOTES, format_table, show, write_json, write_plot
from ._timing import run_case


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


SCENARIOS = ("default", "server", "pipeline", "training")


def make_parser():
    p = argparse.ArgumentParser(
        prog="python -m normfast bench",
        description="Benchmark normfast against plain NumPy, PyTorch CPU and CuPy (when a GPU is present), "
                    "with the np.copyto roofline and the max abs error of every backend.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"ops: {', '.join(ALL_OPS)}  (add_* only when normfast provides them)")
    p.add_argument("--scenario", choices=SCENARIOS, default="default",
                   help="default: this table (the operators against NumPy/PyTorch/CuPy); server: the CPU "
                        "inference-server regime (p50/p99 us per call vs torch eager, torch.compile, ONNX Runtime; "
                        "see --scenario server --help); pipeline: StandardScaler against scikit-learn, dask-ml "
                        "and plain Dask (normfast.bench.pipeline); training: forward+backward per operator and layout "
                        "vs torch eager and torch.compile through autograd (normfast.bench.training)")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(prog="python -m normfast bench", add_help=False)
    pre.add_argument("--scenario", choices=SCENARIOS, default="default")
    scenario, rest = pre.parse_known_args(argv)
    if scenario.scenario == "server":               # its own options (normfast.bench.server)
        from . import server as bench_server
        return bench_server.main(rest)
    args = make_parser().parse_args(argv)
    args.argv = argv
    want = None
    if args.backends:
        want = {b.strip() for b in args.backends.split(",") if b.strip()} | {"normfast"}
    if args.threads is not None and args.threads < 1:
        print("normfast bench: --threads must be >= 1", file=sys.stderr)
        return 2
    env = Env(want)
    nf = env.nf
    saved_nf = getattr(getattr(nf, "_threads", None), "_override", None)   # None: the default
    saved_torch = env.torch.get_num_threads() if env.torch is not None else None
    try:
        if args.threads is not None:
            nf.set_num_threads(args.threads)
        if args.scenario == "pipeline":
            from . import pipeline as bench_pipeline
            return bench_pipeline.run(args)
        if args.scenario == "training":
            from . import training as bench_training
            return bench_training.run(args)
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
    show(format_table(rows), FOOTNOTES)
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
        write_json(args.json, doc)
    if args.plot:
        if write_plot(rows, args.plot):
            print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

