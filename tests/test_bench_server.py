"""Tests of the server scenario (normfast.bench.server, ``python -m normfast bench --scenario server``):
a --quick run on one tiny shape (table and JSON structure, every number positive), the CLI wiring,
the interleaving and forced-serial blocks of the timer, the busy processes, torch.compile failure
handling and the ONNX graphs.  Tiny shapes: seconds."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from _helpers import ROOT, have_module, subprocess_env

import normfast
from normfast import bench as nb
from normfast.bench import server as bs

HAVE_TORCH = have_module("torch")
HAVE_ORT = have_module("onnx") and have_module("onnxruntime")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run on a tiny shape, every peer but torch.compile (its compile takes seconds;
    test_compile_peer_rows covers that peer with a stand-in compiler)."""
    path = str(tmp_path_factory.mktemp("server") / "server.json")
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = bs.main(["--quick", "--shapes", "4x64", "--peers", "normfast,normfast-torch,torch,onnxruntime",
                      "--threads", "2", "--json", path, "--no-progress"])
    with open(path) as f:
        return rc, json.load(f), buf.getvalue()


def expected_peers():
    peers = {"normfast", "normfast serial"}
    if HAVE_TORCH:
        peers |= {"normfast-torch", "normfast-torch serial", "torch"}
    if HAVE_ORT:
        peers.add("onnxruntime")
    return peers


def test_quick_rows(quick):
    rc, doc, _ = quick
    assert rc == 0
    rows = doc["results"]
    assert {(r["op"], tuple(r["shape"])) for r in rows} == {("layer_norm", (4, 64)), ("rms_norm", (4, 64))}
    for op in bs.OPS:
        mine = {r["peer"]: r for r in rows if r["op"] == op}
        assert set(mine) == expected_peers(), op
        for name, r in mine.items():
            where = f"{op} {name}: {r.get('message', '')}"
            assert r["status"] == "ok", where
            for key in ("calls", "reps", "block", "p50_us", "p99_us", "mean_us", "min_us", "max_us", "gbps"):
                assert r[key] > 0 and math.isfinite(r[key]), (where, key)
            assert r["min_us"] <= r["p50_us"] <= r["p99_us"] <= r["max_us"], where
            assert r["calls"] == r["reps"] * r["block"] and r["reps"] >= bs.QUICK["min_reps"], where
            assert r["bytes"] == 2 * 4 * 64 * 4
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["p50_us"] * 1e-6) / 1e9)
            assert r["threads"] == (1 if name.endswith(" serial") else 2), where
            # float32 outputs of O(1..10): a few ulp for normfast; torch and ORT within 1e-4
            assert 0 <= r["max_abs_err"] < (1e-5 if name.startswith("normfast") else 1e-4), where
        for base in ("normfast", "normfast-torch"):
            if base not in mine:
                continue
            par, ser = mine[base], mine[base + " serial"]
            assert par["p50_vs_serial"] == pytest.approx(par["p50_us"] / ser["p50_us"])
            assert par["p99_vs_serial"] == pytest.approx(par["p99_us"] / ser["p99_us"])
            assert "p50_vs_serial" not in ser
        if HAVE_TORCH:
            for r in mine.values():
                assert r["p50_vs_torch"] == pytest.approx(r["p50_us"] / mine["torch"]["p50_us"])
        if HAVE_ORT:
            assert mine["onnxruntime"]["p50_vs_onnxruntime"] == pytest.approx(1.0)


def test_quick_table_and_meta(quick):
    _, doc, out = quick
    meta = doc["meta"]
    assert meta["busy"] == 0 and meta["threads"] == 2 and meta["timer_overhead_us"] > 0
    assert meta["normfast"] == normfast.__version__
    assert "bytes" in doc["conventions"] and "p50_vs_serial" in doc["conventions"]
    for col in bs.COLUMNS:
        assert col in out
    for name in expected_peers():
        assert name in out
    assert "scenario: server (quick" in out and "timer overhead" in out
    if HAVE_ORT:
        assert meta["onnx_rms_graph"] == bs.RMS_ONNX_NATIVE or meta["onnx_rms_graph"] == bs.RMS_ONNX_DECOMPOSED
        assert "ONNX RMSNorm graph" in out
    else:
        assert "onnxruntime" in meta["skipped"]
    table = out[out.index("op "):]
    body = [ln for ln in table.splitlines()[2:] if ln.strip() and ln.split()[0] in bs.OPS]
    assert len(body) == 2                       # one group per op


def test_markdown_table(quick):
    _, doc, _ = quick
    md = bs.format_markdown(doc["results"]).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[0] == "call" and set(header[1:]) == expected_peers()
    assert len(md) == 2 + 2                                    # header, rule, one row per case
    for line in md[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header) and cells[0].endswith("(4, 64)")
        nf = cells[header.index("normfast")]
        p50, rest = nf.split(" / ")
        p99, ratios = rest.split(" (")
        assert float(p50.replace(" ", "")) > 0 and float(p99.replace(" ", "")) > 0 and "×" in ratios


def test_busy_run(tmp_path):
    """--busy through main(): recorded in the JSON, and no spinning process is left afterwards."""
    import multiprocessing
    path = str(tmp_path / "b.json")
    assert bs.main(["--quick", "--shapes", "2x16", "--ops", "rms_norm", "--peers", "normfast", "--busy", "1",
                    "--json", path, "--no-progress"]) == 0
    doc = json.load(open(path))
    assert doc["meta"]["busy"] == 1 and all(r["status"] == "ok" for r in doc["results"])
    assert not [p for p in multiprocessing.active_children() if p.name == "normfast-busy"]


def test_threads_restored():
    before = normfast.get_num_threads()
    assert bs.main(["--quick", "--shapes", "2x16", "--ops", "rms_norm", "--peers", "normfast", "--threads", "1",
                    "--no-progress"]) == 0
    assert normfast.get_num_threads() == before


def test_float32_precision_option(capsys):
    """--float32-precision high runs the normfast peers at float32 width (said in the header) and
    leaves the process's setting as it found it."""
    assert normfast.get_float32_precision() == "highest"
    assert bs.main(["--quick", "--shapes", "4x64", "--ops", "layer_norm", "--peers", "normfast",
                    "--float32-precision", "high", "--no-progress"]) == 0
    assert "normfast float32 precision: high" in capsys.readouterr().out
    assert normfast.get_float32_precision() == "highest"


def test_bad_arguments(capsys):
    assert bs.main(["--peers", "nope", "--no-progress"]) == 2
    assert "unknown peer" in capsys.readouterr().err
    assert bs.main(["--ops", "batch_norm", "--no-progress"]) == 2
    assert bs.main(["--busy", "-1"]) == 2
    with pytest.raises(SystemExit):
        bs.main(["--shapes", "4xq"])


def test_plan_cases():
    full = bs.plan_cases()
    assert len(full) == 2 * len(bs.TOKENS) * len(bs.HIDDEN) + 1
    assert full[-1] == ("layer_norm", (16384, 1024))
    assert ("rms_norm", (2048, 4096)) in full and ("layer_norm", (1, 768)) in full
    assert bs.plan_cases(["rms_norm"]) == [("rms_norm", (m, n)) for m in bs.TOKENS for n in bs.HIDDEN]
    assert bs.plan_cases(shapes=[(3, 5)]) == [("layer_norm", (3, 5)), ("rms_norm", (3, 5))]


def test_cli_scenario_server(tmp_path):
    """`python -m normfast bench --scenario server` reaches the scenario; --scenario default stays the old table."""
    path = str(tmp_path / "s.json")
    p = subprocess.run([sys.executable, "-m", "normfast", "bench", "--scenario", "server", "--quick", "--shapes", "2x32",
                        "--ops", "layer_norm", "--peers", "normfast", "--json", path, "--no-progress"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "p99 us" in p.stdout
    rows = json.load(open(path))["results"]
    assert {r["peer"] for r in rows} == {"normfast", "normfast serial"}
    p = subprocess.run([sys.executable, "-m", "normfast", "bench", "--scenario", "server", "--help"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert p.returncode == 0 and "--busy" in p.stdout and "--peers" in p.stdout


def test_scenario_default_unchanged(capsys):
    assert nb.main(["--scenario", "default", "--quick", "--ops", "layer_norm", "--shapes", "8x16", "--backends",
                    "numpy", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nf speed-up" in out and "p99 us" not in out


def test_measure_interleaves_and_forces_serial():
    """Every repetition runs one block of every peer; the serial peer's blocks run with 1 thread and
    the thread count is restored after each; one time per timed call."""
    import random
    log, blocks = [], []

    def peer(name):
        p = bs.Peer(name, lambda: log.append((name, normfast.get_num_threads())), None, "numpy", None)
        p.enter = lambda: blocks.append(name)
        return p
    par, ser = peer("par"), peer("ser")
    s_enter, s_exit = bs._serial(normfast, 2)
    ser.enter = lambda: (blocks.append("ser"), s_enter())
    ser.exit = s_exit
    normfast.set_num_threads(2)
    try:
        plan = dict(bs.QUICK, min_reps=6, max_reps=6)
        times, block, reps, failures = bs.measure({"par": par, "ser": ser}, plan, random.Random(1))
        assert normfast.get_num_threads() == 2
    finally:
        normfast.set_num_threads(None)
    assert not failures and reps == 6
    for n in ("par", "ser"):
        assert times[n].size == reps * block[n] and (times[n] > 0).all()
    assert {t for n, t in log if n == "ser"} == {1}
    assert {t for n, t in log if n == "par"} == {2}
    assert blocks[:2] == ["par", "ser"]                         # the warm-ups
    rounds = [sorted(blocks[i:i + 2]) for i in range(2, len(blocks), 2)]
    assert rounds == [["par", "ser"]] * reps                    # interleaved: both in every repetition


def test_measure_reports_a_failing_peer():
    import random

    def boom():
        raise ZeroDivisionError
    peers = {"ok": bs.Peer("ok", lambda: None, None, "numpy", 1), "bad": bs.Peer("bad", boom, None, "numpy", 1)}
    times, _, _, failures = bs.measure(peers, bs.QUICK, random.Random(0))
    assert set(times) == {"ok"} and isinstance(failures["bad"], ZeroDivisionError)


def _cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])        # utime + stime


def test_busy_load_spins_and_always_stops():
    procs = []
    with pytest.raises(RuntimeError, match="inside"):
        with bs.BusyLoad(1) as busy:
            procs = list(busy.procs)
            assert len(procs) == 1 and procs[0].is_alive()
            if os.path.exists(f"/proc/{procs[0].pid}/stat"):
                t0 = _cpu_ticks(procs[0].pid)
                import time
                time.sleep(0.3)
                assert _cpu_ticks(procs[0].pid) > t0            # it burns CPU
            raise RuntimeError("inside")
    assert procs and not any(p.is_alive() for p in procs)        # stopped on the exception too
    with bs.BusyLoad(0) as busy:
        assert busy.procs == []


def test_compile_failure_skips_column_once(monkeypatch, capsys):
    torch = pytest.importorskip("torch")

    def broken(fn, **kw):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", broken)
    assert bs.main(["--quick", "--shapes", "2x16,4x16", "--peers", "normfast,torch-compile", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("torch-compile skipped") == 1 and "no compiler here" in cap.err
    assert "torch-compile  " not in cap.out                     # no row in the table


def test_compile_peer_rows(monkeypatch, tmp_path):
    """The torch.compile column with a stand-in compiler (the real one takes seconds per shape)."""
    torch = pytest.importorskip("torch")
    calls = []

    def fake_compile(fn, **kw):
        calls.append(kw)
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    path = str(tmp_path / "c.json")
    assert bs.main(["--quick", "--shapes", "2x16", "--peers", "torch-compile", "--json", path, "--no-progress"]) == 0
    rows = [r for r in json.load(open(path))["results"] if r["peer"] == "torch-compile"]
    assert len(rows) == 2 and len(calls) == 2                   # compiled once per case
    assert calls[0] == {"fullgraph": True, "dynamic": False}
    for r in rows:
        assert r["status"] == "ok" and r["p50_us"] > 0 and r["compile_s"] >= 0 and r["max_abs_err"] < 1e-4


@pytest.mark.parametrize("op,decompose", [("layer_norm", False), ("rms_norm", False), ("rms_norm", True)])
def test_onnx_graphs(op, decompose):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    x, w, b = bs.make_inputs(op, (5, 48), rng)
    eps = bs.EPS if op == "layer_norm" else bs.RMS_EPS
    try:
        sess = bs.ort_session(ort, bs.onnx_model(onnx, op, x.shape, w, b, eps, decompose), 1)
    except Exception as e:
        if op == "rms_norm" and not decompose:
            pytest.skip(f"this onnxruntime has no RMSNormalization: {e}")
        raise
    y = sess.run(None, {"X": x})[0]
    # plain float64 reference, written here
    x64 = x.astype(np.float64)
    if op == "layer_norm":
        mu = x64.mean(-1, keepdims=True)
        ref = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b
    else:
        ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * w
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - ref)) < 1e-5
    nodes = [n.op_type for n in bs.onnx_model(onnx, op, x.shape, w, b, eps, decompose).graph.node]
    assert nodes == ({"layer_norm": ["LayerNormalization"]}[op] if op == "layer_norm" else
                     ["Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul"] if decompose else ["RMSNormalization"])


def test_reference_matches_plain_numpy():
    rng = np.random.default_rng(5)
    x, w, b = bs.make_inputs("layer_norm", (1000, 300), rng)        # several row blocks
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + bs.EPS) * w + b
    np.testing.assert_allclose(bs.reference(x, w, b), ref, rtol=0, atol=1e-12)
    ms = (x64 ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(bs.reference(x, w, None), x64 / np.sqrt(ms + bs.RMS_EPS) * w, rtol=0, atol=1e-12)
