"""rms_norm forward: reference, torch, layouts, out=, accuracy, edge cases, bad inputs;
rms_norm_backward (class TestBackward)."""
import numpy as np
import pytest
from _helpers import (
    DTYPE_IDS,
    DTYPES,
    OUT_MODES,
    ROW_NORM_CASE_IDS,
    ROW_NORM_CASES,
    BackwardTests,
    assert_close_ref,
    assert_stats_close,
    call_with_out,
    make_params,
    make_x,
    ref_rms_norm,
    shape_tuple,
    unusual_copies,
)

import normfast

@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", ["none", "weight"])
@pytest.mark.parametrize("eps", [None, 1e-5], ids=["eps_default", "eps1e-5"])
@pytest.mark.parametrize("case", ROW_NORM_CASES, ids=ROW_NORM_CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(rng, dtype, case, eps, affine, out_mode):
    shape, ns = case
    x = make_x(rng, shape, dtype)
    w, _ = make_params(rng, shape_tuple(ns), dtype, affine)
    ref, _ = ref_rms_norm(x, ns, w, eps)
    y = call_with_out(lambda a, **kw: normfast.rms_norm(a, ns, w, eps, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed"])
@pytest.mark.parametrize("ns", [(12,), (10, 12)], ids=["k1", "k2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_input(rng, dtype, ns, layout, out_mode):
    x = make_x(rng, (6, 10, 12), dtype, layout)
    assert not x.flags.c_contiguous
    w, _ = make_params(rng, ns, dtype, "weight")
    ref, _ = ref_rms_norm(x, ns, w)
    y = call_with_out(lambda a, **kw: normfast.rms_norm(a, ns, w, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("case", ROW_NORM_CASES, ids=ROW_NORM_CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_return_stats(rng, dtype, case):
    shape, ns = case
    x = make_x(rng, shape, dtype, loc=-3.0)
    res = normfast.rms_norm(x, ns, eps=1e-3, return_stats=True)
    assert len(res) == 2
    y, rstd = res
    ref, rrstd = ref_rms_norm(x, ns, eps=1e-3)
    lead = shape[:len(shape) - len(shape_tuple(ns))]
    assert rstd.shape == lead
    assert_close_ref(y, ref)
    assert_stats_close(rstd, rrstd, "rstd")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_default_eps_is_dtype_eps(rng, dtype):
    """eps=None is finfo(x.dtype).eps (torch's rule): visible on rows of tiny values."""
    x = make_x(rng, (4, 16), dtype, loc=0.0, scale=0.01)
    _, rstd = normfast.rms_norm(x, 16, return_stats=True)
    _, rrstd = ref_rms_norm(x, 16, eps=float(np.finfo(dtype).eps))
    assert_stats_close(rstd, rrstd)
    z = np.zeros((2, 16), dtype)
    _, rz = normfast.rms_norm(z, 16, return_stats=True)
    np.testing.assert_allclose(rz, 1 / np.sqrt(float(np.finfo(dtype).eps)), rtol=1e-14)


# ---------------------------------------------------------------- torch

@pytest.mark.parametrize("eps", [None, 1e-6], ids=["eps_default", "eps1e-6"])
@pytest.mark.parametrize("affine", ["none", "weight"])
@pytest.mark.parametrize("ns", [(8,), (5, 8)], ids=["k1", "k2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matches_torch(rng, dtype, ns, affine, eps):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = make_x(rng, (3, 4, 5, 8), dtype, loc=0.7)
    w, _ = make_params(rng, ns, dtype, affine)
    tw = None if w is None else torch.from_numpy(w)
    ty = F.rms_norm(torch.from_numpy(x), ns, tw, eps).numpy()
    y = normfast.rms_norm(x, ns, w, eps)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, ty, **tol)


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("loc,scale", [(1e4, 0.1), (0.0, 1.0), (1e-3, 1e-4)])
def test_accuracy_float32(rng, loc, scale):
    """Rows of 4096 float32 values: within 2e-6 of the float64 RMS reference on the same inputs."""
    x = (loc + rng.normal(0, scale, (16, 4096))).astype(np.float32)
    y, rstd = normfast.rms_norm(x, 4096, eps=1e-6, return_stats=True)
    ref, rrstd = ref_rms_norm(x, 4096, eps=1e-6)
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= 2e-6, f"max abs error {err:.3e} > 2e-6"
    assert_close_ref(y, ref)
    assert_stats_close(rstd, rrstd, rtol=1e-12)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_rows_exact(rng, dtype):
    x = make_x(rng, (5, 37), dtype)
    x[[0, 3]] = 0
    w, _ = make_params(rng, (37,), dtype, "weight")
    y = normfast.rms_norm(x, 37, w)
    assert np.all(y[[0, 3]] == 0)
    ref, _ = ref_rms_norm(x, 37, w)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("value", [0.3, -7.25, 1e4 + 0.1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_rows(dtype, value):
    x = np.full((3, 100), value, dtype=dtype)
    y = normfast.rms_norm(x, 100, eps=0.0)
    if dtype == np.float64:
        np.testing.assert_allclose(y, np.sign(value), rtol=0, atol=4e-16)
    else:
        assert np.all(y == np.sign(value)), y   # c / sqrt(c^2) rounds to exactly +-1
    ref, _ = ref_rms_norm(x, 100, eps=1e-6)
    assert_close_ref(normfast.rms_norm(x, 100, eps=1e-6), ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_row_isolated(rng, dtype):
    x = make_x(rng, (6, 50), dtype)
    x[3, 17] = np.nan
    w, _ = make_params(rng, (50,), dtype, "weight")
    y, rstd = normfast.rms_norm(x, 50, w, return_stats=True)
    assert np.isnan(y[3]).all() and np.isnan(rstd[3])
    keep = [0, 1, 2, 4, 5]
    ref, rrstd = ref_rms_norm(x[keep], 50, w)
    assert_close_ref(y[keep], ref)
    assert_stats_close(rstd[keep], rrstd)


@pytest.mark.parametrize("width", [1, 3, 31, 33, 1023, 1025, 8193, 65537])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_odd_widths(rng, dtype, width):
    x = make_x(rng, (2, width), dtype, loc=1.0)
    w, _ = make_params(rng, (width,), dtype, "weight")
    y, rstd = normfast.rms_norm(x, width, w, return_stats=True)
    ref, rrstd = ref_rms_norm(x, width, w)
    assert_close_ref(y, ref)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("shape,ns", [((1, 1, 5), (5,)), ((4, 1, 1), (1,)), ((1, 7), 7), ((1,), 1)])
def test_size_one_dims(rng, shape, ns):
    x = make_x(rng, shape, np.float32)
    y, rstd = normfast.rms_norm(x, ns, return_stats=True)
    ref, rrstd = ref_rms_norm(x, ns)
    assert_close_ref(y, ref)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,ns", [((0, 8), 8), ((0, 3, 4), (3, 4))])
def test_empty_batch(dtype, shape, ns):
    x = np.empty(shape, dtype=dtype)
    y, rstd = normfast.rms_norm(x, ns, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    assert rstd.shape == (0,)


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(12).reshape(3, 4), np.ones((3, 4), bool), np.ones((3, 4), np.complex64)],
                         ids=["int", "bool", "complex"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.rms_norm(bad, 4)


@pytest.mark.parametrize("ns", [5, (3, 5), (1, 2, 3, 4), ()])
def test_normalized_shape_mismatch(ns):
    with pytest.raises(ValueError, match="normalized_shape"):
        normfast.rms_norm(np.ones((2, 3, 4)), ns)


def test_bad_weight_eps_out():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="weight"):
        normfast.rms_norm(x, 4, weight=np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        normfast.rms_norm(x, 4, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        normfast.rms_norm(x, 4, eps=float("nan"))
    with pytest.raises(TypeError, match="out"):
        normfast.rms_norm(x, 4, out=np.empty(x.shape, np.float16))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.rms_norm(x, 4, out=ro)
    buf = np.ones((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="out"):
        normfast.rms_norm(buf[..., :4], 4, out=buf[..., 2:6])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype):
    x = make_x(rng, (6, 70), dtype)
    w, _ = make_params(rng, (70,), dtype, "weight")
    ref, rrstd = ref_rms_norm(x, 70, w)
    for xx in unusual_copies(x):
        y, rstd = normfast.rms_norm(xx, 70, w, return_stats=True)
        assert y.dtype == xx.dtype
        assert_close_ref(y, ref)
        assert_stats_close(rstd, rrstd)
        assert normfast.rms_norm(xx, 70, w, out=xx) is xx
        assert_close_ref(xx, ref)


# ---------------------------------------------------------------- backward

class TestBackward(BackwardTests):
    """rms_norm_backward: the backward tests the norms share (tests/_helpers.py) on rms_norm's cases."""
    KINDS = ("rms",)
