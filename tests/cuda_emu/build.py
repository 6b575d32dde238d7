"""Build the emulator library: normfast's real CUDA sources compiled as C++ by g++.

One library holds every kernel instantiation of normfast._gpu._kernels (the same
name expressions CuPy's RawModule is given) for every element type.  It is built
once and cached in a temporary directory keyed by the hash of everything that goes
into it (kernel sources, emulator sources, compiler and flags), so a test session
compiles it at most once and later sessions reuse it.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# -ffp-contract=off: no FMA contraction (the device contracts, so the emulator's
# arithmetic is never more accurate than the device's); no fast-math; the kernels'
# 16-byte vector casts need -fno-strict-aliasing, as nvcc assumes.
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing",
            "-fno-fast-math", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0", "-Wall", "-Wno-unknown-pragmas",
            "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unused-but-set-variable"]


class BuildError(RuntimeError):
    pass


def _kernels():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from normfast._gpu import _kernels
    return _kernels


def cxxflags():
    """CXXFLAGS plus NF_EMU_CXXFLAGS from the environment (e.g. -DNF_EMU_UCONTEXT: the portable
    ucontext switch instead of the x86-64 one)."""
    return CXXFLAGS + os.environ.get("NF_EMU_CXXFLAGS", "").split()


def compiler():
    return os.environ.get("NF_EMU_CXX") or shutil.which("g++") or shutil.which("c++")


def generated_source():
    """The kernels translation unit: emulation header, kernel sources, registrations."""
    k = _kernels()
    lines = ['#include "cuda_emu.h"', k.source(), "/* ---- registrations ---- */"]
    seen = set()
    for ctype in k.CTYPES.values():
        for name in k.name_expressions(ctype):
            if name not in seen:
                seen.add(name)
                lines.append(f'NF_EMU_KERNEL("{name}", {name})')
    return "\n".join(lines) + "\n"


def _cxx_version(cxx):
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path():
    """Build (or reuse) the emulator library; returns its path.  BuildError on failure."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler (g++) on PATH")
    gen = generated_source()
    h = hashlib.sha256()
    for part in (gen, (HERE / "cuda_emu.h").read_text(), (HERE / "runtime.cpp").read_text(),
                 (HERE / "selftest.cu").read_text(),
                 (HERE / "include" / "cuda_fp16.h").read_text(), (HERE / "include" / "cuda_bf16.h").read_text(),
                 " ".join(cxxflags()), cxx, _cxx_version(cxx)):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:20]
    cache = Path(os.environ.get("NF_EMU_CACHE") or Path(tempfile.gettempdir()) / "normfast-cuda-emu")
    lib = cache / f"libnfemu-{key}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        (work / "kernels.cpp").write_text(gen)
        inc = ["-I", str(HERE), "-I", str(HERE / "include")]
        objs, procs = [], []
        t0 = time.perf_counter()
        for src in (work / "kernels.cpp", HERE / "runtime.cpp", HERE / "selftest.cu"):   # in parallel
            obj = work / (src.stem + ".o")
            cmd = [cxx, *[f for f in cxxflags() if f != "-shared"], "-x", "c++", "-c", str(src), "-o", str(obj),
                   *inc]
            procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
            objs.append(str(obj))
        for cmd, p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise BuildError(f"emulator build failed:\n$ {' '.join(cmd)}\n{out}")
            if "warning" in out:
                raise BuildError(f"emulator build warnings (the kernels must compile cleanly):\n{out}")
        tmp = work / lib.name
        cmd = [cxx, "-shared", "-o", str(tmp), *objs]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise BuildError(f"emulator link failed:\n$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
        os.replace(tmp, lib)                     # atomic: concurrent sessions never see half a file
        (cache / f"build-{key}.log").write_text(f"built in {time.perf_counter() - t0:.1f} s\n")
        for old in list(cache.glob("libnfemu-*.so")) + list(cache.glob("build-*.log")):
            try:                                 # libraries of older sources, unused for a week
                if key not in old.name and time.time() - old.stat().st_atime > 7 * 86400:
                    old.unlink()
            except OSError:
                pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib
