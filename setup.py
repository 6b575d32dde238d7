"""Build normfast's Cython/C extensions.

Environment switches:
  NORMFAST_SANITIZE=1   build with AddressSanitizer + UBSan (-O1 -g), for the test suite under sanitizers
  NORMFAST_NO_OPENMP=1  build without OpenMP (serial kernels)
  NORMFAST_DEBUG=1      turn Cython bounds/wraparound checks back on
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

SANITIZE = os.environ.get("NORMFAST_SANITIZE") == "1"
OPENMP = os.environ.get("NORMFAST_NO_OPENMP") != "1" and sys.platform != "darwin"

# -Wno-psabi: the 64-byte vector helpers are static inline (no ABI crosses a clone boundary).
cflags = ["-ffp-contract=off", "-fno-math-errno", "-Wno-unused-function", "-Wno-psabi", "-pthread"]
lflags = ["-pthread"]
if SANITIZE:
    cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    lflags += ["-fsanitize=address,undefined"]
else:
    cflags += ["-O3"]
if OPENMP:
    cflags.append("-fopenmp")
    lflags.append("-fopenmp")

# Global Cython directives (no per-file overrides, so the debug switch reaches every module).
directives = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True}
if os.environ.get("NORMFAST_DEBUG") == "1":
    directives.update(boundscheck=True, wraparound=True, cdivision=False)


def ext(name):
    return Extension(
        f"normfast._cpu.{name}",
        [f"normfast/_cpu/{name}.pyx"],
        include_dirs=["src_c", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=cflags,
        extra_link_args=lflags,
        depends=[os.path.join("src_c", f) for f in os.listdir("src_c")],
    )


setup(
    ext_modules=cythonize(
        [ext(n) for n in ("_openmp", "_pool", "_alloc", "_moments", "_normalize", "_backward")],
        compiler_directives=directives,
    ),
)
