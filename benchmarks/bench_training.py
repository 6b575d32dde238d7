"""Forward + backward as a training step runs them (issue 16): normfast against torch eager and
torch.compile through autograd.

    pytest benchmarks -k training --benchmark-group-by=param:case --benchmark-columns=median,rounds

Same problems as ``python -m normfast bench --scenario training`` (normfast.bench.training): at its
``--quick`` sizes by default (the suite's smoke run stays quick and torch.compile compiles once per
shape), at the issue's sizes with ``NORMFAST_BENCH_FULL=1``.  ``extra_info`` holds the bytes moved
(forward 2, backward 3 x-sized arrays) and GB/s.  torch peers are skipped when torch is not installed.
"""
import os

import pytest

from normfast.bench import training as bt

FULL = os.environ.get("NORMFAST_BENCH_FULL") == "1"
CASES = {}
for _op, _layout, _shape, _g in bt.CASES:
    if not FULL:
        _shape, _g = bt.QUICK_SHAPES[_layout], (4 if _g else None)
    CASES.setdefault(f"{_op}-{'x'.join(map(str, _shape))}-{_layout}", (_op, _layout, _shape, _g))


@pytest.fixture(scope="module", params=list(CASES))
def problem(request):
    op, layout, shape, g = CASES[request.param]
    return request.param, bt.Problem(op, layout, shape, g, 0)


@pytest.mark.parametrize("peer", ["normfast", "normfast out=", "torch", "torch.compile"])
def test_forward_backward(benchmark, problem, peer):
    case, p = problem
    torch = None
    if peer.startswith("torch"):
        torch = pytest.importorskip("torch")
    peers = bt._peers(p, torch, {peer})
    if peer not in peers:
        pytest.skip(f"{peer} unavailable for {case}")
    benchmark(peers[peer][0])
    nbytes = p.nbytes_fwd + p.nbytes_bwd
    benchmark.extra_info.update(case=case, peer=peer, bytes=nbytes,
                                gbps=nbytes / benchmark.stats.stats.median / 1e9 if benchmark.stats else None)
