"""Offline compilation check of every GPU kernel (no device needed).

`compile_all(archs)` compiles the module of each element type to PTX with
NVRTC directly (cupy_backends.cuda.libs.nvrtc), with the options CuPy's
RawModule uses plus -arch=compute_XX, and reports per kernel instantiation.
`main(argv)` is the CLI behind `python -m normfast check-kernels [--arch sm_XX ...]`:
it prints the status per kernel and arch and, when `ptxas` is on PATH, the
registers / spills that `ptxas -v` reports for the PTX.  Exit code 1 when
anything failed to compile.
"""
import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from . import _kernels

DEFAULT_ARCHS = ("sm_70", "sm_80", "sm_90")

_cache = {}   # (arch, ctype, source hash) -> result dict of _compile_module


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        return locs[0]
    return os.path.dirname(spec.origin) if spec.origin else None


def include_dirs():
    """CuPy's headers and the CUDA runtime headers of the nvidia-cuda-runtime-cu12 wheel."""
    dirs = []
    cupy_dir = _package_dir("cupy")
    if cupy_dir is not None:
        dirs.append(os.path.join(cupy_dir, "_core", "include"))
    try:
        rt = _package_dir("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        rt = None
    if rt is not None and os.path.isdir(os.path.join(rt, "include")):
        dirs.append(os.path.join(rt, "include"))
    else:
        home = os.environ.get("CUDA_PATH") or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
        if os.path.isdir(os.path.join(home, "include")):
            dirs.append(os.path.join(home, "include"))
    return dirs


def _arch_number(arch):
    m = re.fullmatch(r"(?:sm_|compute_)?(\d+)[a-z]?", arch.strip())
    if not m:
        raise ValueError(f"bad arch {arch!r}: expected e.g. sm_80")
    return m.group(1)


def nvrtc_options(arch):
    """The options CuPy's RawModule passes to NVRTC (see cupy/cuda/compiler.py and
    cupy._core.core.assemble_cupy_compiler_options) for `arch`."""
    opts = [f"-I{d}" for d in include_dirs()]
    opts += list(_kernels.RAWMODULE_OPTIONS)
    opts += ["-ftz=true", f"-arch=compute_{_arch_number(arch)}", "--device-as-default-execution-space"]
    return opts


def _compile_module(ctype, arch):
    from cupy_backends.cuda.libs import nvrtc

    src = _kernels.source()
    key = (arch, ctype, hashlib.sha1(src.encode()).hexdigest())
    if key in _cache:
        return _cache[key]
    names = _kernels.name_expressions(ctype)
    opts = nvrtc_options(arch)
    t0 = time.perf_counter()
    prog = nvrtc.createProgram(src, f"normfast_{ctype.strip('_')}.cu", [], [])
    res = {"arch": arch, "ctype": ctype, "names": names, "ok": False, "log": "", "ptx": None, "lowered": {}}
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, opts)
            res["ok"] = True
        except nvrtc.NVRTCError as e:
            res["error"] = str(e)
        res["log"] = nvrtc.getProgramLog(prog)
        if res["ok"]:
            res["ptx"] = nvrtc.getPTX(prog)
            res["lowered"] = {n: nvrtc.getLoweredName(prog, n) for n in names}
    finally:
        nvrtc.destroyProgram(prog)
    res["seconds"] = time.perf_counter() - t0
    _cache[key] = res
    return res


def compile_all(archs=DEFAULT_ARCHS, ctypes=None):
    """Compile every kernel instantiation for each arch.  Returns a list of dicts
    {arch, dtype, ctype, kernel, ok, log} (log: the NVRTC log, the error log on failure)."""
    out = []
    for arch in archs:
        for dtype, ctype in _kernels.CTYPES.items():
            if ctypes is not None and ctype not in ctypes and dtype not in ctypes:
                continue
            r = _compile_module(ctype, arch)
            for n in r["names"]:
                out.append({"arch": arch, "dtype": dtype, "ctype": ctype, "kernel": n, "ok": r["ok"],
                            "log": r["log"] if not r["ok"] else r["log"].strip(),
                            "lowered": r["lowered"].get(n)})
    return out


def ptx_of(arch, ctype):
    """PTX text of one module (None if it failed to compile)."""
    r = _compile_module(ctype, arch)
    return r["ptx"]


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_info(ptx, arch, ptxas="ptxas"):
    """Run `ptxas -v` on PTX.  Returns ({mangled name: {registers, spill_stores,
    spill_loads}}, error message or None)."""
    if isinstance(ptx, (bytes, bytearray)):
        ptx = ptx.decode()
    ptx = ptx.rstrip("\x00")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        try:
            p = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(d, "k.cubin")],
                               capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            return {}, str(e)
    text = p.stdout + p.stderr
    if p.returncode != 0:
        if "is not defined for option 'gpu-name'" in text:
            return {}, f"this ptxas does not support {arch} (no register report)"
        return {}, text.strip().splitlines()[-1] if text.strip() else f"ptxas exit {p.returncode}"
    info, cur = {}, None
    for line in text.splitlines():
        m = _RE_ENTRY.search(line)
        if m:
            cur = m.group(1)
            info[cur] = {"registers": None, "spill_stores": 0, "spill_loads": 0}
            continue
        if cur is None:
            continue
        m = _RE_SPILL.search(line)
        if m:
            info[cur]["spill_stores"], info[cur]["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = _RE_REGS.search(line)
        if m:
            info[cur]["registers"] = int(m.group(1))
    return info, None


def main(argv=None):
    """CLI: check-kernels [--arch sm_XX]... [--no-ptxas].  Returns the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    if argv and argv[0] == "check-kernels":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m normfast check-kernels",
                                 description="Compile every normfast GPU kernel with NVRTC (no GPU needed).")
    ap.add_argument("--arch", action="append", default=None,
                    help="target architecture, e.g. sm_80 (repeatable; default: sm_70, sm_80, sm_90)")
    ap.add_argument("--no-ptxas", action="store_true", help="skip the ptxas register report")
    args = ap.parse_args(argv)
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    try:
        for a in archs:
            _arch_number(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from cupy_backends.cuda.libs import nvrtc
        ver = nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - any loading failure means no NVRTC
        print(f"error: NVRTC is not available ({type(e).__name__}: {e}); "
              "install cupy-cuda12x and nvidia-cuda-nvrtc-cu12", file=sys.stderr)
        return 1
    ptxas = None if args.no_ptxas else shutil.which("ptxas")
    print(f"NVRTC {ver[0]}.{ver[1]}; ptxas: {ptxas or 'not used'}")
    failed = 0
    for arch in archs:
        for dtype, ctype in _kernels.CTYPES.items():
            r = _compile_module(ctype, arch)
            regs, perr = {}, None
            if r["ok"] and ptxas:
                regs, perr = ptxas_info(r["ptx"], arch, ptxas)
            status = "ok" if r["ok"] else "FAILED"
            print(f"[{arch}] {dtype:8s} module: {status} ({r['seconds']:.1f} s)"
                  + (f"; ptxas: {perr}" if perr else ""))
            for n in r["names"]:
                line = f"  {arch}  {n:45s} {'ok' if r['ok'] else 'FAILED'}"
                info = regs.get(r["lowered"].get(n)) if r["ok"] else None
                if info:
                    line += (f"  regs={info['registers']} spill_st={info['spill_stores']}B"
                             f" spill_ld={info['spill_loads']}B")
                print(line)
            if not r["ok"]:
                failed += 1
                print(r["log"] or r.get("error", ""))
    print("all kernels compiled" if not failed else f"{failed} module(s) failed to compile")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
