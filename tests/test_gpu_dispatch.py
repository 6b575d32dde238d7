"""Public API on CuPy arrays (the dispatcher's GPU route): CuPy in, CuPy out, values equal to
the CPU path and within stated bounds of float64 references, every operator forward and
backward.  Runs on the CUDA emulator (tests/cuda_emu) and, marked `gpu`, on a device.

Exactness (test_exact_*): float32 data with mean 1e4 and std 0.1, long rows and
reductions split over many blocks: every output within 2e-6 (absolute, outputs of unit
scale) of a float64 / long-double reference; statistics to float64 accuracy.  float64 data:
1e-9; float16 / bfloat16 (at mean 100 / 10, std 1): one unit in the last place of the
output type plus 2e-6.  Two runs give the same bits.
"""
import numpy as np
import pytest

import _reference as bref
import normfast as nf
from _helpers import (ref_batch_norm_eval, ref_batch_norm_train, ref_group_norm, ref_instance_norm,
                      ref_layer_norm, ref_moments, ref_normalize, ref_rms_norm)
from cuda_emu import BF16, backend, dtype_of



def f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def on_host(cp, r):
    """Results as float64 NumPy (device arrays must come back as CuPy arrays)."""
    if isinstance(r, tuple):
        return tuple(on_host(cp, v) for v in r)
    if r is None:
        return None
    assert isinstance(r, cp.ndarray), type(r)
    return f64(cp.asnumpy(r))


def ulp_of(ref, dt):
    """One unit in the last place of |ref| in dtype dt."""
    a = np.abs(f64(ref))
    if dt == BF16:
        return np.spacing(a.astype(BF16).astype(np.float32)).astype(np.float64) * 2.0 ** 16
    return np.spacing(a.astype(dt)).astype(np.float64)


def check(got, ref, bound, what):
    got, ref = f64(got), f64(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = np.abs(got - ref)
    bad = ~(err <= bound)
    assert not bad.any(), f"{what}: max err {err.max():.3e} (bound {np.max(bound):.3e})"
    return float(err.max()) if err.size else 0.0


# ------------------------------------------------------------------ round trips vs the CPU path

def _param_dtype(dt):
    """Weights / bias for x of dtype dt: the same dtype, except float32 for bfloat16 (see
    test_bfloat16_parameters)."""
    return np.float32 if dt == BF16 else dt


def test_bfloat16_parameters(cp):
    """bfloat16 weight / bias arrays are accepted and used (not only float32 parameters)."""
    dt = dtype_of(cp, "bfloat16")
    rng = np.random.default_rng(3)
    xh = rng.normal(size=(2, 8)).astype(dt)
    wh, bh = rng.normal(size=8).astype(dt), rng.normal(size=8).astype(dt)
    y = nf.layer_norm(cp.asarray(xh), 8, cp.asarray(wh), cp.asarray(bh))
    x64, w64, b64 = (a.astype(np.float64) for a in (xh, wh, bh))
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w64 + b64
    got = cp.asnumpy(y).astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=2 ** -7, atol=2 ** -7)

CALLS = [
    ("layer_norm", lambda m, x, w: m.layer_norm(x, x.shape[-1], w[: x.shape[-1]], w[: x.shape[-1]], return_stats=True)),
    ("rms_norm", lambda m, x, w: m.rms_norm(x, x.shape[-1], w[: x.shape[-1]], eps=1e-6, return_stats=True)),
    ("batch_norm", lambda m, x, w: m.batch_norm(x, None, None, w[:6], w[:6], True, return_stats=True)),
    ("batch_norm_nhwc", lambda m, x, w: m.batch_norm(x, None, None, None, None, True, channel_axis=-1,
                                                       return_stats=True)),
    ("group_norm", lambda m, x, w: m.group_norm(x, 3, w[:6], w[:6], return_stats=True)),
    ("group_norm_nhwc", lambda m, x, w: m.group_norm(x, 7, w[:7], w[:7], channel_axis=-1, return_stats=True)),
    ("instance_norm", lambda m, x, w: m.instance_norm(x, return_stats=True)),
    ("normalize", lambda m, x, w: m.normalize(x, axis=(0, 2), return_stats=True)),
    ("moments", lambda m, x, w: m.moments(x, axis=(0, 2))),
    ("add_layer_norm", lambda m, x, w: m.add_layer_norm(x, x, x.shape[-1])),
    ("add_rms_norm", lambda m, x, w: m.add_rms_norm(x, x, x.shape[-1], w[: x.shape[-1]], eps=1e-6)),
]


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float64", 1e-12)])
def test_cupy_round_trip(cp, name, call, dtype, tol):
    rng = np.random.default_rng(0)
    x = (3 + rng.standard_normal((4, 6, 5, 7))).astype(dtype)
    w = rng.standard_normal(16).astype(dtype)
    ref = call(nf, x, w)
    got = call(nf, cp.asarray(x), cp.asarray(w))
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got):
        check(on_host(cp, g), r, tol * (1 + np.abs(r).max()), name)


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("dtname", ["float16", "bfloat16"])
def test_cupy_half_types(cp, name, call, dtname):
    """16-bit inputs run natively on the GPU (float32 arithmetic, float64 statistics): within
    one ulp of the type (plus 2e-6) of the float64 computation on the same rounded values."""
    dt = dtype_of(cp, dtname)
    rng = np.random.default_rng(1)
    x = (3 + rng.standard_normal((4, 6, 5, 7))).astype(dt)
    w = rng.standard_normal(16).astype(dt).astype(_param_dtype(dt))
    ref = call(nf, x.astype(np.float64), w.astype(np.float64))
    got = call(nf, cp.asarray(x), cp.asarray(w))
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got):
        odt = g.dtype                   # x's dtype, float32 (moments) or float64 (statistics)
        check(on_host(cp, g), r, ulp_of(r, odt) + 2e-6 * (1 + np.abs(r)), name)


BACKWARDS = [
    ("layer_norm", lambda m, x, dy, w: m.layer_norm_backward(
        dy, x, *m.layer_norm(x, 7, w[:7], w[:7], return_stats=True)[1:], 7, w[:7])),
    ("rms_norm", lambda m, x, dy, w: m.rms_norm_backward(
        dy, x, m.rms_norm(x, (5, 7), w[:35].reshape(5, 7), eps=1e-6, return_stats=True)[1], (5, 7),
        w[:35].reshape(5, 7))),
    ("batch_norm", lambda m, x, dy, w: m.batch_norm_backward(
        dy, x, *m.batch_norm(x, None, None, w[:6], None, True, return_stats=True)[1:], w[:6])),
    ("batch_norm_eval", lambda m, x, dy, w: m.batch_norm_backward(
        dy, x, m.moments(x, (0, 2, 3))[0], 1 / (1 + 0 * w[:6]), w[:6], False)),
    ("batch_norm_nhwc", lambda m, x, dy, w: m.batch_norm_backward(
        dy, x, *m.batch_norm(x, None, None, w[:7], None, True, channel_axis=-1, return_stats=True)[1:], w[:7],
        channel_axis=-1)),
    ("group_norm", lambda m, x, dy, w: m.group_norm_backward(
        dy, x, *m.group_norm(x, 2, w[:6], None, return_stats=True)[1:], 2, w[:6])),
    ("group_norm_nhwc", lambda m, x, dy, w: m.group_norm_backward(
        dy, x, *m.group_norm(x, 7, w[:7], None, channel_axis=-1, return_stats=True)[1:], 7, w[:7], channel_axis=-1)),
    ("instance_norm", lambda m, x, dy, w: m.instance_norm_backward(
        dy, x, *m.instance_norm(x, weight=w[:6], return_stats=True)[1:], w[:6])),
    ("add_layer_norm", lambda m, x, dy, w: m.add_layer_norm_backward(
        dy, dy, *(lambda r: (r[1], r[2], r[3]))(m.add_layer_norm(x, dy, 7, w[:7], return_stats=True)), 7, w[:7])),
    ("add_rms_norm", lambda m, x, dy, w: m.add_rms_norm_backward(
        dy, None, *(lambda r: (r[1], r[2]))(m.add_rms_norm(x, dy, 7, w[:7], eps=1e-6, return_stats=True)), 7, w[:7])),
]


@pytest.mark.parametrize("name,call", BACKWARDS, ids=[c[0] for c in BACKWARDS])
@pytest.mark.parametrize("dtname", ["float16", "bfloat16", "float32", "float64"])
def test_cupy_backward(cp, name, call, dtname):
    dt = dtype_of(cp, dtname)
    rng = np.random.default_rng(2)
    x = (3 + rng.standard_normal((4, 6, 5, 7))).astype(dt)
    dy = rng.standard_normal((4, 6, 5, 7)).astype(dt)
    w = (1 + 0.5 * rng.standard_normal(40)).astype(dt).astype(_param_dtype(dt))
    up = dt if dt in (np.float32, np.float64) else np.float64
    xr = x.astype(up)
    if name.startswith("add_") and up != dt:
        # the GPU rounds h = x + residual to x's dtype: give the float64 reference that h
        xr = (f64(x) + f64(dy)).astype(dt).astype(np.float64) - f64(dy)
    ref = call(nf, xr, dy.astype(up), w.astype(up))
    got = call(nf, cp.asarray(x), cp.asarray(dy), cp.asarray(w))
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        if r is None:
            assert g is None
            continue
        g = on_host(cp, g)
        if dt == np.float64:
            bound = 1e-12 * (1 + np.abs(r).max())
        elif dt == np.float32:
            bound = 2e-6 * (1 + np.abs(r).max())
        else:
            bound = ulp_of(r, dt) + 2e-6 * (1 + np.abs(r).max())
        check(g, r, bound, name)


OUT_CALLS = {
    "layer_norm": lambda x, dy, w, out: nf.layer_norm_backward(
        dy, x, *nf.layer_norm(x, 7, w[:7], w[:7], return_stats=True)[1:], 7, w[:7], out=out),
    "rms_norm": lambda x, dy, w, out: nf.rms_norm_backward(
        dy, x, nf.rms_norm(x, 7, w[:7], return_stats=True)[1], 7, w[:7], out=out),
    "batch_norm_nhwc": lambda x, dy, w, out: nf.batch_norm_backward(
        dy, x, *nf.batch_norm(x, None, None, w[:7], None, True, channel_axis=-1, return_stats=True)[1:],
        w[:7], channel_axis=-1, out=out),
    "group_norm": lambda x, dy, w, out: nf.group_norm_backward(
        dy, x, *nf.group_norm(x, 2, w[:6], None, return_stats=True)[1:], 2, w[:6], out=out),
    "add_layer_norm": lambda x, dy, w, out: nf.add_layer_norm_backward(
        dy, dy * 0.5, *(lambda r: (r[1], r[2], r[3]))(nf.add_layer_norm(x, dy, 7, w[:7], return_stats=True)),
        7, w[:7], out=out),
}


@pytest.mark.parametrize("name", list(OUT_CALLS))
def test_out_on_the_gpu_route(monkeypatch, name):
    """CuPy arrays (CUDA emulator): out= separate or over grad_out gives the allocated result and
    leaves the parameter gradients unchanged (the GPU reads x and grad_out again for dw/db, so
    in place goes through a separate buffer there)."""
    cp = backend("emu", monkeypatch)
    call = OUT_CALLS[name]
    rng = np.random.default_rng(56)
    x = cp.asarray((3 + rng.standard_normal((4, 6, 5, 7))).astype(np.float32))
    w = cp.asarray((1 + 0.5 * rng.standard_normal(40)).astype(np.float32))
    dy0 = (rng.standard_normal((4, 6, 5, 7))).astype(np.float32)
    full = call(x, cp.asarray(dy0), w, None)
    out = cp.empty_like(x)
    got = call(x, cp.asarray(dy0), w, out)
    assert got[0] is out
    dy = cp.asarray(dy0)
    inpl = call(x, dy, w, dy)
    assert inpl[0] is dy
    for res in (got, inpl):
        for g, f in zip(res, full):
            if f is not None:
                np.testing.assert_array_equal(cp.asnumpy(g) if hasattr(g, "device") else g,
                                              cp.asnumpy(f) if hasattr(f, "device") else f)


def test_cupy_running_stats_and_moments(cp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6, 9)).astype(np.float32)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rmd, rvd = cp.asarray(rm), cp.asarray(rv)
    y, m, r = nf.batch_norm(x, rm, rv, training=True, return_stats=True)
    yd, md, rd = nf.batch_norm(cp.asarray(x), rmd, rvd, training=True, return_stats=True)
    assert isinstance(yd, cp.ndarray) and isinstance(md, cp.ndarray)
    assert np.allclose(cp.asnumpy(rmd), rm, atol=1e-7) and np.allclose(cp.asnumpy(rvd), rv, atol=1e-7)
    s = nf.Moments.from_array(cp.asarray(x), axis=(0, 2))
    s0 = nf.Moments.from_array(x, axis=(0, 2))
    assert np.allclose(s.mean, s0.mean, rtol=1e-14) and np.allclose(s.m2, s0.m2, rtol=1e-12)


# ------------------------------------------------------------------ exactness

LOC_SCALE = {"float32": (1e4, 0.1), "float64": (1e4, 0.1), "float16": (100.0, 1.0), "bfloat16": (10.0, 1.0)}


def _bound(ref, dt):
    """Error bound of an output of dtype dt with unit-scale values."""
    if dt == np.float32:
        return 2e-6
    if dt == np.float64:
        return 1e-9
    return ulp_of(ref, dt) + 2e-6


def _stat_bound(ref, dt):
    return 1e-9 * np.abs(ref) + 1e-12          # float64 statistics, whatever the input type


def _data(dt, shape, seed):
    loc, scale = LOC_SCALE[dt.name]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + loc).astype(dt)


def _params(dt, n, seed):
    rng = np.random.default_rng(seed)
    pdt = _param_dtype(dt)
    return ((1 + 0.1 * rng.standard_normal(n)).astype(dt).astype(pdt),
            (0.1 * rng.standard_normal(n)).astype(dt).astype(pdt))


EXACT_FWD = [
    # name, shape, call(m, x, w, b) -> (y, mean, rstd) | (mean, var), reference(x64, w64, b64)
    ("layer_norm_long_rows", (3, 1 << 17),
     lambda m, x, w, b: m.layer_norm(x, x.shape[-1], w, b, return_stats=True),
     lambda x, w, b: ref_layer_norm(x, x.shape[-1], w, b)),
    ("layer_norm_many_rows", (512, 768),
     lambda m, x, w, b: m.layer_norm(x, x.shape[-1], w, b, return_stats=True),
     lambda x, w, b: ref_layer_norm(x, x.shape[-1], w, b)),
    ("rms_norm", (64, 4096),
     lambda m, x, w, b: m.rms_norm(x, x.shape[-1], w, eps=1e-6, return_stats=True),
     lambda x, w, b: (lambda r: (r[0], r[1]))(ref_rms_norm(x, x.shape[-1], w, eps=1e-6))),
    ("batch_norm_nchw_many_blocks", (32, 4, 64, 64),
     lambda m, x, w, b: m.batch_norm(x, None, None, w[:4], b[:4], True, return_stats=True),
     lambda x, w, b: ref_batch_norm_train(x, w[:4], b[:4])[:3]),
    ("batch_norm_nhwc_many_blocks", (64, 32, 32, 8),
     lambda m, x, w, b: m.batch_norm(x, None, None, w[:8], b[:8], True, channel_axis=-1, return_stats=True),
     lambda x, w, b: ref_batch_norm_train(x, w[:8], b[:8], channel_axis=-1)[:3]),
    ("batch_norm_eval", (8, 4, 32, 32), None, None),
    ("group_norm_nchw", (2, 8, 96, 96),
     lambda m, x, w, b: m.group_norm(x, 4, w[:8], b[:8], return_stats=True),
     lambda x, w, b: ref_group_norm(x, 4, w[:8], b[:8])),
    ("group_norm_nhwc", (2, 64, 64, 16),
     lambda m, x, w, b: m.group_norm(x, 4, w[:16], b[:16], channel_axis=-1, return_stats=True),
     lambda x, w, b: ref_group_norm(x, 4, w[:16], b[:16], channel_axis=-1)),
    ("instance_norm", (2, 3, 128, 160),
     lambda m, x, w, b: m.instance_norm(x, weight=w[:3], bias=b[:3], return_stats=True),
     lambda x, w, b: ref_instance_norm(x, w[:3], b[:3])[:3]),
    ("normalize_0_2", (256, 3, 160),
     lambda m, x, w, b: m.normalize(x, axis=(0, 2), return_stats=True),
     lambda x, w, b: ref_normalize(x, (0, 2))),
    ("moments", (64, 5, 1000),
     lambda m, x, w, b: m.moments(x, axis=(0, 2)),
     lambda x, w, b: ref_moments(x, (0, 2))[:2]),
]


@pytest.mark.parametrize("name,shape,call,ref", EXACT_FWD, ids=[c[0] for c in EXACT_FWD])
@pytest.mark.parametrize("dtname", ["float32", "float64", "float16", "bfloat16"])
def test_exact_forward(cp, name, shape, call, ref, dtname):
    dt = dtype_of(cp, dtname)
    x = _data(dt, shape, seed=len(name))
    w, b = _params(dt, max(16, shape[-1]), seed=3)
    x64, w64, b64 = f64(x), f64(w), f64(b)
    if name == "batch_norm_eval":        # running statistics near the data's (float64 buffers)
        rm = x64.mean(axis=(0, 2, 3)) + 0.01
        rv = x64.var(axis=(0, 2, 3)) * 1.1
        expect = (ref_batch_norm_eval(x, rm, rv, w64[:4], b64[:4]),)
        got, again = (nf.batch_norm(cp.asarray(x), cp.asarray(rm), cp.asarray(rv), cp.asarray(w[:4]),
                                    cp.asarray(b[:4]), False) for _ in range(2))
    else:
        expect = ref(x, w64, b64)
        got = call(nf, cp.asarray(x), cp.asarray(w), cp.asarray(b))
        again = call(nf, cp.asarray(x), cp.asarray(w), cp.asarray(b))
    got = got if isinstance(got, tuple) else (got,)
    again = again if isinstance(again, tuple) else (again,)
    for i, (g, g2, r) in enumerate(zip(got, again, expect)):
        gh, g2h = on_host(cp, g), on_host(cp, g2)
        assert np.array_equal(gh, g2h, equal_nan=True), f"{name}: output {i} differs between two runs"
        if name == "moments":           # float32 results for 16/32-bit input: one rounding
            odt = np.float64 if dt == np.float64 else np.float32
            check(gh, r, ulp_of(r, odt) + 1e-12 * np.abs(r), f"{name} output {i}")
        elif i == 0:
            check(gh, r, _bound(r, dt), f"{name} y")
        else:
            check(gh, r, _stat_bound(r, dt), f"{name} stats {i}")


EXACT_BWD = [
    # name, shape, call(m, dy, x, w, stats) -> grads, kind for _reference.norm_backward, kwargs
    ("layer_norm_long_rows", (3, 1 << 17), "layer", dict(normalized_shape=1 << 17)),
    ("layer_norm_many_rows", (512, 768), "layer", dict(normalized_shape=768)),
    ("rms_norm", (64, 4096), "rms", dict(normalized_shape=4096)),
    ("batch_norm_nchw_many_blocks", (32, 4, 64, 64), "batch", dict()),
    ("batch_norm_nhwc_many_blocks", (64, 32, 32, 8), "batch", dict(channel_axis=-1)),
    ("batch_norm_eval", (8, 4, 32, 32), "batch_eval", dict()),
    ("group_norm_nchw", (2, 8, 96, 96), "group", dict(groups=4)),
    ("group_norm_nhwc", (2, 64, 64, 16), "group", dict(groups=4, channel_axis=-1)),
    ("instance_norm", (2, 3, 128, 160), "instance", dict()),
    ("add_layer_norm", (64, 4096), "add_layer", dict(normalized_shape=4096)),
    ("add_rms_norm", (64, 4096), "add_rms", dict(normalized_shape=4096)),
]


def _bwd_call(m, kind, dy, x, w, mean, rstd, kw):
    ca = kw.get("channel_axis", 1)
    if kind == "layer":
        return m.layer_norm_backward(dy, x, mean, rstd, kw["normalized_shape"], w)
    if kind == "rms":
        return m.rms_norm_backward(dy, x, rstd, kw["normalized_shape"], w)
    if kind == "add_layer":
        return m.add_layer_norm_backward(dy, dy, x, mean, rstd, kw["normalized_shape"], w)
    if kind == "add_rms":
        return m.add_rms_norm_backward(dy, dy, x, rstd, kw["normalized_shape"], w)
    if kind in ("batch", "batch_eval"):
        return m.batch_norm_backward(dy, x, mean, rstd, w, kind == "batch", channel_axis=ca)
    if kind == "group":
        return m.group_norm_backward(dy, x, mean, rstd, kw["groups"], w, channel_axis=ca)
    return m.instance_norm_backward(dy, x, mean, rstd, w, channel_axis=ca)


@pytest.mark.parametrize("name,shape,kind,kw", EXACT_BWD, ids=[c[0] for c in EXACT_BWD])
@pytest.mark.parametrize("dtname", ["float32", "float64", "float16", "bfloat16"])
def test_exact_backward(cp, name, shape, kind, kw, dtname):
    """Gradients from the float64 statistics of the data; grad_out with std 0.1 so that
    grad_x is of unit scale (rstd is 10 for float32 data)."""
    dt = dtype_of(cp, dtname)
    x = _data(dt, shape, seed=len(name) + 1)
    dy = (np.random.default_rng(7).standard_normal(shape) * LOC_SCALE[dt.name][1]).astype(dt)
    rkind = {"add_layer": "layer", "add_rms": "rms"}.get(kind, kind)
    ca = kw.get("channel_axis", 1) % len(shape)
    C = shape[-1] if rkind in ("layer", "rms") else shape[ca]
    w, _ = _params(dt, C, seed=4)
    if rkind in ("layer", "rms"):
        w = w.reshape(shape[-1:])
    x64, dy64, w64 = f64(x), f64(dy), f64(w)
    rkw = {k: v for k, v in kw.items() if k != "normalized_shape"}
    if rkind in ("layer", "rms"):
        rkw["normalized_shape"] = kw["normalized_shape"]
    eps = 1e-5
    rows, _ = bref.to_rows(x64, rkind, **{k: v for k, v in rkw.items() if k in ("channel_axis", "groups")},
                           k=1)
    mean, rstd = bref.row_stats(rows, eps, rms=rkind == "rms")
    if kind == "batch_eval":
        rstd = rstd * 0.9                     # running statistics: constants, not the batch's
        mean = mean + 0.01
    stat_shape = {"layer": shape[:-1], "rms": shape[:-1], "batch": (C,), "batch_eval": (C,),
                  "group": (shape[0], kw.get("groups", 1)), "instance": (shape[0], C)}[rkind]
    mean_s, rstd_s = mean.reshape(stat_shape), rstd.reshape(stat_shape)
    rdx, rdw, rdb = bref.norm_backward(rkind, dy64, x64, w64, eps=eps, mean=mean, rstd=rstd, **rkw)
    if kind.startswith("add"):
        rdx = rdx + dy64                      # grad_h added to the input gradient
    if kind == "add_rms":
        rdb = None
    got = _bwd_call(nf, kind, cp.asarray(dy), cp.asarray(x), cp.asarray(w), mean_s, rstd_s, kw)
    again = _bwd_call(nf, kind, cp.asarray(dy), cp.asarray(x), cp.asarray(w), mean_s, rstd_s, kw)
    if kind in ("rms", "add_rms"):
        rdb = None
    for i, (g, g2, r) in enumerate(zip(got, again, (rdx, rdw, rdb))):
        if r is None:
            assert g is None
            continue
        gh, g2h = on_host(cp, g), on_host(cp, g2)
        assert np.array_equal(gh, g2h), f"{name}: gradient {i} differs between two runs"
        if i == 0:
            check(gh, r, _bound(r, dt), f"{name} dx")
        else:                                 # dw / db: sums over many rows, in x's dtype
            scale = max(1.0, float(np.abs(r).max()))
            bound = (_bound(r, dt) * scale if dt != np.float32 else 2e-6 * scale)
            check(gh, r, bound + ulp_of(r, dt), f"{name} d{'wb'[i - 1]}")


@pytest.mark.parametrize("op", ["layer_norm", "batch_norm"])
def test_exact_outlying_shift(cp, op):
    """The kernels shift by a row's / unit's first value: an outlier there (6 standard
    deviations off) costs no accuracy (float64 sums: statistics to ~1e-15; the former float32
    Welford accumulation was off by 3e-8 relative here)."""
    rng = np.random.default_rng(11)
    if op == "layer_norm":
        x = (rng.standard_normal((2, 1 << 18)) * 0.1 + 1e4).astype(np.float32)
        x[:, 0] = 1e4 + 0.6
        got = nf.layer_norm(cp.asarray(x), x.shape[-1], return_stats=True)
        ref = ref_layer_norm(x, x.shape[-1])
    else:
        x = (rng.standard_normal((64, 2, 4096)) * 0.1 + 1e4).astype(np.float32)
        x[::7, :, ::1000] = 1e4 - 0.6             # the first value of many units
        got = nf.batch_norm(cp.asarray(x), None, None, None, None, True, return_stats=True)
        ref = ref_batch_norm_train(x)[:3]
    check(on_host(cp, got[0]), ref[0], 2e-6, f"{op} y")
    for g, r in zip(got[1:], ref[1:]):
        check(on_host(cp, g), r, _stat_bound(r, np.float32), f"{op} stats")


def test_exact_deterministic_schedule_order(cp):
    """On the emulator, the threads of every block in the opposite order give the same bits
    (no result depends on the order of unsynchronized threads)."""
    if not hasattr(cp, "emulator"):
        pytest.skip("emulator only")
    x = _data(np.dtype(np.float32), (16, 4, 48, 48), seed=9)
    w, b = _params(np.dtype(np.float32), 8, seed=3)
    runs, order = [], cp.emulator["reverse"]
    for reverse in (False, True):
        cp.emulator["reverse"] = reverse
        try:
            out = []
            xd = cp.asarray(x)
            out += nf.batch_norm(xd, None, None, cp.asarray(w[:4]), cp.asarray(b[:4]), True, return_stats=True)
            out += nf.group_norm(xd, 2, return_stats=True)
            out += nf.layer_norm(xd, (48, 48), return_stats=True)
            out += nf.layer_norm_backward(xd, xd, *out[-2:], (48, 48))[:1]
            out += nf.batch_norm_backward(xd, xd, *out[1:3], cp.asarray(w[:4]))
            runs.append([on_host(cp, o) for o in out])
        finally:
            cp.emulator["reverse"] = order
    for a, c in zip(*runs):
        assert np.array_equal(a, c, equal_nan=True)


def test_torch_cuda_tensor_zero_copy(cp):
    if hasattr(cp, "emulator"):
        pytest.skip("torch CUDA tensors need a device")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    t = torch.randn(16, 64, device="cuda")
    y = nf.layer_norm(t, 64)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    assert torch.allclose(y, torch.nn.functional.layer_norm(t, (64,)), atol=1e-5)
