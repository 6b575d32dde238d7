"""GPU engine: normfast's engine interface (normfast/_engine_cpu.py) on CuPy arrays.

GpuEngine has the CPU engine's methods and semantics, so the operators run unchanged
on the GPU (normfast._gpu.dispatch puts it in place for a call with CuPy arrays):
  kernel_dtype, kernel_array, writable_as_is, empty, to_host      array handling
  reduce(x, dims, kind=0, dy=None, m=None)                   -> (A*C, 3) float64
  apply(x, dims, m, p, q, out, dy=None, r=None)              -> out
  rows_forward(x, M, N, w, b, seg, period, eps, rms, out)    -> (mean, rstd), (M,) float64
  rows_add_forward(x, res, h, y, M, N, w, b, eps, rms)       -> (mean, rstd)
  rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db, gh=None) -> (dx, dw, db)
x / dy / gh / out / h / y / dx: CuPy arrays of float16, bfloat16 (the ml_dtypes dtype,
when CuPy has it), float32 or float64 on the device.  Statistics, coefficients, w / b and
dw / db are small float64 arrays on the host (NumPy; device arrays are accepted too and
host inputs are moved by the engine), exactly as with the CPU engine.
The row primitives also take row-strided 2-d views (unit inner stride, any row stride)
of x / dy / gh / out without a copy; every other input is made C-contiguous.
Numerics (see common.cuh): statistics and sums in float64, elementwise arithmetic in
float32 (float64 for float64 data) with x - mean as (x - hi) - lo.  Kernels run on the
current device and stream; modules are compiled once per (CuPy, device, element type).
"""
import math
import threading

import numpy as np

from . import _kernels

_NULL = np.uint64(0)          # a NULL pointer argument
_THREADS = 256                # block size of the 1-d kernels: 8 warps, enough to hide memory latency
                              # with several blocks per SM, few enough for 64 registers per thread
_ROW_MIN = 32                 # D >= _ROW_MIN: segment (row) mode (a warp reads whole 128-byte lines);
                              # else column mode (lanes across threads), as the CPU's NF_ROW_MIN
_MIN_UNIT = 8192              # minimum elements per reduction unit: a block's share is long enough that
                              # the float64 partial it writes and the merge of partials stay < 1% of the work
_modules = {}                 # (id(cupy module), device id, ctype) -> (cupy module, RawModule)
_sm = {}                      # (id(cupy module), device id) -> multiprocessor count
_lock = threading.Lock()


def _cp():
    import cupy
    return cupy


def _cdiv(a, b):
    return -(-a // b)


def _pow2ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def ctype_of(dtype):
    """CUDA element type for a NumPy / ml_dtypes dtype (TypeError if unsupported)."""
    name = np.dtype(dtype).name
    try:
        return _kernels.CTYPES[name]
    except KeyError:
        raise TypeError(f"GPU kernels support float16, bfloat16, float32 and float64, got {name}") from None


def _device_id():
    return _cp().cuda.Device().id


def sm_count():
    cp = _cp()
    dev = _device_id()
    key = (id(cp), dev)
    n = _sm.get(key)
    if n is None:
        n = int(cp.cuda.Device(dev).attributes["MultiProcessorCount"])
        _sm[key] = n
    return n


def module(dtype):
    """The compiled cupy.RawModule for element type `dtype` on the current device.  The
    cache key includes the CuPy module itself (the test emulator stands in for CuPy)."""
    cp = _cp()
    ctype = ctype_of(dtype)
    key = (id(cp), _device_id(), ctype)
    hit = _modules.get(key)
    if hit is None:
        with _lock:
            hit = _modules.get(key)
            if hit is None:
                mod = cp.RawModule(code=_kernels.source(), options=_kernels.RAWMODULE_OPTIONS,
                                   name_expressions=_kernels.name_expressions(ctype))
                hit = _modules[key] = (cp, mod)   # holding cp keeps its id unique
    return hit[1]


def _fn(dtype, name, *targs):
    ctype = ctype_of(dtype)
    expr = _kernels.kernel(name, ctype, *targs) if (targs or name not in ("nf_merge", "nf_colsum")) else name
    return module(dtype).get_function(expr)


def _launch(fn, grid, block, args):
    if not isinstance(block, tuple):
        block = (block,)
    fn((int(grid),), tuple(int(b) for b in block), tuple(args))


def _i64(v):
    return np.int64(v)


def _grid(units, threads):
    """Blocks for a grid-stride loop over `units`: at most a full wave of resident blocks."""
    per_sm = max(1, 2048 // threads)
    return max(1, min(int(units), sm_count() * per_sm))


# ---------------------------------------------------------------- inputs

def _input(x, name="x"):
    cp = _cp()
    x = cp.asarray(x)
    ctype_of(x.dtype)
    return cp.ascontiguousarray(x)


def _like(y, x, name):
    cp = _cp()
    if y is None:
        raise TypeError(f"{name} is required")
    y = cp.asarray(y)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)
    y = cp.ascontiguousarray(y)
    if y.size != x.size:
        raise ValueError(f"{name} must have {x.size} elements, got {y.size}")
    return y


def _coef(c, n, name):
    """A float64 device vector of n entries from a host (NumPy) or device array."""
    cp = _cp()
    if c is None:
        raise TypeError(f"{name} is required")
    if not isinstance(c, cp.ndarray):
        c = np.ascontiguousarray(c, dtype=np.float64)
    c = cp.ascontiguousarray(cp.asarray(c, dtype=cp.float64)).reshape(-1)
    if c.size != n:
        raise ValueError(f"{name} must have {n} entries, got {c.size}")
    return c


def _host(a):
    return a if a is None or isinstance(a, np.ndarray) else _cp().asnumpy(a)


def _row_stride(a, M, N):
    """Row stride in elements when `a` is M rows of N contiguous elements (a 2-d view with
    unit inner stride, or C-contiguous), else None."""
    it = a.itemsize
    if a.ndim == 2 and a.shape == (M, N):
        s0, s1 = a.strides
        if (s1 == it or N <= 1) and s0 % it == 0:
            return s0 // it if M > 1 else N
    if a.flags.c_contiguous:
        return N
    return None


def _rows_in(a, M, N, name, dtype=None):
    """(array, ld) for a row operand: row-strided views as they are, else C-contiguous."""
    cp = _cp()
    if a is None:
        raise TypeError(f"{name} is required")
    a = cp.asarray(a)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    ctype_of(a.dtype)
    if a.size != M * N:
        raise ValueError(f"{name} must have M * N = {M * N} elements, got {a.size}")
    ld = _row_stride(a, M, N)
    if ld is None:
        a, ld = cp.ascontiguousarray(a), N
    return a.reshape(M, N) if a.ndim != 2 else a, ld


def _rows_out(out, x, M, N, name="out"):
    """(out, ld) for a row output: C-contiguous or a row-strided 2-d view whose rows do not
    overlap."""
    cp = _cp()
    if not isinstance(out, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray")
    if out.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if out.size != M * N:
        raise ValueError(f"{name} must have {M * N} elements, got {out.size}")
    ld = _row_stride(out, M, N)
    if ld is None or (M > 1 and abs(ld) < N):
        raise ValueError(f"{name} must be C-contiguous or a 2-d view with unit inner stride and disjoint rows")
    return out, ld


def _target(out, x, name="out"):
    cp = _cp()
    if not isinstance(out, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray")
    if out.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if out.size != x.size:
        raise ValueError(f"{name} must have {x.size} elements, got {out.size}")
    return out


def _dims(dims, x):
    A, B, C, D = (int(d) for d in dims)
    if min(A, B, C, D) < 0:
        raise ValueError(f"bad dims {dims}")
    if A * B * C * D != x.size:
        raise ValueError(f"dims {dims} do not match an array of {x.size} elements")
    return A, B, C, D


# ---------------------------------------------------------------- plans

def _vec(x):
    return 16 // x.dtype.itemsize


def _col_layout(L):
    """(LT lanes, RPP row slots) of a 256-thread block over rows of L lanes."""
    if L <= 128:
        return L, _THREADS // L
    return 128, _THREADS // 128


def _row_stats(M, N):
    """(mean, rstd) device buffers for M rows; for N == 0 already filled (0, NaN)."""
    cp = _cp()
    mean = cp.empty(M, dtype=cp.float64)
    rstd = cp.empty(M, dtype=cp.float64)
    if M and N == 0:
        mean.fill(0.0)
        rstd.fill(math.nan)
    return mean, rstd


def _affine(w, b, n):
    """Device float64 weight / bias of n entries (ones / zeros for a missing one), or NULLs."""
    cp = _cp()
    if w is None and b is None:
        return _NULL, _NULL
    return (cp.ones(n, dtype=cp.float64) if w is None else _coef(w, n, "w"),
            cp.zeros(n, dtype=cp.float64) if b is None else _coef(b, n, "b"))


def _row_plan(S, B, D, V):
    """Pieces of the segments of each (a, c) dealt to K units per (a, c)."""
    target = sm_count() * (2048 // _THREADS)
    W = B * D
    K = max(1, min(_cdiv(target, S), _cdiv(W, _MIN_UNIT)))
    pps = 1 if K <= B else _cdiv(K, B)
    P = _cdiv(D, pps)
    P = _cdiv(P, 16) * 16                      # keeps pieces 16-byte aligned with their segment
    pps = _cdiv(D, P)
    P = min(P, D)
    npieces = B * pps
    ppu = _cdiv(npieces, min(K, npieces))
    K = _cdiv(npieces, ppu)
    TPS = max(1, min(_THREADS, _pow2ceil(_cdiv(P, V))))
    return P, pps, ppu, K, TPS


def _col_plan(A, B, L, units_per_thread_rows=16, cap=1 << 26):
    LT, RPP = _col_layout(L)
    NT = _cdiv(L, LT)
    target = sm_count() * (2048 // _THREADS)
    K = max(1, min(_cdiv(target, A * NT), _cdiv(B, RPP * units_per_thread_rows)))
    K = max(1, min(K, cap // max(1, A * L)))
    R = _cdiv(B, K)
    K = _cdiv(B, R)
    return LT, NT, R, K


def _rows_layout(N, V):
    """(threads per row, rows per block) of the row kernels."""
    if N <= 64 * V:
        return 32, 8
    tpr = max(64, min(512, _pow2ceil(_cdiv(N, 2 * V))))
    return tpr, max(1, _THREADS // tpr)


class _LazyCupy:
    def __get__(self, obj, owner):
        return _cp()


class GpuEngine:
    """The engine of the dispatcher's GPU route (same interface as CpuEngine)."""

    name = "cuda"
    xp = _LazyCupy()
    supports_samples = False      # channels-last group/instance norm: statistics, then apply
    supports_group_backward = False   # channels-first group/instance backward: sums, then apply

    # ---------------------------------------------------------------- arrays

    @staticmethod
    def kernel_dtype(dtype):
        """Every floating dtype with a kernel runs natively (float16 and bfloat16 included)."""
        dt = np.dtype(dtype).newbyteorder("=")
        ctype_of(dt)                     # TypeError for dtypes without a kernel
        return dt

    @staticmethod
    def kernel_array(a, dtype):
        cp = _cp()
        return cp.ascontiguousarray(cp.asarray(a, dtype=dtype))

    @staticmethod
    def writable_as_is(out):
        return out.flags.c_contiguous

    @staticmethod
    def empty(shape, dtype):
        return _cp().empty(shape, dtype=dtype)

    to_host = staticmethod(_host)

    # ---------------------------------------------------------------- primitives

    @staticmethod
    def reduce(x, dims, kind=0, dy=None, m=None):
        """Per (a, c) of x[A, B, C, D]: kind 0 -> (n, mean, M2); 1 -> (n, 0, sum x^2);
        2 -> (n, sum dy, sum dy * (x - m[a, c])).  Returns a (A*C, 3) float64 NumPy array."""
        cp = _cp()
        if kind not in (0, 1, 2):
            raise ValueError(f"kind must be 0, 1 or 2, got {kind}")
        x = _input(x)
        A, B, C, D = _dims(dims, x)
        S = A * C
        if S == 0 or B * D == 0:
            return np.zeros((S, 3), dtype=np.float64)
        if kind == 2:
            dy = _like(dy, x, "dy")
            m = _coef(m, S, "m")
        else:
            dy, m = x, _NULL
        out = cp.empty((S, 3), dtype=cp.float64)
        V = _vec(x)
        if D >= _ROW_MIN:
            P, pps, ppu, K, TPS = _row_plan(S, B, D, V)
            part = cp.empty((S * K, 3), dtype=cp.float64)
            _launch(_fn(x.dtype, "nf_reduce_row", kind), _grid(S * K, _THREADS), _THREADS,
                    (x, dy, m, _i64(A), _i64(B), _i64(C), _i64(D), _i64(P), _i64(pps), _i64(ppu), _i64(K),
                     np.int32(TPS), part))
            mC, mL, mD = 1, 1, 1
        else:
            L = C * D
            LT, NT, R, K = _col_plan(A, B, L)
            part = cp.empty((A * K * L, 3), dtype=cp.float64)
            _launch(_fn(x.dtype, "nf_reduce_col", kind), _grid(A * K * NT, _THREADS), _THREADS,
                    (x, dy, m, _i64(A), _i64(B), _i64(C), _i64(D), _i64(R), _i64(K), np.int32(LT), _i64(NT),
                     part))
            mC, mL, mD = C, L, D
        _launch(_fn(x.dtype, "nf_merge"), _grid(_cdiv(S, _THREADS // 32), _THREADS), _THREADS,
                (part, _i64(S), _i64(mC), _i64(K), _i64(mL), _i64(mD), np.int32(kind == 2), out))
        return _host(out)

    @staticmethod
    def apply(x, dims, m, p, q, out, dy=None, r=None):
        """out[a, b, c, d] = (x - m[a, c]) * p[a, c] + q[a, c] (+ dy * r[a, c])."""
        x = _input(x)
        A, B, C, D = _dims(dims, x)
        out = _target(out, x)
        if x.size == 0:
            return out
        S = A * C
        m, p, q = _coef(m, S, "m"), _coef(p, S, "p"), _coef(q, S, "q")
        has_dy = dy is not None
        if has_dy:
            dy = _like(dy, x, "dy")
            r = _coef(r, S, "r")
        else:
            dy, r = x, _NULL
        flag = "true" if has_dy else "false"
        V = _vec(x)
        if D >= _ROW_MIN:
            G = A * B * C
            pmax = _THREADS * V * 4
            pps = _cdiv(D, pmax)
            P = min(D, _cdiv(_cdiv(D, pps), 16) * 16)
            pps = _cdiv(D, P)
            TPS = max(1, min(_THREADS, _pow2ceil(_cdiv(P, V))))
            spb = _THREADS // TPS
            _launch(_fn(x.dtype, "nf_apply_seg", flag), _grid(_cdiv(G * pps, spb), _THREADS), _THREADS,
                    (x, dy, out, _i64(G), _i64(B * C), _i64(C), _i64(D), _i64(P), _i64(pps), np.int32(TPS),
                     m, p, q, r))
        else:
            L = C * D
            LT, RPP = _col_layout(L)
            NT = _cdiv(L, LT)
            R = RPP * 8
            K = _cdiv(B, R)
            _launch(_fn(x.dtype, "nf_apply_col", flag), _grid(A * K * NT, _THREADS), _THREADS,
                    (x, dy, out, _i64(A), _i64(B), _i64(C), _i64(D), _i64(R), _i64(K), np.int32(LT), _i64(NT),
                     m, p, q, r))
        return out

    @staticmethod
    def rows_forward(x, M, N, w, b, seg, period, eps, rms, out):
        """Fused per-row statistics and normalization.  Returns (mean, rstd), (M,) float64 NumPy."""
        M, N, seg, period = int(M), int(N), int(seg), int(period)
        x, ldx = _rows_in(x, M, N, "x")
        out, ldy = _rows_out(out, x, M, N)
        mean, rstd = _row_stats(M, N)
        if M * N == 0:
            return _host(mean), _host(rstd)
        if seg < 1 or N % seg:
            raise ValueError(f"seg must divide N = {N}, got {seg}")
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        wa, ba = _affine(w, b, period * (N // seg))
        tpr, rpb = _rows_layout(N, _vec(x))
        _launch(_fn(x.dtype, "nf_rows_fwd", "true" if rms else "false"), _grid(_cdiv(M, rpb), tpr * rpb),
                (tpr, rpb), (x, _i64(ldx), out, _i64(ldy), _i64(M), _i64(N), wa, ba, _i64(seg), _i64(period),
                             np.float64(eps), mean, rstd))
        return _host(mean), _host(rstd)

    @staticmethod
    def rows_add_forward(x, res, h, y, M, N, w, b, eps, rms):
        """Fused h = x + res (rounded in x's dtype, stored in h) and y = norm(h) per row (w/b
        float64 (N,) or None).  Returns (mean, rstd), (M,) float64 NumPy."""
        x, res = _input(x), _input(res, "residual")
        M, N = int(M), int(N)
        if M * N != x.size or res.shape != x.shape:
            raise ValueError("rows_add_forward: x and residual must hold M * N elements")
        h, y = _target(h, x, "h"), _target(y, x)
        mean, rstd = _row_stats(M, N)
        if M * N == 0:
            return _host(mean), _host(rstd)
        wa, ba = _affine(w, b, N)
        tpr, rpb = _rows_layout(N, _vec(x))
        _launch(_fn(x.dtype, "nf_rows_add_fwd", "true" if rms else "false"), _grid(_cdiv(M, rpb), tpr * rpb),
                (tpr, rpb), (x, res, h, y, _i64(M), _i64(N), wa, ba, np.float64(eps), mean, rstd))
        return _host(mean), _host(rstd)

    @staticmethod
    def rows_backward(x, dy, M, N, mean, rstd, w, need_dx, need_dw, need_db, gh=None, dx=None):
        """Row-wise (Layer/RMS) backward (mean None: rms); gh (optional, M x N) is added to dx
        inside the dx kernel.  dx: a C-contiguous device array of x's dtype to write (may be x, dy
        or gh itself), else one is allocated.  Returns (dx or None, dw or None, db or None); dx on
        the device, dw/db float64 NumPy."""
        cp = _cp()
        M, N = int(M), int(N)
        shape = tuple(x.shape)
        x, ldx = _rows_in(x, M, N, "x")
        dy, ldg = _rows_in(dy, M, N, "dy", x.dtype)
        if dx is None and need_dx:
            dx = cp.empty(shape, dtype=x.dtype)
        dx = dx if need_dx else None
        dw = np.zeros(N, dtype=np.float64) if need_dw else None
        db = np.zeros(N, dtype=np.float64) if need_db else None
        if M == 0 or N == 0:
            return dx, dw, db
        mean_a = _NULL if mean is None else _coef(mean, M, "mean")
        rstd_a = _coef(rstd, M, "rstd")
        w_a = _NULL if w is None else _coef(w, N, "w")
        if need_dx:
            gh, ldh = (_NULL, _i64(0)) if gh is None else _rows_in(gh, M, N, "gh", x.dtype)
            tpr, rpb = _rows_layout(N, _vec(x))
            _launch(_fn(x.dtype, "nf_rows_bwd_dx"), _grid(_cdiv(M, rpb), tpr * rpb), (tpr, rpb),
                    (x, _i64(ldx), dy, _i64(ldg), gh, _i64(ldh), dx, _i64(M), _i64(N), mean_a, rstd_a, w_a))
        if need_dw or need_db:
            LT, NT, R, K = _col_plan(1, M, N, cap=1 << 24)
            pw = cp.empty((K, N), dtype=cp.float64) if need_dw else _NULL
            pb = cp.empty((K, N), dtype=cp.float64) if need_db else _NULL
            _launch(_fn(x.dtype, "nf_rows_dwdb"), _grid(K * NT, _THREADS), _THREADS,
                    (x, _i64(ldx), dy, _i64(ldg), _i64(M), _i64(N), mean_a, rstd_a, _i64(R), _i64(K), np.int32(LT),
                     _i64(NT), pw, pb))
            colsum = _fn(x.dtype, "nf_colsum")
            sums = []
            for part in (pw, pb):
                if part is not _NULL:
                    o = cp.empty(N, dtype=cp.float64)
                    _launch(colsum, _grid(_cdiv(N, _THREADS), _THREADS), _THREADS, (part, _i64(K), _i64(N), o))
                    sums.append(_host(o))
                else:
                    sums.append(None)
            dw, db = sums
        return dx, dw, db
