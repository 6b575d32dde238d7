"""`python -m normfast gpu-check`: says so and fails without a device; its benchmark and its
test runner work (the benchmark on the CUDA emulator, so the code that runs on a GPU
machine has run before it gets there)."""
import os
import subprocess
import sys
import textwrap

import pytest

import cuda_emu
from normfast._gpu import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "normfast", "gpu-check", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_no_device_says_so_and_fails():
    pytest.importorskip("cupy")
    p = _run([], {"CUDA_VISIBLE_DEVICES": ""})       # no device, even on a GPU machine
    assert p.returncode == check.NO_DEVICE != 0
    assert "no usable CUDA device" in p.stderr and "nothing was checked" in p.stderr
    assert p.stdout.strip().splitlines()[-1] == "FAIL: no CUDA device"


def test_no_cupy_says_so_and_fails(tmp_path):
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no cupy here')\n")
    p = _run([], {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert p.returncode == check.NO_DEVICE
    assert "CuPy is not importable" in p.stderr and "FAIL" in p.stdout


def test_help():
    p = _run(["--help"])
    assert p.returncode == 0 and "--quick" in p.stdout and "--no-tests" in p.stdout


TINY = {"layer_norm": (8, 300), "rms_norm": (8, 300), "batch_norm": (2, 4, 5, 40), "group_norm": (2, 64, 3, 40)}


def test_bench_on_emulator(monkeypatch, capsys):
    cp = cuda_emu.backend("emu", monkeypatch)
    monkeypatch.setattr(check, "SHAPES", {k: (v, v) for k, v in TINY.items()})
    monkeypatch.setattr(check, "MIN_TIME", 0.0)
    monkeypatch.setattr(check, "MIN_SAMPLES", 1)
    monkeypatch.setattr(check, "WARMUP", 0)
    rows, problems, notes = check.run_bench(quick=True)
    assert not problems, problems
    assert {(r["op"], r["dtype"], r["pass"]) for r in rows} == {
        (op, dt, p) for op in TINY for dt in ("float32", "bfloat16") for p in ("fwd", "bwd")}
    assert all(r["ms"] > 0 and r["gbs"] > 0 and r["copy_frac"] > 0 for r in rows)
    table = check.format_table(rows, "not installed")
    assert table.count("\n") == len(rows) + 2 and "group_norm" in table
    info, why = check.device_info()
    assert why is None and info["sm"] == cp.cuda.Device().attributes["MultiProcessorCount"]
    assert check.main(["--no-tests", "--quick"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("normfast gpu-check:") and out[-1].startswith("PASS")


def test_device_test_runner(tmp_path):
    """The pytest subprocess and its summary parsing (passed / failed / deselected)."""
    d = tmp_path / "tests"
    d.mkdir()
    (d / "test_x.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.gpu
        def test_ok():
            pass
        @pytest.mark.gpu
        def test_bad():
            assert 0
        def test_cpu():
            pass
    """))
    r = check.run_device_tests(d, "gpu", timeout=60)
    assert r["rc"] == 1
    assert r["counts"].get("passed") == 1 and r["counts"].get("failed") == 1 and r["counts"].get("deselected") == 1
