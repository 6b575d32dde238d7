"""The engine interface: what the operator code (normfast/_core.py and the operator modules)
needs from a backend.  normfast._engine_cpu.CpuEngine (NumPy arrays, C kernels) and
normfast._gpu.engine.GpuEngine (CuPy arrays, CUDA kernels) implement it; an engine is the class
itself (static methods), selected per call by normfast._core.using().

The 4-d plan.  Every reduction whose reduced and kept axes alternate at most as K R K R is a
view, without copying, of x as [kept_outer, reduced_outer, kept_inner, reduced_inner] =
x[A, B, C, D], with one statistic per (a, c) reduced over (b, d):
  LayerNorm (M, N)            -> (M, 1, 1, N)
  BatchNorm NCHW              -> (1, N, C, HW)      channels-last -> (1, NHW, C, 1)
  GroupNorm NCHW              -> (N, 1, G, C/G*HW)  channels-last -> (N, HW, G, C/G)
  InstanceNorm NHWC           -> (N, HW, C, 1)
The C kernels (src_c/) and the CUDA kernels (normfast/_gpu/) take the same four sizes, named
A, B, C, D there.

Conventions of every method: x / dy / out are C-contiguous arrays of the engine's device in a
kernel dtype (``kernel_dtype``); statistics, coefficients, weight/bias and dw/db are host NumPy
float64 arrays, statistics of shape (A*C,) in (a, c) order.
"""
import enum
from typing import NamedTuple, Optional, Protocol, Tuple

import numpy as np


class Plan4(NamedTuple):
    """Sizes of the 4-d view x[A, B, C, D]: statistics per (kept_outer, kept_inner)."""
    kept_outer: int      # A
    reduced_outer: int   # B
    kept_inner: int      # C
    reduced_inner: int   # D


class Reduce(enum.IntEnum):
    """What ``Engine.reduce`` accumulates per (a, c); each row of its (A*C, 3) result holds
    (n, first, second).  The same numbers in src_c/moments.h and normfast/_gpu/common.cuh."""
    MOMENTS = 0      # (n, mean, M2): mean and centred sum of squares (Welford/Chan)
    SQUARES = 1      # (n, 0, sum x^2): RMSNorm
    GRAD_SUMS = 2    # (n, sum dy, sum dy * (x - m[a, c])): the channel-wise backward's two sums


class Engine(Protocol):
    """A backend for the operator code (see the module docstring for conventions)."""

    name: str                    # "cpu", "cuda"
    xp: object                   # the array module of x-sized arrays (numpy, cupy)
    supports_samples: bool       # has samples_forward (fused per-sample channels-last norms)
    supports_group_backward: bool   # has group_backward (channels-first group/instance backward, fused per row)

    # array handling
    @staticmethod
    def kernel_dtype(dtype) -> np.dtype: ...       # the dtype x is computed in (TypeError if none)
    @staticmethod
    def kernel_array(a, dtype): ...                # a as a C-contiguous kernel input (copies only if needed)
    @staticmethod
    def writable_as_is(out) -> bool: ...           # out can be written by the kernels directly
    @staticmethod
    def empty(shape, dtype): ...                   # an uninitialised output
    @staticmethod
    def to_host(a) -> np.ndarray: ...              # a small array as host NumPy

    # kernels
    @staticmethod
    def reduce(x, dims: Plan4, kind: Reduce = Reduce.MOMENTS, dy=None, m=None) -> np.ndarray: ...
    @staticmethod
    def apply(x, dims: Plan4, m, p, q, out, dy=None, r=None): ...
    #     out[a, b, c, d] = (x - m[a, c]) * p[a, c] + q[a, c] (+ dy * r[a, c]); returns out
    @staticmethod
    def rows_forward(x, M, N, w, b, seg, period, eps, rms, out) -> Tuple[np.ndarray, np.ndarray]: ...
    #     fused per-row statistics + normalization; (mean, rstd) (M,) float64
    @staticmethod
    def rows_add_forward(x, res, h, y, M, N, w, b, eps, rms) -> Tuple[np.ndarray, np.ndarray]: ...
    #     h = x + res stored, y = norm(h) per row; (mean, rstd)
    @staticmethod
    def rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db, gh=None, dx=None) -> Tuple: ...
    #     row-wise (Layer/RMS) backward, gh added to dx in the same pass, into `dx` when given; (dx, dw, db)
    @staticmethod
    def samples_forward(x, y, A, B, G, D, w, b, eps) -> Optional[Tuple[np.ndarray, np.ndarray]]: ...
    #     only when supports_samples: per-sample fused channels-last group/instance norm
    @staticmethod
    def group_backward(x, dy, dx, M, N, seg, period, mean, rstd, w) -> np.ndarray: ...
    #     only when supports_group_backward: rows of N = nseg * seg values (channel (i % period) * nseg + j
    #     for segment j of row i), dx written (None: not wanted); returns (M * nseg, 2) float64 per-segment
    #     (sum dy, sum dy * (x - mean))


METHODS = ("kernel_dtype", "kernel_array", "writable_as_is", "empty", "to_host", "reduce", "apply", "rows_forward",
           "rows_add_forward", "rows_backward")
