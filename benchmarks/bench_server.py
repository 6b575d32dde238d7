"""The server scenario (``python -m normfast bench --scenario server``) in pytest-benchmark.

Same cases (layer_norm / rms_norm on (batch*tokens, hidden) float32 and layer_norm (16384, 1024),
output allocated by every call) and same peers, built by ``normfast.bench.server``:
normfast on NumPy arrays and on torch tensors (each also forced serial), torch eager,
torch.compile (compiled before timing) and ONNX Runtime (CPU EP, one-node graph).  Peers that
are not installed are skipped.  pytest-benchmark times each peer on its own (no interleaving,
no per-call p99: the CLI scenario does that).

    pytest benchmarks/bench_server.py --benchmark-group-by=param:op,param:shape --benchmark-columns=median,iqr,ops
    pytest benchmarks/bench_server.py -k "32x768"
    NORMFAST_BENCH_BUSY=2 pytest benchmarks/bench_server.py    # with 2 spinning background processes
    pytest benchmarks/bench_server.py --benchmark-disable -q   # smoke run: each once + accuracy check
"""
import os

import numpy as np
import pytest

import normfast
from normfast.bench import server as bs

from _cases import shape_id

PEERS = ("normfast", "normfast-serial", "normfast-torch", "normfast-torch-serial", "torch", "torch-compile",
         "onnxruntime")
CASES = [(op, shape, peer) for op, shape in bs.plan_cases() for peer in PEERS]     # case-major: inputs reused
TOL = 1e-5          # max abs error of normfast's float32 outputs of O(1..10); peers: 1e-4

_ENV = []
_CASE = {}


@pytest.fixture(scope="module", autouse=True)
def server_env():
    """The optional peers (imported once) with torch on normfast's thread count; the busy
    processes of NORMFAST_BENCH_BUSY=N for the whole module."""
    nf = normfast
    threads = nf.get_num_threads()
    env = bs.Peers(nf, threads, None)
    saved = env.torch.get_num_threads() if env.torch is not None else None
    if saved is not None:
        env.torch.set_num_threads(threads)
    _ENV.append(env)
    try:
        with bs.BusyLoad(int(os.environ.get("NORMFAST_BENCH_BUSY", "0") or 0)):
            yield env
    finally:
        _ENV.clear()
        _CASE.clear()
        if saved is not None:
            env.torch.set_num_threads(saved)


def case_inputs(op, shape):
    """(x, w, b, float64 reference) of the case; only the last case is kept."""
    key = (op, shape)
    if key not in _CASE:
        _CASE.clear()
        x, w, b = bs.make_inputs(op, shape, np.random.default_rng(0))
        _CASE[key] = (x, w, b, bs.reference(x, w, b))
    return _CASE[key]


@pytest.mark.parametrize("op,shape,peer", CASES, ids=[f"{op}-{shape_id(s)}-{p}" for op, s, p in CASES])
def test_server(benchmark, server_env, op, shape, peer):
    env = server_env
    base = peer.replace("-serial", "")
    if base in env.notes:
        pytest.skip(f"{base}: {env.notes[base]}")
    x, w, b, ref = case_inputs(op, shape)
    peers = bs.build_peers(env, op, x, w, b, only={base})
    name = base + (bs.SERIAL if peer.endswith("-serial") else "")
    if name not in peers:
        pytest.skip(f"{peer}: {env.notes.get(base, 'not available')}")
    p = peers[name]
    benchmark.group = f"{op} {shape_id(shape)}"
    benchmark.extra_info.update(op=op, shape=list(shape), peer=name, input=p.input, threads=p.threads,
                                bytes=2 * x.size * 4, output="allocated", **p.extra)
    if p.enter is not None:
        p.enter()
    try:
        result = benchmark(p.fn)
    finally:
        if p.exit is not None:
            p.exit()
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["gbps"] = 2 * x.size * 4 / stats.stats.median / 1e9
    err = float(np.max(np.abs(np.asarray(p.convert(result), dtype=np.float64) - ref)))
    assert err < (TOL if base.startswith("normfast") else 1e-4), f"{op} {peer}: max abs err {err}"
