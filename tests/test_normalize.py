"""normalize forward: any set of axes (trailing, leading, non-contiguous patterns), affine of
the normalized axes' shape, layouts, out=, accuracy, edge cases, bad inputs, properties."""
import numpy as np
import pytest
from _helpers import (
    AFFINES,
    DTYPE_IDS,
    DTYPES,
    OUT_MODES,
    assert_close_ref,
    assert_offset_accuracy,
    assert_stats_close,
    call_with_out,
    make_params,
    make_x,
    mean_rounding_atol,
    ref_normalize,
    unusual_copies,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast

AXIS_CASES = [
    ((4, 5, 6), -1),
    ((4, 5, 6), (1, 2)),
    ((3, 4, 5, 6), 1),              # channels-first LayerNorm of NCHW
    ((7, 5), 0),                    # feature standardization
    ((3, 4, 5), 0),
    ((3, 4, 5), (0, 2)),
    ((3, 4, 5, 6), (0, 2)),         # R K R K: outside the 4-d form
    ((2, 3, 4, 5, 6), (1, 3)),
    ((2, 3, 4, 5, 6), (0, 2, 4)),
    ((3, 4, 5, 6), (0, 1, 2, 3)),
    ((3, 4, 5, 6), (1, 2)),
    ((3, 4, 5, 6), (1, 3)),         # K R K R: the 4-d form with A > 1
    ((3, 40, 2, 50), (1, 3)),       # ... with long contiguous segments
    ((2, 3, 4, 5, 6), (1, 2, 4)),
    ((6,), 0),
]
AXIS_IDS = [f"{'x'.join(map(str, s))}-ax{a}" for s, a in AXIS_CASES]


def _axes(axis, nd):
    return tuple(sorted(a % nd for a in ((axis,) if isinstance(axis, int) else axis)))


def _norm_shape(shape, axis):
    return tuple(shape[a] for a in _axes(axis, len(shape)))


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("case", AXIS_CASES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(rng, dtype, case, affine, out_mode):
    shape, axis = case
    x = make_x(rng, shape, dtype)
    w, b = make_params(rng, _norm_shape(shape, axis), dtype, affine)
    ref, _, _ = ref_normalize(x, _axes(axis, x.ndim), w, b, 1e-5)
    y = call_with_out(lambda a, **kw: normfast.normalize(a, axis, w, b, 1e-5, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate"])
@pytest.mark.parametrize("affine", ["none", "both"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed"])
@pytest.mark.parametrize("case", AXIS_CASES[:9], ids=AXIS_IDS[:9])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_input(rng, dtype, case, layout, affine, out_mode):
    shape, axis = case
    x = make_x(rng, shape, dtype, layout)
    w, b = make_params(rng, _norm_shape(shape, axis), dtype, affine)
    ref, _, _ = ref_normalize(x, _axes(axis, x.ndim), w, b)
    y = call_with_out(lambda a, **kw: normfast.normalize(a, axis, w, b, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("case", AXIS_CASES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_return_stats(rng, dtype, case):
    shape, axis = case
    x = make_x(rng, shape, dtype, loc=-6.0)
    y, mean, rstd = normfast.normalize(x, axis, eps=1e-3, return_stats=True)
    ref, rmean, rrstd = ref_normalize(x, _axes(axis, x.ndim), eps=1e-3)
    kept = tuple(s for i, s in enumerate(shape) if i not in _axes(axis, len(shape)))
    assert mean.shape == kept and rstd.shape == kept
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean, "mean")
    assert_stats_close(rstd, rrstd, "rstd")


def test_axis_spellings_agree(rng):
    x = make_x(rng, (3, 4, 5, 6), np.float64)
    ref = normfast.normalize(x, (0, 2))
    for ax in [(2, 0), [0, 2], (-4, -2), (0, -2), (np.int64(0), np.int32(2))]:
        np.testing.assert_array_equal(normfast.normalize(x, ax), ref)
    np.testing.assert_array_equal(normfast.normalize(x, -1), normfast.normalize(x, 3))
    np.testing.assert_array_equal(normfast.normalize(x), normfast.normalize(x, 3))


def test_trailing_axes_equal_layer_norm(rng):
    x = make_x(rng, (3, 4, 5, 6), np.float32)
    w, b = make_params(rng, (5, 6), np.float32, "both")
    np.testing.assert_array_equal(normfast.normalize(x, (2, 3), w, b), normfast.layer_norm(x, (5, 6), w, b))


def test_axis1_matches_torch_layer_norm(rng):
    """axis=1 of NCHW is channels-first LayerNorm: torch layer_norm on the moved axis."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = make_x(rng, (3, 8, 5, 6), np.float64)
    w, b = make_params(rng, (8,), np.float64, "both")
    t = F.layer_norm(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 1, -1))), (8,),
                     torch.from_numpy(w), torch.from_numpy(b), 1e-5).numpy()
    np.testing.assert_allclose(normfast.normalize(x, 1, w, b), np.moveaxis(t, -1, 1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("shape,axis", [((16, 4096), -1), ((4096, 16), 0), ((2, 4096, 8), 1),
                                        ((64, 8, 64), (0, 2))])
@pytest.mark.parametrize("affine", ["none", "both"])
def test_accuracy_large_offset_float32(rng, shape, axis, affine):
    """4096 float32 values per statistic around 1e4 (std 0.1): max abs error <= 2e-6."""
    x = (1e4 + rng.normal(0, 0.1, shape)).astype(np.float32)
    nshape = _norm_shape(shape, axis)
    w = np.ones(nshape, np.float32) if affine == "both" else None
    b = np.zeros(nshape, np.float32) if affine == "both" else None
    y, mean, rstd = normfast.normalize(x, axis, w, b, return_stats=True)
    ref, rmean, rrstd = ref_normalize(x, _axes(axis, x.ndim))
    assert_offset_accuracy(y, ref, mean, rmean, rstd, rrstd)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("axis", [0, -1, (0, 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_slices_exact(rng, dtype, axis):
    shape = (6, 5, 7)
    x = make_x(rng, shape, dtype)
    axes = _axes(axis, 3)
    kept = [i for i in range(3) if i not in axes]
    # make the first kept index constant (1e4 + 0.1) and the last one zero
    idx0 = [slice(None)] * 3
    idx0[kept[0]] = 0
    idx1 = [slice(None)] * 3
    idx1[kept[0]] = -1
    x[tuple(idx0)] = 1e4 + 0.1
    x[tuple(idx1)] = 0
    y = normfast.normalize(x, axis)
    assert np.all(y[tuple(idx0)] == 0) and np.all(y[tuple(idx1)] == 0)
    w, b = make_params(rng, _norm_shape(shape, axis), dtype, "both")
    y = normfast.normalize(x, axis, w, b)
    bexp = ref_normalize(np.zeros(shape), axes, None, b)[0].astype(dtype)    # bias broadcast over x
    np.testing.assert_array_equal(y[tuple(idx0)], bexp[tuple(idx0)])
    np.testing.assert_array_equal(y[tuple(idx1)], bexp[tuple(idx1)])


@pytest.mark.parametrize("axis", [0, -1, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_isolated(rng, dtype, axis):
    x = make_x(rng, (6, 8, 5), dtype)
    x[2, 3, 4] = np.nan
    y, mean, rstd = normfast.normalize(x, axis, return_stats=True)
    ref, rmean, rrstd = ref_normalize(x, (axis % 3,))
    assert_close_ref(y, ref)                    # NaN exactly where the reference has it
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)
    assert np.isnan(y).sum() == x.shape[axis]


@pytest.mark.parametrize("width", [1, 3, 1023, 1025, 65537])
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_odd_widths(rng, dtype, axis, width):
    shape = (width, 3) if axis == 0 else (3, width)
    x = make_x(rng, shape, dtype, loc=2.0)
    y, mean, rstd = normfast.normalize(x, axis, return_stats=True)
    ref, rmean, rrstd = ref_normalize(x, (axis % 2,))
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)
    if width == 1:
        assert np.all(y == 0)


@pytest.mark.parametrize("shape,axis", [((1, 1, 5), -1), ((1, 5, 1), 1), ((5, 1, 1), (1, 2)), ((1, 1), 0),
                                        ((1, 4, 1, 3), (0, 2)), ((2, 1, 3, 1, 4), (1, 3)), ((1, 4, 1, 3), (1, 3))])
def test_size_one_dims(rng, shape, axis):
    x = make_x(rng, shape, np.float32)
    w, b = make_params(rng, _norm_shape(shape, axis), np.float32, "both")
    for ww, bb in ((None, None), (w, b)):
        y, mean, rstd = normfast.normalize(x, axis, ww, bb, return_stats=True)
        ref, rmean, rrstd = ref_normalize(x, _axes(axis, x.ndim), ww, bb)
        assert_close_ref(y, ref)
        assert_stats_close(mean, rmean)
        assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((0, 5), 1), ((0, 3, 4), (1, 2)), ((4, 0, 3), 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_empty(dtype, shape, axis):
    x = np.empty(shape, dtype)
    y, mean, rstd = normfast.normalize(x, axis, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    kept = tuple(s for i, s in enumerate(shape) if i not in _axes(axis, len(shape)))
    assert mean.shape == kept and rstd.shape == kept


def test_empty_reduction_gives_nan_stats():
    x = np.empty((3, 0), np.float64)
    y, mean, rstd = normfast.normalize(x, 1, return_stats=True)
    assert y.shape == (3, 0)
    assert mean.shape == (3,) and np.isnan(mean).all()


def test_input_not_modified_non_trailing(rng):
    for axis in (0, (0, 2), 1):
        x = make_x(rng, (3, 4, 5), np.float32)
        x0 = x.copy()
        w, b = make_params(rng, _norm_shape(x.shape, axis), np.float32, "both")
        normfast.normalize(x, axis, w, b)
        normfast.normalize(x, axis)
        np.testing.assert_array_equal(x, x0)


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(12).reshape(3, 4), np.ones((3, 4), bool), np.ones((3, 4), np.complex128),
                                 np.ones((3, 4), np.uint16)], ids=["int", "bool", "complex", "uint16"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.normalize(bad, 0)


def test_bad_arguments(rng):
    x = make_x(rng, (3, 4, 5), np.float32)
    for ax in (3, -4, (0, 3)):
        with pytest.raises(ValueError, match="axis"):
            normfast.normalize(x, ax)
    for ax in ((0, 0), (1, -2), ()):
        with pytest.raises(ValueError, match="axis"):
            normfast.normalize(x, ax)
    with pytest.raises(TypeError, match="axis"):
        normfast.normalize(x, 1.0)
    with pytest.raises(TypeError, match="axis"):
        normfast.normalize(x, None)
    with pytest.raises(ValueError, match="weight"):
        normfast.normalize(x, (0, 2), weight=np.ones((5, 3)))
    with pytest.raises(ValueError, match="weight"):
        normfast.normalize(x, 1, weight=np.ones(5))
    with pytest.raises(ValueError, match="bias"):
        normfast.normalize(x, 0, bias=np.ones((3, 1)))
    for e in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            normfast.normalize(x, 0, eps=e)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.normalize(x, 0, out=ro)
    with pytest.raises(TypeError, match="out"):
        normfast.normalize(x, 0, out=np.empty(x.shape, np.float64))
    with pytest.raises(ValueError, match="out"):
        normfast.normalize(x, 0, out=np.empty((3, 4, 6), np.float32))
    buf = make_x(rng, (3, 4, 10), np.float32)
    keep = buf.copy()
    with pytest.raises(ValueError, match="out"):
        normfast.normalize(buf[..., :5], 0, out=buf[..., 4:9])
    np.testing.assert_array_equal(buf, keep)


# ---------------------------------------------------------------- properties

@st.composite
def shapes_and_axes(draw, min_side=1):
    nd = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(min_side, 5), min_size=nd, max_size=nd)))
    axes = draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
    return shape, tuple(sorted(axes))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sa=shapes_and_axes(), dtype=st.sampled_from([np.float16, np.float32, np.float64]),
       affine=st.sampled_from(AFFINES), layout=st.sampled_from(["contig", "transposed", "strided"]),
       inplace=st.booleans(), seed=st.integers(0, 2 ** 32 - 1), loc=st.sampled_from([0.0, 3.0, -100.0, 1e3]))
def test_property_matches_reference(sa, dtype, affine, layout, inplace, seed, loc):
    shape, axes = sa
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, dtype, layout, loc=loc, scale=1.0)
    w, b = make_params(rng, tuple(shape[a] for a in axes), dtype, affine)
    ref, rmean, rrstd = ref_normalize(x, axes, w, b, 1e-5)
    floor = mean_rounding_atol(x, rrstd, w) if x.dtype == np.float64 else 0.0
    axis = axes[0] if len(axes) == 1 else axes
    if inplace:
        y, mean, rstd = normfast.normalize(x, axis, w, b, out=x, return_stats=True)
        assert y is x
    else:
        y, mean, rstd = normfast.normalize(x, axis, w, b, return_stats=True)
    assert_close_ref(y, ref, atol=floor)
    assert_stats_close(mean, rmean, "mean")
    assert_stats_close(rstd, rrstd, "rstd")


@settings(max_examples=60, deadline=None)
@given(sa=shapes_and_axes(min_side=0), dtype=st.sampled_from([np.float32, np.float64]))
def test_property_shapes_with_zeros(sa, dtype):
    shape, axes = sa
    x = np.ones(shape, dtype)
    axis = axes if len(axes) > 1 else axes[0]
    y, mean, rstd = normfast.normalize(x, axis, return_stats=True)
    kept = tuple(s for i, s in enumerate(shape) if i not in axes)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == kept and rstd.shape == kept
    if x.size:
        assert np.all(y == 0)


# ---------------------------------------------------------------- unusual memory

@pytest.mark.parametrize("axis", [-1, 0, (0, 2), (1, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype, axis):
    x = make_x(rng, (3, 4, 5, 6), dtype)
    w, b = make_params(rng, _norm_shape(x.shape, axis), dtype, "both")
    for ww, bb in ((None, None), (w, b)):
        ref, rmean, _ = ref_normalize(x, _axes(axis, 4), ww, bb)
        for xx in unusual_copies(x):
            y, mean, _ = normfast.normalize(xx, axis, ww, bb, return_stats=True)
            assert y.dtype == xx.dtype
            assert_close_ref(y, ref)
            assert_stats_close(mean, rmean)
            assert normfast.normalize(xx, axis, ww, bb, out=xx) is xx
            assert_close_ref(xx, ref)


def test_interleaved_out_shares_buffer_without_overlap(rng):
    buf = make_x(rng, (6, 5, 8), np.float64)
    x = buf[..., ::2]
    x0 = x.copy()
    normfast.normalize(x, 0, out=buf[..., 1::2])
    np.testing.assert_array_equal(x, x0)
    assert_close_ref(buf[..., 1::2], ref_normalize(x0, (0,))[0])
