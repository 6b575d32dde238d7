"""GpuEngine (normfast._gpu.engine) against float64 references and the CPU engine.

Every test runs on two backends (the `cp` fixture):
  emu   the CUDA emulator (tests/cuda_emu): the real kernel sources compiled by g++,
        the engine's real planning and launches, 3 emulated multiprocessors (so
        small shapes already take grid-stride loops and multi-block reductions);
        runs everywhere.
  cuda  a CUDA device through CuPy; marked `gpu`, skipped without a device
        (`pytest -m gpu`, or `python -m normfast gpu-check`, runs exactly these).
Covers every primitive x dtype x layout: rows_forward (plain, affine, rms,
seg/period, row-strided views), reduce kinds 0/1/2 in row (D >= 32) and column
(D < 32) mode, apply (with / without dy, in place), rows_backward (with the fused
gh add), odd widths, unaligned views, empty inputs, 64-bit offsets on a strided
view, run-to-run (and, on the emulator, schedule-order) determinism.
"""
import numpy as np
import pytest

from cuda_emu import BF16, dtype_of
from normfast._engine_cpu import CpuEngine
from normfast._gpu.engine import GpuEngine

DTYPES = ["float16", "bfloat16", "float32", "float64"]


def eps_of(dt):
    """Rounding unit of the stored type."""
    if dt == BF16:
        return 2.0 ** -8
    return float(np.finfo(dt).eps) / 2


def acc_eps(dt):
    """Rounding unit of the elementwise arithmetic (float32 except for float64)."""
    return 2.0 ** -53 if dt == np.float64 else 2.0 ** -24


def rng_data(shape, dt, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale + loc
    return x.astype(dt)


def f64(a):
    return np.asarray(a).astype(np.float64)


def host(cp, a):
    return None if a is None else f64(cp.asnumpy(a))


def ulp(a, dt):
    """One unit in the last place of |a| in dtype dt (float64 result)."""
    a = np.abs(f64(a)).astype(dt)
    return np.spacing(a.astype(np.float32) if dt == BF16 else a).astype(np.float64) * (
        2.0 ** 16 if dt == BF16 else 1.0)


def assert_same(got, ref, dt, what=""):
    """Within one ulp of the output type (results of one computation that differ only in the
    order of float64 sums)."""
    assert_close(got, ref, ulp(ref, dt), what)


def assert_close(got, ref, atol, what=""):
    got, ref = f64(got), f64(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = np.abs(got - ref)
    bad = ~(err <= atol)          # NaN counts as bad
    assert not bad.any(), f"{what}: max err {np.nanmax(err) if err.size else 0} > atol {np.max(atol)}"


# ------------------------------------------------------------------ references
# Long double (80-bit on x86) so the references' own rounding stays below float64
# results' errors; results are returned as float64.

LD = np.longdouble


def ld(a):
    return np.asarray(a).astype(LD)


def _out(*arrays):
    r = tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)
    return r if len(r) > 1 else r[0]


def ref_rows_forward(x, M, N, w, b, seg, period, eps, rms):
    x = ld(x).reshape(M, N)
    mean = np.zeros(M, LD) if rms else x.mean(axis=1)
    var = (x * x).mean(axis=1) if rms else ((x - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1 / np.sqrt(var + LD(eps))
    y = (x - mean[:, None]) * rstd[:, None]
    if w is not None:
        nseg = N // seg
        idx = (np.arange(M) % period)[:, None] * nseg + np.arange(N)[None, :] // seg
        y = y * ld(w)[idx] + ld(b)[idx]
    return _out(mean, rstd, y)


def ref_reduce(x, dims, kind, dy=None, m=None):
    A, B, C, D = dims
    x4 = ld(x).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    n = np.full(A * C, float(B * D))
    if kind == 0:
        mean = x4.mean(axis=1) if B * D else np.zeros(A * C, LD)
        m2 = ((x4 - mean[:, None]) ** 2).sum(axis=1)
        return _out(np.stack([n, mean, m2], axis=1))
    if kind == 1:
        return _out(np.stack([n, np.zeros(A * C, LD), (x4 * x4).sum(axis=1)], axis=1))
    g4 = ld(dy).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    return _out(np.stack([n, g4.sum(axis=1), (g4 * (x4 - ld(m)[:, None])).sum(axis=1)], axis=1))


def ref_apply(x, dims, m, p, q, dy=None, r=None):
    A, B, C, D = dims
    x4 = ld(x).reshape(A, B, C, D)
    sh = lambda v: v.reshape(A, 1, C, 1)  # noqa: E731
    y = (x4 - sh(ld(m))) * sh(ld(p)) + sh(ld(q))
    if dy is not None:
        y = y + ld(dy).reshape(A, B, C, D) * sh(ld(r))
    return _out(y.reshape(np.shape(x)))


def ref_rows_backward(x, dy, M, N, mean, rstd, w):
    x, g0 = ld(x).reshape(M, N), ld(dy).reshape(M, N)
    m = np.zeros(M, LD) if mean is None else ld(mean)
    rstd = ld(rstd)
    xh = (x - m[:, None]) * rstd[:, None]
    g = g0 * (np.ones(N, LD) if w is None else ld(w))[None, :]
    s1 = g.mean(axis=1) if mean is not None else np.zeros(M, LD)
    s2 = (g * xh).mean(axis=1)
    dx = rstd[:, None] * (g - s1[:, None] - xh * s2[:, None])
    return _out(dx, (g0 * xh).sum(axis=0), g0.sum(axis=0), xh, g)


# Statistics are float64 sums of exact terms: their error is a few float64 roundings of
# the sums' magnitudes, whatever the input type.
STAT_RTOL = 1e-12


def mean_atol(x, rstd, w=None):
    """What a float64 mean's own rounding (a few ulps of the data's magnitude, as for the
    CPU engine) contributes to a normalized output: 16 * 2**-53 * max|x| * rstd * max|w|."""
    mag = float(np.abs(f64(x)).max()) if np.size(x) else 0.0
    wm = 1.0 if w is None else max(1.0, float(np.abs(w).max()))
    return 16 * 2.0 ** -53 * mag * np.reshape(rstd, (-1, 1)) * wm


# ------------------------------------------------------------------ rows_forward

ROW_SHAPES = [(1, 1), (3, 3), (4, 31), (2, 33), (7, 100), (5, 1025), (300, 40), (2, 4096), (1, 65537)]


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("M,N", ROW_SHAPES)
@pytest.mark.parametrize("affine,rms", [(False, False), (True, False), (False, True), (True, True)])
def test_rows_forward(cp, dtname, M, N, affine, rms):
    dt = dtype_of(cp, dtname)
    x = rng_data((M, N), dt, seed=M * 7 + N, loc=0.5, scale=2.0)
    rng = np.random.default_rng(1)
    w = rng.standard_normal(N) if affine else None
    b = rng.standard_normal(N) if affine else None
    eps = 1e-5
    y = cp.empty((M, N), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cp.asarray(x), M, N, w, b, 1, 1, eps, rms, y)
    assert isinstance(mean, np.ndarray) and mean.dtype == np.float64 and rstd.dtype == np.float64
    rm, rr, ry = ref_rows_forward(x, M, N, w, b, 1, 1, eps, rms)
    xs = np.abs(f64(x)).max()
    assert_close(mean, rm, STAT_RTOL * xs, "mean")
    assert_close(rstd, rr, STAT_RTOL * rr, "rstd")
    scale = max(1.0, np.abs(ry).max())
    tol = 2 * eps_of(dt) * np.abs(ry) + 8 * acc_eps(dt) * scale + mean_atol(x, rr, w)
    assert_close(host(cp, y), ry, tol, "y")
    if dt in (np.float32, np.float64):   # the CPU engine runs float32 / float64
        yc = np.empty_like(x)
        mc, rc = CpuEngine.rows_forward(x, M, N, w, b, 1, 1, eps, rms, yc)
        assert_close(mean, mc, STAT_RTOL * xs, "mean vs cpu")
        assert_close(rstd, rc, STAT_RTOL * rr, "rstd vs cpu")
        assert_close(host(cp, y), yc, 2 * tol, "y vs cpu")


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("n,G,seg", [(2, 3, 4), (3, 2, 33), (2, 4, 1), (1, 5, 3), (4, 2, 1029)])
@pytest.mark.parametrize("rms", [False, True])
def test_rows_forward_seg_period(cp, dtname, n, G, seg, rms):
    """GroupNorm / InstanceNorm on channels-first input: rows of (C/G) * HW values,
    weight entry j // seg, block i % period."""
    dt = dtype_of(cp, dtname)
    cpg = 3
    M, N, period = n * G, cpg * seg, G
    x = rng_data((M, N), dt, seed=seg, loc=-1.0, scale=3.0)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(period * cpg)
    b = rng.standard_normal(period * cpg)
    y = cp.empty((M, N), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cp.asarray(x), M, N, w, b, seg, period, 1e-5, rms, y)
    rm, rr, ry = ref_rows_forward(x, M, N, w, b, seg, period, 1e-5, rms)
    scale = max(1.0, np.abs(ry).max())
    assert_close(mean, rm, STAT_RTOL * 8, "mean")
    assert_close(rstd, rr, STAT_RTOL * rr, "rstd")
    tol = 2 * eps_of(dt) * np.abs(ry) + 8 * acc_eps(dt) * scale + mean_atol(x, rr, w)
    assert_close(host(cp, y), ry, tol, "y")
    if dt in (np.float32, np.float64):
        yc = np.empty_like(x)
        CpuEngine.rows_forward(x, M, N, w, b, seg, period, 1e-5, rms, yc)
        assert_close(host(cp, y), yc, 2 * tol, "y vs cpu")


@pytest.mark.parametrize("dtname", DTYPES)
def test_rows_forward_unaligned(cp, dtname):
    """Views that start 1 element past an allocation (and outputs aligned differently)."""
    dt = dtype_of(cp, dtname)
    M, N = 6, 1027
    flat = rng_data(M * N + 3, dt, seed=4, scale=2.0)
    xg = cp.asarray(flat)[1:1 + M * N].reshape(M, N)
    for off in (0, 1, 2):
        yb = cp.zeros(M * N + 3, dtype=dt)
        y = yb[off:off + M * N].reshape(M, N)
        GpuEngine.rows_forward(xg, M, N, None, None, 1, 1, 1e-5, False, y)
        rm, rr, ry = ref_rows_forward(flat[1:1 + M * N], M, N, None, None, 1, 1, 1e-5, False)
        tol = 2 * eps_of(dt) * np.abs(ry) + 8 * acc_eps(dt) * max(1.0, np.abs(ry).max())
        assert_close(host(cp, y), ry, tol, f"y off={off}")
        yh = host(cp, yb)
        assert (yh[:off] == 0).all() and (yh[off + M * N:] == 0).all()


@pytest.mark.parametrize("dtname", ["float16", "float32"])
def test_rows_strided_views(cp, dtname):
    """Row-strided x / dy / gh / out views (unit inner stride, any row stride, a negative
    one included) are used in place and give the contiguous computation's results (up to
    the order of float64 sums, which follows the rows' alignment)."""
    dt = dtype_of(cp, dtname)
    M, N, ld = 5, 300, 333
    base = cp.asarray(rng_data((M, 4 * ld), dt, seed=30, loc=1.0))
    rng = np.random.default_rng(31)
    w, b = rng.standard_normal(N), rng.standard_normal(N)
    for sl in (slice(None), slice(None, None, -1)):
        x = base[sl, 1:1 + N]
        dy = base[sl, ld + 3:ld + 3 + N]
        gh = base[sl, 2 * ld:2 * ld + N]
        xc, dyc, ghc = (cp.ascontiguousarray(a) for a in (x, dy, gh))
        yc = cp.empty((M, N), dtype=dt)
        ref = GpuEngine.rows_forward(xc, M, N, w, b, 1, 1, 1e-5, False, yc)
        outbuf = cp.zeros((M, ld), dtype=dt)
        y = outbuf[sl, 5:5 + N]
        got = GpuEngine.rows_forward(x, M, N, w, b, 1, 1, 1e-5, False, y)
        for g, r in zip(got, ref):
            assert_close(g, r, 1e-14 * np.abs(r), "stats")
        assert_same(host(cp, y), host(cp, yc), dt, "y")
        assert (host(cp, outbuf[:, :5]) == 0).all() and (host(cp, outbuf[:, 5 + N:]) == 0).all()
        mean, rstd = ref
        r1 = GpuEngine.rows_backward(x, dy, M, N, mean, rstd, w, True, True, True, gh=gh)
        r2 = GpuEngine.rows_backward(xc, dyc, M, N, mean, rstd, w, True, True, True, gh=ghc)
        assert_same(host(cp, r1[0]), host(cp, r2[0]), dt, "dx")
        for g, r in zip(r1[1:], r2[1:]):
            assert_close(g, r, 1e-12 * np.abs(r).max(), "dw / db")


def test_rows_64bit_offsets_on_strided_view(cp):
    """Rows 2**31 + 16 elements apart (float16: byte offsets past 2**33) in one sparse
    buffer: forward, backward dx (with gh) and dw / db address them with 64-bit
    arithmetic.  Only a few pages of the 12.9 GB buffer are touched."""
    try:
        free = cp.cuda.Device().mem_info[0]
    except Exception:  # noqa: BLE001
        free = None
    M, N, S = 3, 1000, 2 ** 31 + 16
    if free is not None and free < 1.2 * M * S * 2:
        pytest.skip("not enough device memory")
    big = cp.zeros(M * S, dtype=np.float16).reshape(M, S)
    xh = rng_data((M, N), np.float16, seed=40, loc=3.0)
    gh = rng_data((M, N), np.float16, seed=41)
    big[:, :N] = cp.asarray(xh)
    big[:, N:2 * N] = cp.asarray(gh)
    x, dy, y = big[:, :N], big[:, N:2 * N], big[:, 2 * N:3 * N]
    assert x.strides == (2 * S, 2)
    w = np.random.default_rng(42).standard_normal(N)
    mean, rstd = GpuEngine.rows_forward(x, M, N, w, w, 1, 1, 1e-5, False, y)
    yc = cp.empty((M, N), dtype=np.float16)
    mc, rc = GpuEngine.rows_forward(cp.asarray(xh), M, N, w, w, 1, 1, 1e-5, False, yc)
    assert_close(mean, mc, 1e-14 * np.abs(mc), "mean")
    assert_close(rstd, rc, 1e-14 * rc, "rstd")
    assert_same(host(cp, y), host(cp, yc), np.dtype(np.float16), "y")
    dx, dw, db = GpuEngine.rows_backward(x, dy, M, N, mean, rstd, w, True, True, True, gh=dy)
    cdx, cdw, cdb = GpuEngine.rows_backward(cp.asarray(xh), cp.asarray(gh), M, N, mean, rstd, w, True, True, True,
                                            gh=cp.asarray(gh))
    assert_same(host(cp, dx), host(cp, cdx), np.dtype(np.float16), "dx")
    assert_close(dw, cdw, 1e-12 * np.abs(cdw).max(), "dw")
    assert_close(db, cdb, 1e-12 * np.abs(cdb).max(), "db")
    assert float(big[-1, -1].item()) == 0.0 and (host(cp, big[:, 3 * N:3 * N + 64]) == 0).all()
    del big, x, dy, y


@pytest.mark.parametrize("dtname", DTYPES)
def test_rows_forward_empty(cp, dtname):
    dt = dtype_of(cp, dtname)
    y = cp.empty((0, 5), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cp.empty((0, 5), dtype=dt), 0, 5, None, None, 1, 1, 1e-5, False, y)
    assert mean.shape == (0,) and rstd.shape == (0,)
    y = cp.empty((3, 0), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cp.empty((3, 0), dtype=dt), 3, 0, None, None, 1, 1, 1e-5, False, y)
    assert mean.shape == (3,) and np.isnan(rstd).all()


# ------------------------------------------------------------------ reduce

ROW_DIMS = [(1, 4, 3, 40), (2, 3, 5, 1025), (1, 1, 1, 70000), (3, 1, 2, 33), (1, 64, 3, 64), (1, 2, 1, 40000)]
COL_DIMS = [(1, 1000, 3, 1), (2, 50, 7, 5), (1, 300, 200, 1), (4, 17, 1, 31), (1, 1, 5, 3), (2, 2000, 2, 2),
            (1, 7, 300, 3)]


def _check_reduce(got, ref, x, dims, kind, dy=None, m=None, rtol=STAT_RTOL):
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == ref.shape
    assert (got[:, 0] == ref[:, 0]).all(), "counts"
    A, B, C, D = dims
    x4 = f64(x).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    if kind == 0:
        mag = np.abs(x4).max(axis=1) if x4.size else 0
        assert_close(got[:, 1], ref[:, 1], rtol * mag, "mean")
        assert_close(got[:, 2], ref[:, 2], rtol * (ref[:, 2] + x4.shape[1] * mag ** 2 * 1e-3) + 1e-300, "M2")
    elif kind == 1:
        assert (got[:, 1] == 0).all()
        assert_close(got[:, 2], ref[:, 2], rtol * ref[:, 2], "sum x^2")
    else:
        g4 = f64(dy).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
        assert_close(got[:, 1], ref[:, 1], rtol * np.abs(g4).sum(axis=1), "sum dy")
        t = np.abs(g4 * (x4 - m[:, None])).sum(axis=1)
        assert_close(got[:, 2], ref[:, 2], rtol * t, "sum dy (x - m)")


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("dims", ROW_DIMS + COL_DIMS)
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_reduce(cp, dtname, dims, kind):
    dt = dtype_of(cp, dtname)
    A, B, C, D = dims
    x = rng_data((A, B, C, D), dt, seed=sum(dims) + kind, loc=3.0, scale=1.5)
    dy = m = None
    if kind == 2:
        dy = rng_data((A, B, C, D), dt, seed=5)
        m = np.random.default_rng(6).standard_normal(A * C) + 3.0
    got = GpuEngine.reduce(cp.asarray(x), dims, kind, None if dy is None else cp.asarray(dy), m)
    ref = ref_reduce(x, dims, kind, dy, m)
    _check_reduce(got, ref, x, dims, kind, dy, m)
    if dt in (np.float32, np.float64):
        cpu = CpuEngine.reduce(x, dims, kind, dy, m)
        _check_reduce(got, cpu, x, dims, kind, dy, m)


@pytest.mark.parametrize("dims", [(1, 2000, 3, 1), (1, 8, 2, 4096), (2, 3, 2, 50), (1, 1, 1, 300000),
                                  (1, 20000, 4, 1)])
def test_reduce_large_mean_precision(cp, dims):
    """float32, mean 1e4, std 0.1, one unit or many (multi-block, then merged): the mean and
    M2 keep float64 accuracy."""
    x = rng_data(dims, np.float32, seed=7, loc=1e4, scale=0.1)
    got = GpuEngine.reduce(cp.asarray(x), dims, 0)
    ref = ref_reduce(x, dims, 0)
    assert np.abs(got[:, 1] - ref[:, 1]).max() <= 1e-10
    assert np.abs(got[:, 2] / ref[:, 2] - 1).max() <= 1e-9


@pytest.mark.parametrize("dims", [(0, 3, 2, 4), (2, 0, 3, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_reduce_empty(cp, dims, kind):
    A, B, C, D = dims
    x = cp.empty(dims, dtype=np.float32)
    m = np.zeros(A * C) if kind == 2 else None
    got = GpuEngine.reduce(x, dims, kind, x if kind == 2 else None, m)
    assert got.shape == (A * C, 3)
    assert (got == 0).all()


# ------------------------------------------------------------------ apply

@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("dims", ROW_DIMS[:5] + COL_DIMS)
@pytest.mark.parametrize("with_dy", [False, True])
def test_apply(cp, dtname, dims, with_dy):
    dt = dtype_of(cp, dtname)
    A, B, C, D = dims
    x = rng_data(dims, dt, seed=8, loc=2.0, scale=3.0)
    rng = np.random.default_rng(9)
    m = rng.standard_normal(A * C) + 2.0
    p = rng.standard_normal(A * C)
    q = rng.standard_normal(A * C)
    dy = rng_data(dims, dt, seed=10) if with_dy else None
    r = rng.standard_normal(A * C) if with_dy else None
    out = cp.empty(dims, dtype=dt)
    res = GpuEngine.apply(cp.asarray(x), dims, m, p, q, out, None if dy is None else cp.asarray(dy), r)
    assert res is out
    ref = ref_apply(x, dims, m, p, q, dy, r)
    scale = max(1.0, np.abs(ref).max())
    tol = 2 * eps_of(dt) * np.abs(ref) + 16 * acc_eps(dt) * scale
    assert_close(host(cp, out), ref, tol, "apply")
    if dt in (np.float32, np.float64):
        oc = np.empty_like(x)
        CpuEngine.apply(x, dims, m, p, q, oc, dy, r)
        assert_close(host(cp, out), oc, 2 * tol, "apply vs cpu")


@pytest.mark.parametrize("dims", [(2, 3, 4, 100), (1, 500, 6, 1)])
def test_apply_inplace_and_unaligned(cp, dims):
    A, B, C, D = dims
    n = A * B * C * D
    flat = rng_data(n + 1, np.float32, seed=11, scale=2.0)
    rng = np.random.default_rng(12)
    m, p, q = rng.standard_normal(A * C), rng.standard_normal(A * C), rng.standard_normal(A * C)
    ref = ref_apply(flat[1:].reshape(dims), dims, m, p, q)
    xg = cp.asarray(flat)[1:].reshape(dims)           # 4 bytes past a 16-byte boundary
    GpuEngine.apply(xg, dims, m, p, q, xg)            # in place
    assert_close(host(cp, xg), ref, 1e-6 * max(1.0, np.abs(ref).max()), "in place")


def test_apply_empty(cp):
    x = cp.empty((2, 0, 3, 4), dtype=np.float32)
    out = cp.empty_like(x)
    assert GpuEngine.apply(x, (2, 0, 3, 4), np.zeros(6), np.ones(6), np.zeros(6), out) is out


# ------------------------------------------------------------------ rows_backward

@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("M,N", [(1, 1), (3, 3), (4, 33), (5, 1025), (300, 7), (3, 4096), (1, 65537)])
@pytest.mark.parametrize("rms,with_w,with_gh", [(False, False, False), (False, True, True), (True, False, True),
                                                (True, True, False)])
def test_rows_backward(cp, dtname, M, N, rms, with_w, with_gh):
    dt = dtype_of(cp, dtname)
    x = rng_data((M, N), dt, seed=13, loc=1.0, scale=2.0)
    dy = rng_data((M, N), dt, seed=14)
    gh = rng_data((M, N), dt, seed=15) if with_gh else None
    w = np.random.default_rng(15).standard_normal(N) if with_w else None
    rm, rr, _ = ref_rows_forward(x, M, N, None, None, 1, 1, 1e-5, rms)
    mean = None if rms else rm
    launches = len(cp.emulator["launches"]) if hasattr(cp, "emulator") else None
    dx, dw, db = GpuEngine.rows_backward(cp.asarray(x), cp.asarray(dy), M, N, mean, rr, w, True, True, True,
                                         gh=None if gh is None else cp.asarray(gh))
    if launches is not None:      # dx (gh added in it), dw/db partials, two column sums
        assert len(cp.emulator["launches"]) - launches == 4
    rdx, rdw, rdb, xh, g = ref_rows_backward(x, dy, M, N, mean, rr, w)
    if gh is not None:
        rdx = rdx + f64(gh)
    assert dx.dtype == dt and dw.dtype == np.float64 and db.dtype == np.float64
    assert isinstance(dw, np.ndarray) and isinstance(db, np.ndarray)
    sdx = rr[:, None] * (np.abs(g) + np.abs(g).mean(axis=1, keepdims=True)
                         + np.abs(xh) * np.abs(g * xh).mean(axis=1, keepdims=True))
    if gh is not None:
        sdx = sdx + np.abs(f64(gh))
    tol = 2 * eps_of(dt) * np.abs(rdx) + 16 * acc_eps(dt) * sdx
    assert_close(host(cp, dx), rdx, tol, "dx")
    g0 = f64(dy)
    assert_close(dw, rdw, 8 * acc_eps(dt) * np.abs(g0 * xh).sum(axis=0) + 1e-300, "dw")
    assert_close(db, rdb, STAT_RTOL * np.abs(g0).sum(axis=0), "db")
    if dt in (np.float32, np.float64):
        cdx, cdw, cdb = CpuEngine.rows_backward(x, dy, M, N, mean, rr, w, True, True, True, gh=gh)
        assert_close(host(cp, dx), cdx, 2 * tol, "dx vs cpu")
        assert_close(dw, cdw, 8 * acc_eps(dt) * np.abs(g0 * xh).sum(axis=0) + 1e-300, "dw vs cpu")
        assert_close(db, cdb, STAT_RTOL * np.abs(g0).sum(axis=0), "db vs cpu")


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (False, False, False)])
def test_rows_backward_needs(cp, needs):
    M, N = 20, 37
    x = rng_data((M, N), np.float32, seed=16)
    dy = rng_data((M, N), np.float32, seed=17)
    rm, rr, _ = ref_rows_forward(x, M, N, None, None, 1, 1, 1e-5, False)
    dx, dw, db = GpuEngine.rows_backward(cp.asarray(x), cp.asarray(dy), M, N, rm, rr, None, *needs)
    rdx, rdw, rdb, _, _ = ref_rows_backward(x, dy, M, N, rm, rr, None)
    for got, ref, need in ((dx, rdx, needs[0]), (dw, rdw, needs[1]), (db, rdb, needs[2])):
        if need:
            got = host(cp, got) if got is dx else got
            assert_close(got, ref, 1e-5 * max(1.0, np.abs(ref).max()), "grad")
        else:
            assert got is None


def test_rows_backward_empty(cp):
    x = cp.empty((0, 5), dtype=np.float32)
    dx, dw, db = GpuEngine.rows_backward(x, x, 0, 5, np.empty(0), np.empty(0), None, True, True, True)
    assert dx.shape == (0, 5) and (dw == 0).all() and (db == 0).all() and dw.shape == (5,)
    x = cp.empty((3, 0), dtype=np.float32)
    dx, dw, db = GpuEngine.rows_backward(x, x, 3, 0, np.zeros(3), np.ones(3), None, True, True, True)
    assert dx.shape == (3, 0) and dw.shape == (0,) and db.shape == (0,)


# ------------------------------------------------------------------ determinism / misc

def _runs(cp):
    """Every primitive on shapes with multi-unit reductions and grid-stride loops; all results
    as host arrays."""
    out = []
    x = cp.asarray(rng_data((1, 64, 3, 3000), np.float32, seed=18, loc=5.0))
    out.append(GpuEngine.reduce(x, (1, 64, 3, 3000), 0))
    xc = cp.asarray(rng_data((4000, 3), np.float32, seed=19))
    out.append(GpuEngine.reduce(xc, (1, 4000, 3, 1), 0))
    out.append(GpuEngine.reduce(xc, (1, 4000, 3, 1), 2, xc, np.ones(3)))
    M, N = 500, 300
    x = cp.asarray(rng_data((M, N), np.float32, seed=20))
    dy = cp.asarray(rng_data((M, N), np.float32, seed=21))
    y = cp.empty((M, N), dtype=np.float32)
    out += list(GpuEngine.rows_forward(x, M, N, None, None, 1, 1, 1e-5, False, y)) + [host(cp, y)]
    out += [host(cp, a) for a in GpuEngine.rows_backward(x, dy, M, N, np.zeros(M), np.ones(M), None,
                                                         True, True, True, gh=dy)]
    GpuEngine.apply(x, (1, M, 1, N), np.ones(1), np.ones(1), np.zeros(1), y, dy, np.ones(1))
    out.append(host(cp, y))
    return out


def test_deterministic(cp):
    a, b = _runs(cp), _runs(cp)
    for u, v in zip(a, b):
        assert (u == v).all()
    if hasattr(cp, "emulator"):
        # the emulator can run the threads of every block in the opposite order: a kernel
        # whose result depended on the order of unsynchronized threads would differ
        cp.emulator["reverse"] = not cp.emulator["reverse"]
        try:
            c = _runs(cp)
        finally:
            cp.emulator["reverse"] = not cp.emulator["reverse"]
        for u, v in zip(a, c):
            assert (u == v).all()


def test_rejects_bad_out(cp):
    x = cp.zeros((2, 40), dtype=np.float32)
    with pytest.raises(TypeError):
        GpuEngine.rows_forward(x, 2, 40, None, None, 1, 1, 1e-5, False, cp.zeros((2, 40), dtype=np.float64))
    with pytest.raises(ValueError):      # overlapping output rows
        GpuEngine.rows_forward(x, 2, 40, None, None, 1, 1, 1e-5, False, cp.zeros((2, 80), dtype=np.float32)[:, ::2])
    with pytest.raises(TypeError):
        GpuEngine.reduce(cp.zeros(4, dtype=np.int32), (1, 1, 1, 4))


def test_engine_interface_matches_cpu():
    """One engine class with the CPU engine's interface (item: no separate adapter)."""
    for name in ("kernel_dtype", "kernel_array", "writable_as_is", "empty", "to_host", "reduce", "apply",
                 "rows_forward", "rows_add_forward", "rows_backward"):
        assert callable(getattr(GpuEngine, name)), name
    from normfast._gpu import dispatch
    assert not hasattr(dispatch, "GpuAdapter")
    import inspect
    assert (list(inspect.signature(GpuEngine.rows_backward).parameters)
            == list(inspect.signature(CpuEngine.rows_backward).parameters))


@pytest.mark.slow
@pytest.mark.gpu
def test_rows_forward_64bit_index_contiguous():
    """More than 2**31 contiguous elements (float16, 4 GiB): a device-only test (the emulator
    covers 64-bit offsets with test_rows_64bit_offsets_on_strided_view)."""
    from cuda_emu import real_cupy
    cupy = real_cupy()
    try:
        free = cupy.cuda.Device().mem_info[0]
    except Exception:  # noqa: BLE001
        pytest.skip("device memory size unknown")
    M, N = 2 ** 16 + 1, 2 ** 15
    if free < 2.5 * M * N * 2:
        pytest.skip("not enough device memory")
    x = cupy.ones((M, N), dtype=np.float16)
    x[-1, :] = (cupy.arange(N, dtype=np.float32) % 7).astype(np.float16)
    y = cupy.empty_like(x)
    mean, rstd = GpuEngine.rows_forward(x, M, N, None, None, 1, 1, 1e-5, False, y)
    last = f64(cupy.asnumpy(x[-1]))
    assert abs(float(mean[-1]) - last.mean()) < 1e-12
    ry = (last - last.mean()) / np.sqrt(last.var() + 1e-5)
    assert np.abs(f64(cupy.asnumpy(y[-1])) - ry).max() < 1e-2
    assert float(cupy.abs(y[0].astype(cupy.float32)).max()) == 0.0
