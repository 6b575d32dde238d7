"""Shared input builders and fixtures of the pytest-benchmark suite.

Run:
    pytest benchmarks                                   # all ops x backends x shapes
    pytest benchmarks --benchmark-group-by=param:op     # backends side by side per op
    pytest benchmarks --benchmark-group-by=param:op,param:shape --benchmark-columns=median,ops
    pytest benchmarks -k "layer_norm and not backward"  # a subset
    pytest benchmarks --benchmark-disable -q            # smoke run: each case once + accuracy check

Every test takes the parameters ``op``, ``backend`` (normfast / numpy / torch / cupy, skipped
when not installed or without a CUDA device) and ``shape`` (and ``layout`` for channel ops).
Inputs, the plain NumPy peer and the torch/cupy peers are the ones of ``normfast.bench`` (the
``python -m normfast bench`` harness), so both measure the same thing.  ``extra_info`` holds
the op, backend, shape, layout, dtype, bytes moved and (when timed) GB/s.

The files are named bench_*.py; the ``pytest_collect_file`` hook below collects them.
"""
import numpy as np
import pytest

from normfast import bench as nb


def pytest_collect_file(file_path, parent):
    """Collect benchmarks/bench_*.py (pytest's default pattern is test_*.py)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if parent.session.isinitpath(file_path):                # named on the command line: pytest collects it
            return None
        patterns = parent.config.getini("python_files")
        if not any(file_path.match(p) for p in patterns):      # not collected twice if configured
            return pytest.Module.from_parent(parent, path=file_path)
    return None


_ENV = []
_CASE = {}


def bench_env():
    """The optional peers (torch, cupy), imported once per session."""
    if not _ENV:
        _ENV.append(nb.Env())
    return _ENV[0]


def make_case(op, shape, layout=None, dtype=np.float32, seed=0):
    """The normfast.bench Case (inputs + every backend) for op/shape/layout; the last one is cached
    so that the backends of one case share their inputs without holding every case in memory."""
    key = (op, tuple(shape), layout, np.dtype(dtype).name, seed)
    if key not in _CASE:
        _CASE.clear()
        _CASE[key] = nb.build_case(bench_env(), op, tuple(shape), layout, dtype, np.random.default_rng(seed))
    return _CASE[key]


def skip_unavailable(op, backend):
    env = bench_env()
    if op.startswith("add_") and not hasattr(env.nf, op):
        pytest.skip(f"normfast.{op} not in this build")
    if backend == "torch" and env.torch is None:
        pytest.skip(f"torch {env.torch_msg}")
    if backend == "cupy" and env.cp is None:
        pytest.skip(f"cupy: {env.cupy_msg}")


# Tolerances of the smoke check (max abs error vs the float64 reference, float32 data).
TOL = {"normfast": 1e-5, "normfast-unfused": 1e-5}
DEFAULT_TOL = 1e-3


@pytest.fixture
def run_bench(benchmark):
    """run_bench(op, backend, shape, layout=None, dtype=float32): benchmark one backend of one case.

    With --benchmark-disable the call runs once and its outputs are checked against the
    float64 reference."""

    def run(op, backend, shape, layout=None, dtype=np.float32):
        skip_unavailable(op, backend)
        case = make_case(op, shape, layout, dtype)
        if backend not in case.factories:
            pytest.skip(f"{backend} has no implementation of {op}")
        peer = case.factories[backend]()
        if peer.sync is None:
            fn = peer.fn
        else:
            def fn():
                r = peer.fn()
                peer.sync()
                return r
        benchmark.group = f"{op} {case.label}"
        benchmark.extra_info.update(op=op, backend=backend, shape=list(shape), layout=layout,
                                    dtype=np.dtype(dtype).name, bytes=case.nbytes)
        result = benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
            benchmark.extra_info["gbps"] = case.nbytes / stats.stats.median / 1e9
        if getattr(benchmark, "disabled", False):
            ref = case.ref()
            errs = nb._max_err(peer.convert(result), ref, case.primary)
            tol = TOL.get(backend, DEFAULT_TOL) * (1e-6 if np.dtype(dtype) == np.float64 else 1)
            assert errs and max(errs.values()) < tol, f"{op} {backend}: max abs err {errs} (tol {tol})"
        return result

    return run
