"""GpuEngine (normfast._gpu.engine) against float64 references and the CPU engine.

Needs CuPy and a usable CUDA device; skipped otherwise.  Covers every primitive
x dtype x layout: rows_forward (plain, affine, rms, seg/period), reduce kinds
0/1/2 in row (D >= 32) and column (D < 32) mode, apply (with / without dy,
in place), rows_backward, odd widths, unaligned views, empty inputs and
run-to-run determinism.
"""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")


def _device_count():
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no driver / no device / broken install
        return 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_device_count() == 0, reason="no usable CUDA device")]

from normfast._engine_cpu import CpuEngine  # noqa: E402
from normfast._gpu.engine import GpuEngine  # noqa: E402

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    ml_dtypes = None
    BF16 = None

DTYPES = ["float16", "bfloat16", "float32", "float64"]


def dtype_of(name):
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed: no bfloat16 dtype")
        try:
            cupy.asarray(np.ones(2, dtype=BF16))
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"this CuPy has no bfloat16 arrays ({e})")
        return BF16
    return np.dtype(name)


def eps_of(dt):
    """Rounding unit of the stored type."""
    if dt == BF16:
        return 2.0 ** -8
    return float(np.finfo(dt).eps) / 2


def acc_eps(dt):
    """Rounding unit of the accumulation type (float32 except for float64)."""
    return 2.0 ** -53 if dt == np.float64 else 2.0 ** -24


def rng_data(shape, dt, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale + loc
    return x.astype(dt)


def f64(a):
    return np.asarray(a).astype(np.float64)


def to_gpu(a):
    return cupy.asarray(a)


def to_cpu(a):
    return None if a is None else f64(cupy.asnumpy(a))


def assert_close(got, ref, atol, what=""):
    got, ref = f64(got), f64(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = np.abs(got - ref)
    bad = ~(err <= atol)          # NaN counts as bad
    assert not bad.any(), f"{what}: max err {np.nanmax(err) if err.size else 0} > atol {np.max(atol)}"


# ------------------------------------------------------------------ references

def ref_rows_forward(x, M, N, w, b, seg, period, eps, rms):
    x = f64(x).reshape(M, N)
    mean = np.zeros(M) if rms else x.mean(axis=1)
    var = (x * x).mean(axis=1) if rms else ((x - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean[:, None]) * rstd[:, None]
    if w is not None:
        nseg = N // seg
        idx = (np.arange(M) % period)[:, None] * nseg + np.arange(N)[None, :] // seg
        y = y * w[idx] + b[idx]
    return mean, rstd, y


def ref_reduce(x, dims, kind, dy=None, m=None):
    A, B, C, D = dims
    x4 = f64(x).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    n = np.full(A * C, float(B * D))
    if kind == 0:
        mean = x4.mean(axis=1) if B * D else np.zeros(A * C)
        m2 = ((x4 - mean[:, None]) ** 2).sum(axis=1)
        return np.stack([n, mean, m2], axis=1)
    if kind == 1:
        return np.stack([n, np.zeros(A * C), (x4 * x4).sum(axis=1)], axis=1)
    g4 = f64(dy).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    return np.stack([n, g4.sum(axis=1), (g4 * (x4 - m[:, None])).sum(axis=1)], axis=1)


def ref_apply(x, dims, m, p, q, dy=None, r=None):
    A, B, C, D = dims
    x4 = f64(x).reshape(A, B, C, D)
    sh = lambda v: v.reshape(A, 1, C, 1)  # noqa: E731
    y = (x4 - sh(m)) * sh(p) + sh(q)
    if dy is not None:
        y = y + f64(dy).reshape(A, B, C, D) * sh(r)
    return y.reshape(np.shape(x))


def ref_rows_backward(x, dy, M, N, mean, rstd, w):
    x, g0 = f64(x).reshape(M, N), f64(dy).reshape(M, N)
    m = np.zeros(M) if mean is None else mean
    xh = (x - m[:, None]) * rstd[:, None]
    g = g0 * (np.ones(N) if w is None else w)[None, :]
    s1 = g.mean(axis=1) if mean is not None else np.zeros(M)
    s2 = (g * xh).mean(axis=1)
    dx = rstd[:, None] * (g - s1[:, None] - xh * s2[:, None])
    return dx, (g0 * xh).sum(axis=0), g0.sum(axis=0), xh, g


# ------------------------------------------------------------------ rows_forward

ROW_SHAPES = [(1, 1), (3, 3), (4, 31), (2, 33), (7, 100), (5, 1025), (9, 256), (2, 4096), (1, 65537)]


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("M,N", ROW_SHAPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("rms", [False, True])
def test_rows_forward(dtname, M, N, affine, rms):
    dt = dtype_of(dtname)
    x = rng_data((M, N), dt, seed=M * 7 + N, loc=0.5, scale=2.0)
    rng = np.random.default_rng(1)
    w = rng.standard_normal(N) if affine else None
    b = rng.standard_normal(N) if affine else None
    eps = 1e-5
    y = cupy.empty((M, N), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(to_gpu(x), M, N, None if w is None else to_gpu(w),
                                        None if b is None else to_gpu(b), 1, 1, eps, rms, y)
    rm, rr, ry = ref_rows_forward(x, M, N, w, b, 1, 1, eps, rms)
    xs = np.abs(f64(x)).max()
    se = 64 * acc_eps(dt)
    assert_close(to_cpu(mean), rm, se * xs * 4 + 0.0, "mean")
    assert_close(to_cpu(rstd), rr, se * 8 * rr + 1e-300, "rstd")
    scale = max(1.0, np.abs(ry).max())
    assert_close(to_cpu(y), ry, 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale, "y")
    if dt in (np.float32, np.float64):   # the CPU engine runs float32 / float64
        yc = np.empty_like(x)
        mc, rc = CpuEngine.rows_forward(x, M, N, w, b, 1, 1, eps, rms, yc)
        assert_close(to_cpu(mean), mc, se * xs * 4, "mean vs cpu")
        assert_close(to_cpu(y), yc, 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale, "y vs cpu")


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("n,G,seg", [(2, 3, 4), (3, 2, 33), (2, 4, 1), (1, 5, 3), (4, 2, 1029)])
@pytest.mark.parametrize("rms", [False, True])
def test_rows_forward_seg_period(dtname, n, G, seg, rms):
    """GroupNorm / InstanceNorm on channels-first input: rows of (C/G) * HW values,
    weight entry j // seg, block i % period."""
    dt = dtype_of(dtname)
    cpg = 3
    M, N, period = n * G, cpg * seg, G
    x = rng_data((M, N), dt, seed=seg, loc=-1.0, scale=3.0)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(period * cpg)
    b = rng.standard_normal(period * cpg)
    y = cupy.empty((M, N), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(to_gpu(x), M, N, w, b, seg, period, 1e-5, rms, y)
    rm, rr, ry = ref_rows_forward(x, M, N, w, b, seg, period, 1e-5, rms)
    scale = max(1.0, np.abs(ry).max())
    assert_close(to_cpu(mean), rm, 256 * acc_eps(dt) * 8, "mean")
    assert_close(to_cpu(rstd), rr, 256 * acc_eps(dt) * rr, "rstd")
    assert_close(to_cpu(y), ry, 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale, "y")
    if dt in (np.float32, np.float64):
        yc = np.empty_like(x)
        CpuEngine.rows_forward(x, M, N, w, b, seg, period, 1e-5, rms, yc)
        assert_close(to_cpu(y), yc, 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale, "y vs cpu")


def test_rows_forward_large_mean_precision():
    """float32 rows of 4096 values, mean 1e4, std 0.1: the mean must keep its low bits."""
    M, N = 8, 4096
    x = rng_data((M, N), np.float32, seed=3, loc=1e4, scale=0.1)
    y = cupy.empty((M, N), dtype=np.float32)
    mean, rstd = GpuEngine.rows_forward(to_gpu(x), M, N, None, None, 1, 1, 0.0, False, y)
    rm, rr, ry = ref_rows_forward(x, M, N, None, None, 1, 1, 0.0, False)
    assert np.abs(to_cpu(y) - ry).max() <= 2e-6
    assert np.abs(to_cpu(mean) - rm).max() <= 1e-7 * 0.1 * 10
    assert np.abs(to_cpu(rstd) / rr - 1).max() <= 1e-6
    yc = np.empty_like(x)
    CpuEngine.rows_forward(x, M, N, None, None, 1, 1, 0.0, False, yc)
    assert np.abs(to_cpu(y) - yc).max() <= 2e-6


@pytest.mark.parametrize("dtname", DTYPES)
def test_rows_forward_unaligned(dtname):
    """Views that start 1 element past an allocation (and outputs aligned differently)."""
    dt = dtype_of(dtname)
    M, N = 6, 1027
    flat = rng_data(M * N + 3, dt, seed=4, scale=2.0)
    xg = to_gpu(flat)[1:1 + M * N].reshape(M, N)
    for off in (0, 1, 2):
        yb = cupy.zeros(M * N + 3, dtype=dt)
        y = yb[off:off + M * N].reshape(M, N)
        mean, rstd = GpuEngine.rows_forward(xg, M, N, None, None, 1, 1, 1e-5, False, y)
        rm, rr, ry = ref_rows_forward(flat[1:1 + M * N], M, N, None, None, 1, 1, 1e-5, False)
        scale = max(1.0, np.abs(ry).max())
        assert_close(to_cpu(y), ry, 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale, f"y off={off}")
        yh = to_cpu(yb)
        assert (yh[:off] == 0).all() and (yh[off + M * N:] == 0).all()


@pytest.mark.parametrize("dtname", DTYPES)
def test_rows_forward_empty(dtname):
    dt = dtype_of(dtname)
    y = cupy.empty((0, 5), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cupy.empty((0, 5), dtype=dt), 0, 5, None, None, 1, 1, 1e-5, False, y)
    assert mean.shape == (0,) and rstd.shape == (0,)
    y = cupy.empty((3, 0), dtype=dt)
    mean, rstd = GpuEngine.rows_forward(cupy.empty((3, 0), dtype=dt), 3, 0, None, None, 1, 1, 1e-5, False, y)
    assert mean.shape == (3,) and np.isnan(to_cpu(rstd)).all()


# ------------------------------------------------------------------ reduce

ROW_DIMS = [(1, 4, 3, 40), (2, 3, 5, 1025), (1, 1, 1, 70000), (3, 1, 2, 33), (1, 64, 3, 64), (1, 2, 1, 40000)]
COL_DIMS = [(1, 1000, 3, 1), (2, 50, 7, 5), (1, 300, 200, 1), (4, 17, 1, 31), (1, 1, 5, 3), (2, 2000, 2, 2),
            (1, 7, 300, 3)]


def _check_reduce(got, ref, x, dims, kind, dt, dy=None, m=None):
    got = to_cpu(got)
    assert got.shape == ref.shape
    assert (got[:, 0] == ref[:, 0]).all(), "counts"
    A, B, C, D = dims
    x4 = f64(x).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
    e = 256 * acc_eps(dt)
    if kind == 0:
        spread = np.sqrt(ref[:, 2] / np.maximum(ref[:, 0], 1))
        assert_close(got[:, 1], ref[:, 1], e * (spread + 1e-30) + 4 * 2.0 ** -53 * np.abs(ref[:, 1]), "mean")
        assert_close(got[:, 2], ref[:, 2], e * ref[:, 2] + 1e-300, "M2")
    elif kind == 1:
        assert (got[:, 1] == 0).all()
        assert_close(got[:, 2], ref[:, 2], e * ref[:, 2], "sum x^2")
    else:
        g4 = f64(dy).reshape(A, B, C, D).transpose(0, 2, 1, 3).reshape(A * C, B * D)
        assert_close(got[:, 1], ref[:, 1], e * np.abs(g4).sum(axis=1), "sum dy")
        t = np.abs(g4 * (x4 - m[:, None])).sum(axis=1)
        assert_close(got[:, 2], ref[:, 2], e * t, "sum dy (x - m)")


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("dims", ROW_DIMS + COL_DIMS)
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_reduce(dtname, dims, kind):
    dt = dtype_of(dtname)
    A, B, C, D = dims
    x = rng_data((A, B, C, D), dt, seed=sum(dims) + kind, loc=3.0, scale=1.5)
    dy = m = None
    if kind == 2:
        dy = rng_data((A, B, C, D), dt, seed=5)
        m = np.random.default_rng(6).standard_normal(A * C) + 3.0
    got = GpuEngine.reduce(to_gpu(x), dims, kind, None if dy is None else to_gpu(dy), m)
    ref = ref_reduce(x, dims, kind, dy, m)
    _check_reduce(got, ref, x, dims, kind, dt, dy, m)
    if dt in (np.float32, np.float64):
        cpu = CpuEngine.reduce(x, dims, kind, dy, m)
        _check_reduce(got, cpu, x, dims, kind, dt, dy, m)


@pytest.mark.parametrize("dims", [(1, 2000, 3, 1), (1, 8, 2, 4096), (2, 3, 2, 50)])
def test_reduce_large_mean_precision(dims):
    x = rng_data(dims, np.float32, seed=7, loc=1e4, scale=0.1)
    got = to_cpu(GpuEngine.reduce(to_gpu(x), dims, 0))
    ref = ref_reduce(x, dims, 0)
    assert np.abs(got[:, 1] - ref[:, 1]).max() <= 1e-7
    assert np.abs(got[:, 2] / ref[:, 2] - 1).max() <= 1e-5


@pytest.mark.parametrize("dims", [(0, 3, 2, 4), (2, 0, 3, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_reduce_empty(dims, kind):
    A, B, C, D = dims
    x = cupy.empty(dims, dtype=np.float32)
    m = np.zeros(A * C) if kind == 2 else None
    got = to_cpu(GpuEngine.reduce(x, dims, kind, x if kind == 2 else None, m))
    assert got.shape == (A * C, 3)
    assert (got == 0).all()


# ------------------------------------------------------------------ apply

@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("dims", ROW_DIMS[:5] + COL_DIMS)
@pytest.mark.parametrize("with_dy", [False, True])
def test_apply(dtname, dims, with_dy):
    dt = dtype_of(dtname)
    A, B, C, D = dims
    x = rng_data(dims, dt, seed=8, loc=2.0, scale=3.0)
    rng = np.random.default_rng(9)
    m = rng.standard_normal(A * C) + 2.0
    p = rng.standard_normal(A * C)
    q = rng.standard_normal(A * C)
    dy = rng_data(dims, dt, seed=10) if with_dy else None
    r = rng.standard_normal(A * C) if with_dy else None
    out = cupy.empty(dims, dtype=dt)
    res = GpuEngine.apply(to_gpu(x), dims, m, p, q, out, None if dy is None else to_gpu(dy), r)
    assert res is out
    ref = ref_apply(x, dims, m, p, q, dy, r)
    scale = max(1.0, np.abs(ref).max())
    tol = 4 * eps_of(dt) * scale + 64 * acc_eps(dt) * scale * 4
    assert_close(to_cpu(out), ref, tol, "apply")
    if dt in (np.float32, np.float64):
        oc = np.empty_like(x)
        CpuEngine.apply(x, dims, m, p, q, oc, dy, r)
        assert_close(to_cpu(out), oc, tol, "apply vs cpu")


@pytest.mark.parametrize("dims", [(2, 3, 4, 100), (1, 500, 6, 1)])
def test_apply_inplace_and_unaligned(dims):
    A, B, C, D = dims
    n = A * B * C * D
    flat = rng_data(n + 1, np.float32, seed=11, scale=2.0)
    rng = np.random.default_rng(12)
    m, p, q = rng.standard_normal(A * C), rng.standard_normal(A * C), rng.standard_normal(A * C)
    ref = ref_apply(flat[1:].reshape(dims), dims, m, p, q)
    xg = to_gpu(flat)[1:].reshape(dims)           # 4 bytes past a 16-byte boundary
    GpuEngine.apply(xg, dims, m, p, q, xg)        # in place
    assert_close(to_cpu(xg), ref, 1e-5 * max(1.0, np.abs(ref).max()), "in place")


def test_apply_empty():
    x = cupy.empty((2, 0, 3, 4), dtype=np.float32)
    out = cupy.empty_like(x)
    assert GpuEngine.apply(x, (2, 0, 3, 4), np.zeros(6), np.ones(6), np.zeros(6), out) is out


# ------------------------------------------------------------------ rows_backward

@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("M,N", [(1, 1), (3, 3), (4, 33), (5, 1025), (300, 7), (3, 4096), (1, 65537)])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("with_w", [False, True])
def test_rows_backward(dtname, M, N, rms, with_w):
    dt = dtype_of(dtname)
    x = rng_data((M, N), dt, seed=13, loc=1.0, scale=2.0)
    dy = rng_data((M, N), dt, seed=14)
    w = np.random.default_rng(15).standard_normal(N) if with_w else None
    rm, rr, _ = ref_rows_forward(x, M, N, None, None, 1, 1, 1e-5, rms)
    mean = None if rms else rm
    dx, dw, db = GpuEngine.rows_backward(to_gpu(x), to_gpu(dy), M, N, None if mean is None else to_gpu(mean),
                                         to_gpu(rr), None if w is None else to_gpu(w), True, True, True)
    rdx, rdw, rdb, xh, g = ref_rows_backward(x, dy, M, N, mean, rr, w)
    assert dx.dtype == dt and dw.dtype == np.float64 and db.dtype == np.float64
    sdx = rr[:, None] * (np.abs(g) + np.abs(g).mean(axis=1, keepdims=True)
                         + np.abs(xh) * np.abs(g * xh).mean(axis=1, keepdims=True))
    assert_close(to_cpu(dx), rdx, 4 * eps_of(dt) * np.abs(rdx) + 256 * acc_eps(dt) * sdx, "dx")
    g0 = f64(dy)
    assert_close(to_cpu(dw), rdw, 256 * acc_eps(dt) * np.abs(g0 * xh).sum(axis=0) + 1e-300, "dw")
    assert_close(to_cpu(db), rdb, 256 * acc_eps(dt) * np.abs(g0).sum(axis=0), "db")
    if dt in (np.float32, np.float64):
        cdx, cdw, cdb = CpuEngine.rows_backward(x, dy, M, N, mean, rr, w, True, True, True)
        assert_close(to_cpu(dx), cdx, 4 * eps_of(dt) * np.abs(rdx) + 256 * acc_eps(dt) * sdx, "dx vs cpu")
        assert_close(to_cpu(dw), cdw, 256 * acc_eps(dt) * np.abs(g0 * xh).sum(axis=0), "dw vs cpu")


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (False, False, False)])
def test_rows_backward_needs(needs):
    M, N = 20, 37
    x = rng_data((M, N), np.float32, seed=16)
    dy = rng_data((M, N), np.float32, seed=17)
    rm, rr, _ = ref_rows_forward(x, M, N, None, None, 1, 1, 1e-5, False)
    dx, dw, db = GpuEngine.rows_backward(to_gpu(x), to_gpu(dy), M, N, to_gpu(rm), to_gpu(rr), None, *needs)
    rdx, rdw, rdb, _, _ = ref_rows_backward(x, dy, M, N, rm, rr, None)
    for got, ref, need in ((dx, rdx, needs[0]), (dw, rdw, needs[1]), (db, rdb, needs[2])):
        if need:
            assert_close(to_cpu(got), ref, 1e-4 * max(1.0, np.abs(ref).max()), "grad")
        else:
            assert got is None


def test_rows_backward_empty():
    x = cupy.empty((0, 5), dtype=np.float32)
    dx, dw, db = GpuEngine.rows_backward(x, x, 0, 5, cupy.empty(0), cupy.empty(0), None, True, True, True)
    assert dx.shape == (0, 5) and (to_cpu(dw) == 0).all() and (to_cpu(db) == 0).all() and dw.shape == (5,)
    x = cupy.empty((3, 0), dtype=np.float32)
    dx, dw, db = GpuEngine.rows_backward(x, x, 3, 0, cupy.zeros(3), cupy.ones(3), None, True, True, True)
    assert dx.shape == (3, 0) and dw.shape == (0,) and db.shape == (0,)


# ------------------------------------------------------------------ determinism / misc

def test_deterministic():
    x = to_gpu(rng_data((1, 64, 3, 3000), np.float32, seed=18, loc=5.0))
    a = to_cpu(GpuEngine.reduce(x, (1, 64, 3, 3000), 0))
    b = to_cpu(GpuEngine.reduce(x, (1, 64, 3, 3000), 0))
    assert (a == b).all()
    xc = to_gpu(rng_data((4000, 3), np.float32, seed=19))
    a = to_cpu(GpuEngine.reduce(xc, (1, 4000, 3, 1), 0))
    b = to_cpu(GpuEngine.reduce(xc, (1, 4000, 3, 1), 0))
    assert (a == b).all()
    M, N = 500, 300
    x = to_gpu(rng_data((M, N), np.float32, seed=20))
    dy = to_gpu(rng_data((M, N), np.float32, seed=21))
    mean, rstd = cupy.zeros(M), cupy.ones(M)
    r1 = GpuEngine.rows_backward(x, dy, M, N, mean, rstd, None, True, True, True)
    r2 = GpuEngine.rows_backward(x, dy, M, N, mean, rstd, None, True, True, True)
    for u, v in zip(r1, r2):
        assert (to_cpu(u) == to_cpu(v)).all()


def test_rejects_bad_out():
    x = cupy.zeros((2, 40), dtype=np.float32)
    with pytest.raises(TypeError):
        GpuEngine.rows_forward(x, 2, 40, None, None, 1, 1, 1e-5, False, cupy.zeros((2, 40), dtype=np.float64))
    with pytest.raises(TypeError):
        GpuEngine.reduce(cupy.zeros(4, dtype=np.int32), (1, 1, 1, 4))


@pytest.mark.slow
def test_rows_forward_64bit_index():
    """More than 2**31 elements (float16): offsets past 32 bits."""
    try:
        free = cupy.cuda.Device().mem_info[0]
    except Exception:  # noqa: BLE001
        pytest.skip("device memory size unknown")
    M, N = 2 ** 16 + 1, 2 ** 15
    if free < 2.5 * M * N * 2:
        pytest.skip("not enough device memory")
    x = cupy.ones((M, N), dtype=np.float16)
    x[-1, :] = cupy.arange(N, dtype=np.float32).astype(np.float16) % 7
    y = cupy.empty_like(x)
    mean, rstd = GpuEngine.rows_forward(x, M, N, None, None, 1, 1, 1e-5, False, y)
    last = f64(cupy.asnumpy(x[-1]))
    assert abs(float(mean[-1]) - last.mean()) < 1e-4
    ry = (last - last.mean()) / np.sqrt(last.var() + 1e-5)
    assert np.abs(f64(cupy.asnumpy(y[-1])) - ry).max() < 1e-2
    assert float(cupy.abs(y[0].astype(cupy.float32)).max()) == 0.0
