"""layer_norm forward: reference, torch, layouts, out=, accuracy, edge cases, bad inputs;
layer_norm_backward (class TestBackward)."""
import numpy as np
import pytest
from _helpers import (
    AFFINES,
    DTYPE_IDS,
    DTYPES,
    OUT_MODES,
    ROW_NORM_CASE_IDS,
    ROW_NORM_CASES,
    BackwardCase,
    BackwardTests,
    assert_close_ref,
    assert_offset_accuracy,
    assert_out_alignments,
    assert_stats_close,
    call_with_out,
    make_params,
    make_x,
    ref_layer_norm,
    shape_tuple,
    unusual_copies,
)

import normfast

@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("case", ROW_NORM_CASES, ids=ROW_NORM_CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(rng, dtype, case, affine, out_mode):
    shape, ns = case
    x = make_x(rng, shape, dtype)
    w, b = make_params(rng, shape_tuple(ns), dtype, affine)
    ref, _, _ = ref_layer_norm(x, ns, w, b, eps=1e-5)
    y = call_with_out(lambda a, **kw: normfast.layer_norm(a, ns, w, b, 1e-5, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate", "separate_strided"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed"])
@pytest.mark.parametrize("ns", [(12,), (10, 12)], ids=["k1", "k2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_input(rng, dtype, ns, layout, out_mode):
    x = make_x(rng, (6, 10, 12), dtype, layout)
    assert not x.flags.c_contiguous
    w, b = make_params(rng, ns, dtype, "both")
    ref, _, _ = ref_layer_norm(x, ns, w, b)
    y = call_with_out(lambda a, **kw: normfast.layer_norm(a, ns, w, b, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("case", ROW_NORM_CASES, ids=ROW_NORM_CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_return_stats(rng, dtype, case):
    shape, ns = case
    x = make_x(rng, shape, dtype, loc=-3.0)
    y, mean, rstd = normfast.layer_norm(x, ns, eps=1e-3, return_stats=True)
    ref, rmean, rrstd = ref_layer_norm(x, ns, eps=1e-3)
    lead = shape[:len(shape) - len(shape_tuple(ns))]
    assert mean.shape == lead and rstd.shape == lead
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean, "mean")
    assert_stats_close(rstd, rrstd, "rstd")


def test_normalized_shape_forms(rng):
    x = make_x(rng, (4, 6), np.float64)
    ref = normfast.layer_norm(x, (6,))
    for ns in (6, [6], np.int64(6), (np.int32(6),), np.array([6])):
        np.testing.assert_array_equal(normfast.layer_norm(x, ns), ref)


def test_default_eps_is_1e5(rng):
    x = make_x(rng, (4, 9), np.float64, scale=0.01)
    np.testing.assert_array_equal(normfast.layer_norm(x, 9), normfast.layer_norm(x, 9, eps=1e-5))
    assert_close_ref(normfast.layer_norm(x, 9), ref_layer_norm(x, 9, eps=1e-5)[0])
    assert_close_ref(normfast.layer_norm(x, 9, eps=0.5), ref_layer_norm(x, 9, eps=0.5)[0])
    assert_close_ref(normfast.layer_norm(x, 9, eps=0), ref_layer_norm(x, 9, eps=0)[0])


# ---------------------------------------------------------------- torch

@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("ns", [(8,), (5, 8)], ids=["k1", "k2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matches_torch(rng, dtype, ns, affine):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = make_x(rng, (3, 4, 5, 8), dtype, loc=2.0)
    w, b = make_params(rng, ns, dtype, affine)
    tw = None if w is None else torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    ty = F.layer_norm(torch.from_numpy(x), ns, tw, tb, 1e-5).numpy()
    y, mean, rstd = normfast.layer_norm(x, ns, w, b, 1e-5, return_stats=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y, ty, **tol)
    _, tmean, trstd = torch.native_layer_norm(torch.from_numpy(x), list(ns), tw, tb, 1e-5)
    lead = x.shape[:x.ndim - len(ns)]
    np.testing.assert_allclose(mean, tmean.double().numpy().reshape(lead), **tol)
    np.testing.assert_allclose(rstd, trstd.double().numpy().reshape(lead), **tol)


# ---------------------------------------------------------------- accuracy

def test_accuracy_large_offset_float32(rng):
    """Rows of 4096 float32 values, mean 1e4, std 0.1: the normalized output must be
    within 2e-6 of the float64 reference computed on the same float32 inputs."""
    x = (1e4 + rng.normal(0, 0.1, (16, 4096))).astype(np.float32)
    y, mean, rstd = normfast.layer_norm(x, 4096, return_stats=True)
    ref, rmean, rrstd = ref_layer_norm(x, 4096)
    assert_offset_accuracy(y, ref, mean, rmean, rstd, rrstd)


def test_accuracy_large_offset_float64(rng):
    """float64 rows at 1e8 with std 1e-3.  The float64 mean itself can only be within
    0.5 ulp(1e8) = 7.5e-9 of the exact mean, which is 7.5e-6 in normalized units: that
    (and not a cancelling E[x^2] - E[x]^2, which would lose every digit) bounds the error."""
    x = 1e8 + rng.normal(0, 1e-3, (8, 4096))
    y, mean, rstd = normfast.layer_norm(x, 4096, eps=0.0, return_stats=True)
    ref, rmean, rrstd = ref_layer_norm(x, 4096, eps=0.0)
    assert np.all(np.abs(mean - rmean) <= 0.5 * np.spacing(1e8))
    np.testing.assert_allclose(rstd, rrstd, rtol=1e-9)
    bound = (0.5 * np.spacing(1e8) * rrstd.max()) * 1.01 + 1e-12
    err = np.abs(y - ref).max()
    assert err <= bound, (err, bound)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("value", [0.0, 0.3, -7.25, 1e4 + 0.1, 3e4])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_rows_exact(rng, dtype, value):
    x = np.full((5, 37), value, dtype=dtype)
    x[2] = rng.normal(0, 1, 37).astype(dtype)        # one non-constant row
    y, mean, rstd = normfast.layer_norm(x, 37, return_stats=True)
    const = [0, 1, 3, 4]
    assert np.all(y[const] == 0), y[const]
    assert np.all(mean[const] == np.float64(dtype(value)))
    assert np.all(rstd[const] == 1 / np.sqrt(1e-5))
    w, b = make_params(rng, (37,), dtype, "both")
    y = normfast.layer_norm(x, 37, w, b)
    np.testing.assert_array_equal(y[const], np.broadcast_to(b, (4, 37)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_row_isolated(rng, dtype):
    x = make_x(rng, (6, 50), dtype)
    x[3, 17] = np.nan
    w, b = make_params(rng, (50,), dtype, "both")
    y, mean, rstd = normfast.layer_norm(x, 50, w, b, return_stats=True)
    assert np.isnan(y[3]).all()
    assert np.isnan(mean[3]) and np.isnan(rstd[3])
    keep = [0, 1, 2, 4, 5]
    ref, rmean, rrstd = ref_layer_norm(x[keep], 50, w, b)
    assert_close_ref(y[keep], ref)
    assert_stats_close(mean[keep], rmean)


@pytest.mark.parametrize("width", [1, 2, 3, 31, 32, 33, 1023, 1025, 8191, 8193, 65537])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_odd_widths(rng, dtype, width):
    x = make_x(rng, (2, width), dtype, loc=5.0)
    w, b = make_params(rng, (width,), dtype, "both")
    y, mean, rstd = normfast.layer_norm(x, width, w, b, return_stats=True)
    ref, rmean, rrstd = ref_layer_norm(x, width, w, b)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)
    if width == 1:
        np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))


@pytest.mark.parametrize("shape,ns", [((1, 1, 5), (5,)), ((4, 1, 1), (1,)), ((4, 1, 1), (1, 1)),
                                      ((1, 7), 7), ((1,), 1), ((3, 1, 6), (1, 6))])
def test_size_one_dims(rng, shape, ns):
    x = make_x(rng, shape, np.float32)
    y, mean, rstd = normfast.layer_norm(x, ns, return_stats=True)
    ref, rmean, rrstd = ref_layer_norm(x, ns)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,ns", [((0, 8), 8), ((0, 3, 4), (3, 4)), ((2, 0, 5), 5)])
def test_empty_batch(dtype, shape, ns):
    x = np.empty(shape, dtype=dtype)
    y, mean, rstd = normfast.layer_norm(x, ns, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    lead = shape[:len(shape) - len(shape_tuple(ns))]
    assert mean.shape == lead and rstd.shape == lead
    out = np.empty_like(x)
    assert normfast.layer_norm(x, ns, out=out) is out


def test_variance_never_negative(rng):
    # Nearly-constant rows far from zero: a cancelling E[x^2] - E[x]^2 goes negative.
    base = np.float32(1e4)
    x = np.full((64, 257), base, dtype=np.float32)
    x[:, ::7] = np.nextafter(base, np.float32(2e4))
    _, _, rstd = normfast.layer_norm(x, 257, eps=0.0, return_stats=True)
    _, _, rrstd = ref_layer_norm(x, 257, eps=0.0)
    assert np.isfinite(rstd).all()
    assert_stats_close(rstd, rrstd, rtol=1e-9)


def test_out_same_view_is_inplace(rng):
    x = make_x(rng, (4, 16), np.float32)
    x0 = x.copy()
    y = normfast.layer_norm(x, 16, out=x[...])
    np.testing.assert_array_equal(x, normfast.layer_norm(x0, 16))
    assert np.shares_memory(y, x)


def test_float16_output_dtype(rng):
    x = make_x(rng, (3, 64), np.float16)
    y, mean, rstd = normfast.layer_norm(x, 64, return_stats=True)
    assert y.dtype == np.float16 and mean.dtype == np.float64 and rstd.dtype == np.float64


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(12).reshape(3, 4), np.ones((3, 4), bool),
                                 np.ones((3, 4), np.complex128), np.ones((3, 4), np.int8)],
                         ids=["int", "bool", "complex", "int8"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.layer_norm(bad, 4)


@pytest.mark.parametrize("ns", [5, (3, 5), (1, 2, 3, 4), (), (4, 3), -4, 0])
def test_normalized_shape_mismatch(ns):
    with pytest.raises(ValueError, match="normalized_shape"):
        normfast.layer_norm(np.ones((2, 3, 4)), ns)


@pytest.mark.parametrize("ns", [4.0, (4.5,), "4", None, (None,)])
def test_normalized_shape_not_ints(ns):
    with pytest.raises(TypeError, match="normalized_shape"):
        normfast.layer_norm(np.ones((2, 3, 4)), ns)


def test_bad_weight_bias():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="weight"):
        normfast.layer_norm(x, 4, weight=np.ones(3))
    with pytest.raises(ValueError, match="weight"):
        normfast.layer_norm(x, (3, 4), weight=np.ones(4))
    with pytest.raises(ValueError, match="bias"):
        normfast.layer_norm(x, 4, bias=np.ones((1, 4)))
    with pytest.raises(TypeError, match="weight"):
        normfast.layer_norm(x, 4, weight=np.ones(4, dtype=np.int64))


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), -0.5])
def test_bad_eps_value(eps):
    with pytest.raises(ValueError, match="eps"):
        normfast.layer_norm(np.ones((2, 4)), 4, eps=eps)


@pytest.mark.parametrize("eps", ["1e-5", None, True])
def test_bad_eps_type(eps):
    with pytest.raises(TypeError, match="eps"):
        normfast.layer_norm(np.ones((2, 4)), 4, eps=eps)


def test_bad_out():
    x = np.ones((4, 4), np.float32)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.layer_norm(x, 4, out=ro)
    with pytest.raises(TypeError, match="out"):
        normfast.layer_norm(x, 4, out=np.empty((4, 4), np.float64))
    with pytest.raises(ValueError, match="out"):
        normfast.layer_norm(x, 4, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out"):
        normfast.layer_norm(x, 4, out=[[0.0] * 4] * 4)
    x_ro = np.ones((4, 4), np.float32)
    x_ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.layer_norm(x_ro, 4, out=x_ro)


def test_out_partial_overlap_raises(rng):
    buf = make_x(rng, (4, 12), np.float32)
    keep = buf.copy()
    with pytest.raises(ValueError, match="out"):
        normfast.layer_norm(buf[:, :8], 8, out=buf[:, 4:])
    with pytest.raises(ValueError, match="out"):
        sq = buf[:, :4]
        normfast.layer_norm(sq, 4, out=sq.T)
    np.testing.assert_array_equal(buf, keep)


# ---------------------------------------------------------------- unusual memory

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype):
    x = make_x(rng, (6, 70), dtype)
    w, b = make_params(rng, (70,), dtype, "both")
    ref = ref_layer_norm(x, 70, w, b)[0]
    for xx in unusual_copies(x):
        y = normfast.layer_norm(xx, 70, w, b)
        assert y.dtype == xx.dtype
        assert_close_ref(y, ref)
        out = np.empty_like(xx)
        assert normfast.layer_norm(xx, 70, w, b, out=out) is out
        assert_close_ref(out, ref)
        assert normfast.layer_norm(xx, 70, w, b, out=xx) is xx
        assert_close_ref(xx, ref)


def test_interleaved_out_shares_buffer_without_overlap(rng):
    """x = buf[:, ::2], out = buf[:, 1::2]: same buffer, no element in common: allowed."""
    buf = make_x(rng, (5, 64), np.float32)
    x = buf[:, ::2]
    x0 = x.copy()
    y = normfast.layer_norm(x, 32, out=buf[:, 1::2])
    assert np.shares_memory(y, buf)
    np.testing.assert_array_equal(x, x0)
    assert_close_ref(buf[:, 1::2], ref_layer_norm(x0, 32)[0])


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype,width", [(np.float32, 4099), (np.float64, 2051)], ids=["f32", "f64"])
def test_large_outputs_any_alignment(dtype, width, affine):
    """Outputs over 4 MiB (large-output store paths) with rows of odd length, into
    fresh, misaligned (by one element or one byte) and in-place buffers."""
    rng = np.random.default_rng(width)
    x0 = (50.0 + rng.normal(0, 2, (257, width))).astype(dtype)
    assert x0.nbytes >= 4 << 20
    w, b = make_params(rng, (width,), dtype, "both" if affine else "none")
    ref = ref_layer_norm(x0, width, w, b)[0]
    assert_out_alignments(lambda a, **kw: normfast.layer_norm(a, width, w, b, **kw), x0, ref,
                          (None, "fresh", "elem", "byte", "inplace"))


# ---------------------------------------------------------------- backward

class TestBackward(BackwardTests):
    """layer_norm_backward: the backward tests the norms share (tests/_helpers.py) on
    layer_norm's cases, and its own."""
    KINDS = ("layer",)

    def test_large_offset_grad_out_float32(self):
        """grad_out with a large common offset: mean(g) cancels, dx must stay accurate."""
        rng = np.random.default_rng(17)
        x = (1e4 + 0.1 * rng.standard_normal((8, 4096))).astype(np.float32)
        dy = (1e3 + rng.standard_normal((8, 4096))).astype(np.float32)
        case = BackwardCase("layer", x.shape, nshape=(4096,))
        gx, gw, gb = case.grads(dy, x, np.ones(4096, np.float32), np.zeros(4096, np.float32))
        ex, ew, eb = case.reference(dy, x, np.ones(4096))
        np.testing.assert_allclose(gx, ex, rtol=1e-5, atol=1e-5 * np.max(np.abs(ex)))
        np.testing.assert_allclose(gw, ew, rtol=1e-5, atol=1e-5 * np.max(np.abs(ew)))
        np.testing.assert_allclose(gb, eb, rtol=1e-6)

    def test_constant_rows_mixed_with_normal_rows(self):
        rng = np.random.default_rng(10)
        x = rng.standard_normal((6, 100))
        x[1] = -7.0
        x[4] = 1e4
        dy = rng.standard_normal(x.shape)
        w = rng.standard_normal(100)
        case = BackwardCase("layer", x.shape, nshape=(100,))
        got = case.grads(dy, x, w, np.zeros(100))
        exp = case.reference(dy, x, w)
        for g, e in zip(got, exp):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9 * np.max(np.abs(e)))

    def test_out_torch_in_place(self):
        """torch tensors: out=grad_out comes back as the caller's tensor, equal to torch.autograd's grad."""
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(55)
        x = torch.from_numpy(rng.normal(3.0, 2.0, (64, 96)).astype(np.float32))
        w = torch.from_numpy(rng.normal(1.0, 0.2, 96).astype(np.float32))
        dy = torch.from_numpy(rng.normal(0.0, 1.0, (64, 96)).astype(np.float32))
        xt = x.clone().requires_grad_(True)
        torch.nn.functional.layer_norm(xt, (96,), w, None).backward(dy)
        _, mean, rstd = normfast.layer_norm(x, 96, w, return_stats=True)
        g = dy.clone()
        gx, gw, _ = normfast.layer_norm_backward(g, x, mean, rstd, 96, w, out=g)
        assert gx is g
        torch.testing.assert_close(g, xt.grad, rtol=1e-5, atol=1e-5)
