"""``python -m normfast dask-demo``: feature standardization of a larger-than-memory array on a
local Dask cluster, normfast.dask against the plain Dask expression.

    python -m normfast dask-demo --size 8GB [--workers 2] [--memory-limit 1GB] [--chunk 64MB]

A random float32 array of ``--size`` bytes and ``--features`` columns is generated lazily on
the workers (``dask.array.random``), standardized over axis 0 and reduced to its column sums
(so only ``--features`` numbers reach the client).  Methods:

  baseline        x.sum(0): generating the data and one trivial pass (the floor)
  normfast        normfast.dask.standardize(x, 0): one graph; statistics reduced with
                  normfast's kernel + Chan merges, then normfast's apply kernel per chunk
  normfast-2pass  the same with compute_stats=True: statistics computed first (x read /
                  generated twice), so no chunk has to be held while they are reduced
  dask            (x - x.mean(0)) / x.std(0)

For each: wall time, throughput (array bytes / time), peak RSS of a worker process and peak
bytes spilled to disk (sampled every ``--interval`` s), and the largest |mean| of a column
of the result (should be ~0).  Every method runs on a fresh LocalCluster.
"""
import argparse
import sys
import threading
import time

METHODS = ("baseline", "normfast", "normfast-2pass", "dask")


def _warm_up():
    import normfast.dask  # noqa: F401
    return True


def _probe(dask_worker=None):
    import psutil
    rss = psutil.Process().memory_info().rss
    spilled = 0
    data = getattr(dask_worker, "data", None)
    try:
        spilled = int(data.spilled_total.disk)
    except Exception:
        pass
    return rss, spilled


class _Monitor(threading.Thread):
    """Polls every worker's RSS and spilled bytes; keeps the peaks."""

    def __init__(self, client, interval):
        super().__init__(daemon=True)
        self.client, self.interval = client, interval
        self.peak_rss = 0
        self.peak_spilled = 0
        self._halt = threading.Event()

    def sample(self):
        try:
            r = self.client.run(_probe)
        except Exception:
            return
        if r:
            self.peak_rss = max(self.peak_rss, max(v[0] for v in r.values()))
            self.peak_spilled = max(self.peak_spilled, sum(v[1] for v in r.values()))

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        self.sample()


def _expr(method, x):
    import normfast.dask as nd
    if method == "baseline":
        return x.sum(axis=0)
    if method == "normfast":
        y = nd.standardize(x, 0)
    elif method == "normfast-2pass":
        y = nd.standardize(x, 0, compute_stats=True)    # computes the statistics here (timed)
    elif method == "dask":
        y = (x - x.mean(axis=0)) / x.std(axis=0)
    else:
        raise ValueError(method)
    return y.sum(axis=0)


def _fmt_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m normfast dask-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GB", help="array size in bytes, e.g. 200MB, 8GB (default 1GB)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--memory-limit", default="1GB", help="memory limit per worker (default 1GB)")
    p.add_argument("--chunk", default="64MB", help="chunk size in bytes (default 64MB)")
    p.add_argument("--features", type=int, default=64, help="columns (standardized features; default 64)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--interval", type=float, default=0.2, help="memory sampling interval in s (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        import dask.array as da
        from dask.distributed import Client, LocalCluster
        from dask.utils import parse_bytes
    except ImportError:
        print("dask-demo needs Dask: pip install 'dask[array,distributed]'", file=sys.stderr)
        return 2
    import numpy as np

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {METHODS}")
    size, chunk = parse_bytes(args.size), parse_bytes(args.chunk)
    mem = parse_bytes(args.memory_limit) if args.memory_limit not in ("auto", "0") else args.memory_limit
    F = args.features
    rows = max(1, size // (4 * F))
    chunk_rows = max(1, min(rows, chunk // (4 * F)))
    nbytes = rows * F * 4
    print(f"array: ({rows}, {F}) float32 = {_fmt_bytes(nbytes)} in chunks of ({chunk_rows}, {F}) "
          f"= {_fmt_bytes(chunk_rows * F * 4)} ({-(-rows // chunk_rows)} chunks)")
    print(f"cluster: {args.workers} worker processes x {args.threads_per_worker} thread(s), "
          f"memory limit {args.memory_limit} each", flush=True)

    results = []
    for method in methods:
        # A fresh cluster per method: clean worker memory, no state carried over.
        with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
                          memory_limit=mem, dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(_warm_up)                                # imports outside the timings
            x = da.random.default_rng(args.seed).random((rows, F), dtype=np.float32, chunks=(chunk_rows, F))
            mon = _Monitor(client, args.interval)
            mon.sample()
            idle = mon.peak_rss
            mon.start()
            t0 = time.perf_counter()
            err = None
            try:
                s = _expr(method, x).compute()
            except Exception as e:                              # e.g. KilledWorker
                err = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            mon.stop()
        check = "-" if err or method == "baseline" else f"{float(np.max(np.abs(s))) / rows:.1e}"
        results.append((method, dt, nbytes / dt / 1e9, mon.peak_rss, mon.peak_spilled, check, err, idle))
        print(f"  {method}: {dt:.1f} s" + (f" FAILED ({err})" if err else ""), flush=True)

    print()
    hdr = f"{'method':<16}{'time s':>9}{'GB/s':>8}{'peak RSS/worker':>17}{'peak spilled':>14}{'max|mean y|':>13}"
    print(hdr)
    print("-" * len(hdr))
    for method, dt, gbs, rss, spilled, check, err, _ in results:
        if err:
            print(f"{method:<16}{dt:>9.1f}{'failed':>8}{_fmt_bytes(rss):>17}{_fmt_bytes(spilled):>14}{'-':>13}")
        else:
            print(f"{method:<16}{dt:>9.1f}{gbs:>8.2f}{_fmt_bytes(rss):>17}{_fmt_bytes(spilled):>14}{check:>13}")
    if results:
        print(f"(idle worker RSS before the first method: {_fmt_bytes(results[0][7])}; "
              f"GB/s = array bytes / wall time)")
    return 0 if all(r[6] is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
