"""Every GPU kernel instantiation compiles with NVRTC for sm_70 / sm_80 / sm_90.

Needs no device: only CuPy's NVRTC bindings and the CUDA headers
(nvidia-cuda-runtime-cu12); skipped when they are missing.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
try:
    NVRTC_VERSION = nvrtc.getVersion()
except Exception as e:  # noqa: BLE001 - libnvrtc missing / not loadable
    pytest.skip(f"NVRTC not loadable: {e}", allow_module_level=True)

from normfast._gpu import _kernels, compile as gpu_compile  # noqa: E402

if not any(os.path.exists(os.path.join(d, "cuda_fp16.h")) for d in gpu_compile.include_dirs()):
    pytest.skip("CUDA headers (nvidia-cuda-runtime-cu12) not found", allow_module_level=True)

ARCHS = ("sm_70", "sm_80", "sm_90")


@pytest.fixture(scope="module")
def results():
    return gpu_compile.compile_all(ARCHS)


def test_every_instantiation_compiles(results):
    failed = [(r["arch"], r["kernel"], r["log"]) for r in results if not r["ok"]]
    assert not failed, "\n".join(f"{a} {k}:\n{log}" for a, k, log in failed[:3])
    expected = {(a, k) for a in ARCHS for ct in _kernels.CTYPES.values() for k in _kernels.name_expressions(ct)}
    assert {(r["arch"], r["kernel"]) for r in results} == expected
    assert all(r["lowered"] for r in results)


def test_no_compiler_warnings(results):
    # NVRTC 12.x says "Architectures prior to '<compute/sm>_75' are deprecated" for sm_70: not ours.
    lines = {ln for r in results for ln in r["log"].splitlines()
             if "warning" in ln and "are deprecated" not in ln}
    assert not lines, lines


@pytest.mark.parametrize("arch", ARCHS)
def test_ptx_has_every_entry(results, arch):
    for dtype, ctype in _kernels.CTYPES.items():
        ptx = gpu_compile.ptx_of(arch, ctype).decode()
        assert f".target sm_{arch[3:]}" in ptx
        for r in results:
            if r["arch"] == arch and r["ctype"] == ctype:
                assert f".entry {r['lowered']}" in ptx, (arch, r["kernel"])


def test_sources_are_package_data():
    here = os.path.dirname(_kernels.__file__)
    for name in (_kernels.HEADER,) + _kernels.SOURCES:
        assert os.path.exists(os.path.join(here, name))
    src = _kernels.source()
    assert not any(ln.strip() == '#include "common.cuh"' for ln in src.splitlines())


def test_cli_main_returns_0(capsys):
    assert gpu_compile.main(["check-kernels", "--no-ptxas"]) == 0
    out = capsys.readouterr().out
    for arch in ARCHS:
        assert f"[{arch}]" in out
    assert "FAILED" not in out


def test_cli_main_ptxas(capsys):
    """With ptxas on PATH the report includes registers (archs ptxas knows)."""
    import shutil
    if shutil.which("ptxas") is None:
        pytest.skip("ptxas not on PATH")
    assert gpu_compile.main(["--arch", "sm_90"]) == 0
    out = capsys.readouterr().out
    assert "regs=" in out or "ptxas:" in out


def test_cli_bad_arch():
    assert gpu_compile.main(["--arch", "hopper"]) == 2


def test_importing_normfast_does_not_import_cupy():
    code = ("import sys, normfast, normfast._gpu, normfast._gpu.engine, normfast._gpu.compile; "
            "sys.exit(1 if 'cupy' in sys.modules else 0)")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    assert importlib.util.find_spec("normfast._gpu") is not None
