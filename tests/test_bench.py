"""Tests of the benchmark harness (normfast.bench), the CLI (python -m normfast) and a smoke
run of the pytest-benchmark suite in benchmarks/.  Tiny shapes: the whole file runs in seconds."""
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

HAVE_TORCH = have_module("torch")

# float32 results of normfast: a few ulp of O(1..10) outputs
NF_TOL = {"float32": 1e-5, "float64": 1e-10}


def expected_ops():
    return [op for op in nb.ALL_OPS if not op.startswith("add_") or hasattr(normfast, op)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    path, png = str(d / "bench.json"), str(d / "bench.png")
    argv = ["--quick", "--json", path, "--no-progress"]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", png]
    except ImportError:
        png = None
    rc = nb.main(argv)
    with open(path) as f:
        return rc, json.load(f), png


def test_quick_run_has_every_op(quick):
    rc, doc, _ = quick
    assert rc == 0
    rows = doc["results"]
    ops = {r["op"] for r in rows}
    assert set(expected_ops()) <= ops
    for op in expected_ops():
        mine = [r for r in rows if r["op"] == op]
        backends = {r["backend"] for r in mine}
        assert {"normfast", "numpy", "copy"} <= backends, (op, backends)
        if HAVE_TORCH:
            assert "torch" in backends, op
        if op.startswith("add_"):
            assert "normfast-unfused" in backends


def test_quick_rows_are_sane(quick):
    _, doc, _ = quick
    for r in doc["results"]:
        where = f"{r['op']} {r.get('case')} {r['backend']}: {r.get('message', '')}"
        assert r["status"] == "ok", where
        assert r["gbps"] > 0 and math.isfinite(r["gbps"]), where
        assert r["median_s"] > 0 and r["reps"] >= 3, where
        assert r["bytes"] > 0
        assert 0 < r["frac_copy"]
        if r["backend"] == "copy":
            continue
        assert r["speedup_normfast"] > 0 if r["backend"] != "normfast" else "speedup_normfast" not in r
        err = r["max_abs_err"]
        assert err is not None and math.isfinite(err), where
        bound = NF_TOL[r["dtype"]] if r["backend"].startswith("normfast") else 1e-2
        assert err < bound, where
        for name, e in r["errors"].items():       # every output, the weight grads too
            assert math.isfinite(e), (where, name)


def test_byte_counts(quick):
    _, doc, _ = quick
    for r in doc["results"]:
        n = math.prod(r["shape"]) * np.dtype(r["dtype"]).itemsize
        factor = {"moments": 1, "layer_norm_backward": 3, "batch_norm_backward": 3,
                  "add_layer_norm": 4, "add_rms_norm": 4}.get(r["op"], 2)
        assert r["bytes"] == factor * n, r["op"]


def test_json_meta(quick):
    _, doc, _ = quick
    meta = doc["meta"]
    assert meta["normfast"] == normfast.__version__
    assert meta["numpy"] == np.__version__
    assert meta["simd_clone"] in ("avx512f", "avx2", "sse2", "generic") or meta["simd_clone"].startswith("unknown")
    assert meta["threads"] >= 1
    assert "bytes" in doc["conventions"]


def test_plot_written(quick):
    _, _, png = quick
    if png is None:
        pytest.skip("matplotlib not installed")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_table_and_header_printed(capsys):
    assert nb.main(["--quick", "--ops", "layer_norm", "--shapes", "16x32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SIMD clone" in out and "OpenMP" in out and "numpy " + np.__version__ in out
    assert "max abs err" in out and "nf speed-up" in out
    assert out.count("layer_norm  ") == 1
    for be in ("normfast", "numpy", "copy"):
        assert be in out


def test_ops_shapes_threads_filters(tmp_path):
    path = str(tmp_path / "r.json")
    before = normfast.get_num_threads()
    assert nb.main(["--quick", "--ops", "layer_norm,batch_*", "--shapes", "4x8x3x3", "--threads", "1",
                    "--backends", "numpy", "--json", path, "--no-progress"]) == 0
    assert normfast.get_num_threads() == before          # restored after main()
    doc = json.load(open(path))
    assert doc["meta"]["threads"] == 1
    cases = {(r["op"], r["layout"]) for r in doc["results"]}
    assert cases == {("layer_norm", None), ("batch_norm", "NCHW"), ("batch_norm", "NHWC"),
                     ("batch_norm_eval", "NCHW"), ("batch_norm_backward", "NCHW")}
    assert all(r["shape"] == [4, 8, 3, 3] for r in doc["results"])
    assert {r["backend"] for r in doc["results"]} == {"normfast", "numpy", "copy"}
    nhwc = [r for r in doc["results"] if r["layout"] == "NHWC"]
    assert nhwc[0]["storage_shape"] == [4, 3, 3, 8]


def test_bad_arguments():
    with pytest.raises(SystemExit):
        nb.main(["--shapes", "12xa"])
    assert nb.main(["--ops", "no_such_op", "--no-progress"]) == 2
    assert nb.parse_shapes("4096x1024, 8x64x32x32") == [(4096, 1024), (8, 64, 32, 32)]


def test_failing_peer_is_reported_not_fatal(monkeypatch, tmp_path):
    orig = nb.build_case

    def broken(*a, **k):
        case = orig(*a, **k)
        case.factories["numpy"] = lambda: nb.Peer(lambda: 1 / 0, lambda r: {})

        def bad_factory():
            raise RuntimeError("peer setup exploded")
        case.factories["bogus"] = bad_factory
        return case

    monkeypatch.setattr(nb._timing, "build_case", broken)       # where run_case looks it up
    path = str(tmp_path / "r.json")
    assert nb.main(["--quick", "--ops", "rms_norm", "--shapes", "8x16", "--json", path, "--no-progress"]) == 0
    rows = {r["backend"]: r for r in json.load(open(path))["results"]}
    assert rows["normfast"]["status"] == "ok"
    assert rows["numpy"]["status"] == "failed" and "ZeroDivisionError" in rows["numpy"]["message"]
    assert rows["bogus"]["status"] == "failed" and "exploded" in rows["bogus"]["message"]


def test_add_norm_rows(monkeypatch, tmp_path):
    """add_layer_norm/add_rms_norm rows (with a stand-in when this build has not got them yet)."""
    if not hasattr(normfast, "add_layer_norm"):
        def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
                           residual_out=None):
            h = np.add(x, residual, out=residual_out)
            return normfast.layer_norm(h, normalized_shape, weight, bias, eps, out=out), h
        monkeypatch.setattr(normfast, "add_layer_norm", add_layer_norm, raising=False)
    path = str(tmp_path / "r.json")
    assert nb.main(["--quick", "--ops", "add_layer_norm", "--shapes", "8x64", "--json", path, "--no-progress"]) == 0
    rows = {r["backend"]: r for r in json.load(open(path))["results"]}
    assert {"normfast", "normfast-unfused", "numpy", "copy"} <= set(rows)
    assert rows["normfast"]["status"] == "ok" and rows["normfast"]["max_abs_err"] < 1e-5
    assert set(rows["normfast"]["errors"]) == {"y", "h"}


def test_without_torch(tmp_path):
    path = str(tmp_path / "r.json")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from normfast.bench import main\n"
            f"sys.exit(main(['--quick', '--ops', 'layer_norm', '--shapes', '8x32', '--json', {path!r}, "
            "'--no-progress']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "torch -" in p.stdout
    backends = {r["backend"] for r in json.load(open(path))["results"]}
    assert "torch" not in backends and {"normfast", "numpy", "copy"} <= backends


def test_cli_dispatch(monkeypatch, capsys):
    from normfast import __main__ as cli
    assert cli.main([]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("normfast._no_such_module", "missing"))
    assert cli.main(["ghost"]) == 2
    assert "unavailable" in capsys.readouterr().err


def test_cli_subprocess():
    p = subprocess.run([sys.executable, "-m", "normfast", "bench", "--help"], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=120)
    assert p.returncode == 0 and "--quick" in p.stdout and "--json" in p.stdout
    for cmd in ("check-kernels", "dask-demo"):       # present or not: never a traceback
        p = subprocess.run([sys.executable, "-m", "normfast", cmd, "--help"], capture_output=True, text=True,
                           env=subprocess_env(), cwd=ROOT, timeout=120)
        assert "Traceback" not in p.stderr, p.stderr
        if p.returncode != 0:
            assert "unavailable" in p.stderr


def test_benchmarks_suite_smoke():
    """pytest benchmarks --benchmark-disable on a subset: collection of bench_*.py, fixtures, accuracy check."""
    pytest.importorskip("pytest_benchmark")
    p = subprocess.run([sys.executable, "-m", "pytest", os.path.join(ROOT, "benchmarks"), "--benchmark-disable",
                        "-q", "-p", "no:cacheprovider", "-k", "normfast"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout


def test_bench_training_scenario(tmp_path, capsys):
    """`python -m normfast bench --scenario training --quick`: every operator and layout has
    forward+backward and backward rows for normfast (allocated and out=) and the copy roofline,
    with normfast's grad_x close to torch's float64 autograd."""
    pytest.importorskip("torch")
    path = tmp_path / "t.json"
    assert nb.main(["--scenario", "training", "--quick", "--reps", "1", "--backends", "torch",
                    "--json", str(path)]) == 0
    assert "forward+backward" in capsys.readouterr().out
    rows = json.loads(path.read_text())["results"]
    from normfast.bench.training import CASES
    keys = {(r["op"], r["shape"].split(" ")[-1] if " " in r["shape"] else "rows", r["phase"], r["backend"])
            for r in rows}
    for op, layout, _, _ in CASES:
        for phase in ("forward+backward", "backward"):
            for backend in ("normfast", "normfast out=", "torch", "copy"):
                assert (op, layout, phase, backend) in keys, (op, layout, phase, backend)
    for r in rows:
        assert r["median_s"] > 0 and r["gbps"] > 0
        if r["backend"] == "normfast":
            assert r["max_rel_err"] < 1e-5
