"""``python -m normfast bench --scenario pipeline``: data-pipeline standardization.

Two cases, each timed as the median of interleaved repetitions, with the passes over the data
and the accuracy against an exact reference:

1. **scikit-learn** (in memory): ``fit``, ``partial_fit`` over 10 chunks and ``transform`` of
   :class:`normfast.sklearn.StandardScaler` against :class:`sklearn.preprocessing.StandardScaler`
   on float64 data with a large mean (default (2e6, 32), mean 1e6, std 1e-2).
2. **Dask** (threaded scheduler, 2 workers, normfast kernels single-threaded): ``fit`` +
   ``transform`` of normfast's scaler on a Dask array against dask-ml's ``StandardScaler``
   (when installed) and plain Dask (``x.mean(0)``, ``x.std(0)``, ``(x - mean) / std``) on
   float32 data at mean 1000 (default (2e7, 16), chunks of 1e6 rows).  The transformed array
   is reduced to its column sums (the same sink for every peer).

normfast's OpenMP kernels run with ``--threads`` (default: all cores) in case 1 and
single-threaded in case 2 (the Dask workers give the parallelism).

Passes: for Dask, measured (every chunk read is counted; ``reads / chunks``) for the fit and
for fit + transform; in memory, the passes over X-sized arrays each algorithm makes, read from the source
(normfast fit: one kernel call over X; transform: scikit-learn's finiteness check and one
kernel call.  scikit-learn fit: finiteness check, ``isnan``, sum, ``X - mean`` into a
temporary, then the temporary's sum, square and sum = 7; transform: finiteness check,
copy, ``-= mean``, ``/= scale`` = 4).

Accuracy: the mean's error in ulps of the exact mean and the variance's relative error,
against a per-column long-double two-pass reference (scikit-learn case) or float64 two-pass
on each contiguous column (Dask case, float32 data); for the transforms, the max absolute
error of the standardized values, in units of the standard deviation.
"""
import sys
import threading

import numpy as np

import normfast
from .._threads import threads_set_to
from ._report import show, write_json
from ._timing import median_times

#: Default sizes of the two cases (the issue's); --quick divides the rows by 20.
SKLEARN_SHAPE, DASK_SHAPE, DASK_CHUNK_ROWS = (2_000_000, 32), (20_000_000, 16), 1_000_000



def _reference(X):
    """Exact per-column (mean, biased var): long double two-pass for float64 data, float64
    two-pass (pairwise sums of a contiguous column) for float32 data."""
    wide = np.longdouble if X.dtype == np.float64 else np.float64
    mean, var = np.empty(X.shape[1]), np.empty(X.shape[1])
    for j in range(X.shape[1]):
        c = np.ascontiguousarray(X[:, j]).astype(wide)
        m = c.sum() / c.size
        mean[j], var[j] = m, ((c - m) ** 2).sum() / c.size
    return mean, var


def _errors(mean, var, ref_mean, ref_var):
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    ulp = np.max(np.abs(mean - ref_mean) / np.spacing(np.abs(ref_mean)))
    return float(ulp), float(np.max(np.abs(var / ref_var - 1)))


def _z_error(Z, X, ref_mean, ref_var, rows=200_000):
    """Max |z - z_exact| over the first `rows` rows, in units of the standard deviation."""
    x = X[:rows].astype(np.float64)
    return float(np.max(np.abs(np.asarray(Z[:rows], np.float64) - (x - ref_mean) / np.sqrt(ref_var))))


# --------------------------------------------------------------------------- scikit-learn case

def _nf(name):
    """normfast's row for the same operation as `name`."""
    return name.replace("sklearn", "normfast", 1)


def sklearn_case(shape, reps, seed):
    from sklearn.preprocessing import StandardScaler as SkScaler

    from ..sklearn import StandardScaler
    X = 1e6 + 1e-2 * np.random.default_rng(seed).standard_normal(shape)
    rm, rv = _reference(X)
    parts = np.array_split(X, 10)

    def chunks(cls):
        s = cls()
        for p in parts:
            s.partial_fit(p)
        return s

    fits = {"normfast fit": lambda: StandardScaler().fit(X), "sklearn fit": lambda: SkScaler().fit(X)}
    pfits = {"normfast partial_fit x10": lambda: chunks(StandardScaler),
             "sklearn partial_fit x10": lambda: chunks(SkScaler)}
    nf_s, sk_s = StandardScaler().fit(X), SkScaler().fit(X)
    trans = {"normfast transform": lambda: nf_s.transform(X), "sklearn transform": lambda: sk_s.transform(X)}
    t = {**median_times(fits, reps), **median_times(pfits, reps), **median_times(trans, reps)}
    rows = []
    for name, est, passes in (("normfast fit", nf_s, 1), ("sklearn fit", sk_s, 7),
                              ("normfast partial_fit x10", chunks(StandardScaler), 1),
                              ("sklearn partial_fit x10", chunks(SkScaler), 7)):
        ulp, vrel = _errors(est.mean_, est.var_, rm, rv)
        rows.append(dict(case="sklearn", what=name, time_s=t[name], speedup=t[name] / t[_nf(name)], passes=passes,
                         mean_err_ulp=ulp, var_rel_err=vrel, z_err_std=None))
    for name, est, passes in (("normfast transform", nf_s, 2), ("sklearn transform", sk_s, 4)):
        rows.append(dict(case="sklearn", what=name, time_s=t[name], speedup=t[name] / t[_nf(name)], passes=passes,
                         mean_err_ulp=None, var_rel_err=None,
                         z_err_std=_z_error(est.transform(X[:200_000]), X, rm, rv)))
    return rows


# --------------------------------------------------------------------------- Dask case

class _ReadCounter:
    """Counts chunk reads of a Dask array (threaded scheduler: shared memory)."""

    def __init__(self):
        self.n, self.lock = 0, threading.Lock()

    def __call__(self, block):
        with self.lock:
            self.n += 1
        return block


def dask_case(shape, chunk_rows, reps, seed):
    import dask
    import dask.array as da

    from ..sklearn import StandardScaler
    X = (1000.0 + np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rm, rv = _reference(X)
    counter = _ReadCounter()
    base = da.from_array(X, chunks=(chunk_rows, shape[1]))
    x = base.map_blocks(counter, dtype=X.dtype)           # every read of a chunk goes through the counter
    nchunks = base.numblocks[0]
    sink = (lambda z: z.sum(axis=0, dtype=np.float64).compute())

    def nf_fit():
        return StandardScaler().fit(x)

    def plain_fit():
        return dask.compute(x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64))

    peers = {"normfast": (nf_fit, lambda s: s.transform(x), lambda s: (s.mean_, s.var_))}
    peers["plain dask"] = (plain_fit, lambda mv: (x - mv[0].astype(X.dtype)) / np.sqrt(mv[1]).astype(X.dtype),
                           lambda mv: mv)
    # float32 accumulation (dask's own default dtype for x.mean / x.var of float32 data)
    peers["plain dask (float32 acc.)"] = (lambda: dask.compute(x.mean(axis=0), x.var(axis=0)),
                                          lambda mv: (x - mv[0]) / np.sqrt(mv[1]), lambda mv: mv)
    try:
        from dask_ml.preprocessing import StandardScaler as DmlScaler
        peers["dask-ml"] = (lambda: DmlScaler().fit(x), lambda s: s.transform(x), lambda s: (s.mean_, s.var_))
    except ImportError:
        print("(dask-ml is not installed: its row is missing)", file=sys.stderr)
    rows = []
    with dask.config.set(scheduler="threads", num_workers=2):
        with threads_set_to(1):                           # parallelism comes from the 2 Dask workers
            fit_t = median_times({k: v[0] for k, v in peers.items()}, reps)
            both_t = median_times({k: (lambda v=v: sink(v[1](v[0]()))) for k, v in peers.items()}, reps)
            for k, (fit, tr, stats) in peers.items():
                counter.n = 0
                fitted = fit()
                fit_reads = counter.n / nchunks
                counter.n = 0
                z = tr(fitted)
                head = z[:200_000].compute()
                counter.n = 0
                sink(tr(fit()))
                both_reads = counter.n / nchunks
                mean, var = stats(fitted)
                ulp, vrel = _errors(mean, var, rm, rv)
                rows.append(dict(case="dask", what=f"{k} fit", time_s=fit_t[k], speedup=None, passes=fit_reads,
                                 mean_err_ulp=ulp, var_rel_err=vrel, z_err_std=None))
                rows.append(dict(case="dask", what=f"{k} fit+transform", time_s=both_t[k], speedup=None,
                                 passes=both_reads, mean_err_ulp=None, var_rel_err=None,
                                 z_err_std=_z_error(head, X, rm, rv)))
    nf_time = {r["what"]: r["time_s"] for r in rows if r["what"].startswith("normfast ")}
    for r in rows:
        op = r["what"].rsplit(" ", 1)[1]                   # "fit" or "fit+transform"
        r["speedup"] = r["time_s"] / nf_time[f"normfast {op}"]
    return rows


# --------------------------------------------------------------------------- output

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(rows):
    head = f"{'case':<8} {'what':<38} {'time s':>8} {'peer/nf':>8} {'passes':>7} {'mean err ulp':>12} " \
           f"{'var rel err':>11} {'z err (std)':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['case']:<8} {r['what']:<38} {r['time_s']:>8.3f} {_fmt(r['speedup'], '8.1f')} "
                     f"{_fmt(r['passes'], '7.0f')} {_fmt(r['mean_err_ulp'], '12.1f')} "
                     f"{_fmt(r['var_rel_err'], '11.1e')} {_fmt(r['z_err_std'], '11.1e')}")
    return "\n".join(lines)


FOOTNOTES = """time s: median over interleaved repetitions.  peer/nf: this row's time / normfast's
same operation (> 1: normfast is faster).  passes: reads of the data (Dask: measured chunk reads /
chunks; in memory: passes over X-sized arrays by the algorithm, see normfast.bench.pipeline).
mean err ulp: max over features of |mean - exact| / ulp(exact) (float64 ulps, also for float32
data).  var rel err: max |var / exact - 1|.  z err (std): max |z - exact z| over the first
200 000 rows, in standard deviations."""


def run(args):
    """Run both cases and print the table (``args``: ``quick``, ``reps``, ``seed``, ``json``
    attributes of ``python -m normfast bench``'s parsed arguments)."""
    quick = getattr(args, "quick", False)
    reps = getattr(args, "reps", None) or (2 if quick else 3)
    seed = getattr(args, "seed", 0) or 0
    div = 20 if quick else 1
    rows = []
    try:
        import sklearn  # noqa: F401
        rows += sklearn_case((SKLEARN_SHAPE[0] // div, SKLEARN_SHAPE[1]), reps, seed)
    except ImportError:
        print("(scikit-learn is not installed: pip install normfast[sklearn]; sklearn case skipped)", file=sys.stderr)
    try:
        import dask.array  # noqa: F401
        import sklearn  # noqa: F401,F811
        rows += dask_case((DASK_SHAPE[0] // div, DASK_SHAPE[1]), DASK_CHUNK_ROWS // div, reps, seed)
    except ImportError:
        print("(dask or scikit-learn is not installed: Dask case skipped)", file=sys.stderr)
    if not rows:
        return 2
    show(format_table(rows), FOOTNOTES)
    write_json(getattr(args, "json", None), {"scenario": "pipeline", "reps": reps, "results": rows})
    return 0
