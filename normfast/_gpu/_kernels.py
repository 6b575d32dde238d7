"""Kernel sources and the list of instantiations (no CuPy import here).

One CUDA module per element type: common.cuh followed by the .cu files (their
`#include "common.cuh"` lines dropped, so the text handed to the compiler is
self-contained and CuPy's on-disk cache key, which hashes the source text,
changes whenever any file changes).
"""
from pathlib import Path

_DIR = Path(__file__).resolve().parent
HEADER = "common.cuh"
SOURCES = ("rows.cu", "reduce.cu", "apply.cu")

# dtype name -> CUDA type
CTYPES = {
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
    "float32": "float",
    "float64": "double",
}

# Options handed to cupy.RawModule (CuPy adds -I for its headers and the CUDA
# runtime headers, -ftz=true, -arch and --device-as-default-execution-space).
RAWMODULE_OPTIONS = ("--std=c++14",)

_source_cache = None


def source():
    """The full module source (same text for every element type)."""
    global _source_cache
    if _source_cache is None:
        parts = [(_DIR / HEADER).read_text()]
        for name in SOURCES:
            text = (_DIR / name).read_text()
            lines = [ln for ln in text.splitlines() if ln.strip() != f'#include "{HEADER}"']
            parts.append(f"/* ---- {name} ---- */\n" + "\n".join(lines))
        _source_cache = "\n".join(parts) + "\n"
    return _source_cache


def kernel(name, ctype, *args):
    """Name expression of a template instantiation, e.g. kernel('nf_rows_fwd', 'float', 'true')."""
    return f"{name}<{', '.join((ctype,) + tuple(str(a) for a in args))}>"


def name_expressions(ctype):
    """Every kernel of the module for element type `ctype` (templates + extern "C")."""
    names = []
    for rms in ("false", "true"):
        names.append(kernel("nf_rows_fwd", ctype, rms))
        names.append(kernel("nf_rows_add_fwd", ctype, rms))
    names.append(kernel("nf_rows_bwd_dx", ctype))
    names.append(kernel("nf_rows_dwdb", ctype))
    for k in (0, 1, 2):
        names.append(kernel("nf_reduce_row", ctype, k))
        names.append(kernel("nf_reduce_col", ctype, k))
    for dy in ("false", "true"):
        names.append(kernel("nf_apply_seg", ctype, dy))
        names.append(kernel("nf_apply_col", ctype, dy))
    names += ["nf_merge", "nf_colsum"]
    return names
