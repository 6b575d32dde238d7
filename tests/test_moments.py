"""moments / Moments: axis patterns, keepdims, correction, counts, dtypes, exactness,
merging of shards, pickling, bad inputs, properties."""
import pickle

import numpy as np
import pytest
from _helpers import DTYPE_IDS, DTYPES, make_x, ref_moments, unusual_copies
from hypothesis import given, settings
from hypothesis import strategies as st

import normfast
from normfast import Moments

AXIS_CASES = [
    ((7,), None), ((7,), 0), ((7,), -1),
    ((5, 6), None), ((5, 6), 0), ((5, 6), 1), ((5, 6), (0, 1)), ((5, 6), -1),
    ((3, 4, 5), 1), ((3, 4, 5), (0, 2)), ((3, 4, 5), (1, 2)), ((3, 4, 5), (0, 1)),
    ((2, 3, 4, 5), (0, 2)), ((2, 3, 4, 5), (1, 3)), ((2, 3, 4, 5), (0, 3)), ((2, 3, 4, 5), (1, 2)),
    ((2, 3, 4, 5), (0, 1, 3)), ((2, 3, 4, 5), 2),
    ((2, 3, 2, 4, 3), (1, 3)), ((2, 3, 2, 4, 3), (0, 2, 4)), ((2, 3, 2, 4, 3), (0, 4)),
    ((2, 3, 2, 4, 3), (1, 2, 3)), ((2, 3, 2, 4, 3), None),
    ((200, 3), 0), ((3, 200), 1), ((70, 2, 40), (0, 2)),
]
AXIS_IDS = [f"{'x'.join(map(str, s))}-ax{a}" for s, a in AXIS_CASES]


def _out_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _check(got, ref, dtype, what, x=None):
    """float64 results to 1e-12 relative; float32 results are the float64 statistic rounded once.
    With `x` (float64 variances only) the bound gets the floor set by float64 means of x's
    magnitude: chunk means are rounded to ~1 ulp(max|x|), which moves M2 by ~range * ulp."""
    got = np.asarray(got)
    assert got.dtype.newbyteorder("=") == _out_dtype(dtype), (what, got.dtype)
    if dtype == np.float64:
        atol = 1e-13
        if x is not None and x.size:
            u = float(np.spacing(np.max(np.abs(x))))
            atol += 4 * u * float(np.sqrt(np.nanmax(ref))) + 4 * u * u if np.isfinite(ref).any() else 0.0
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=atol, equal_nan=True, err_msg=what)
    else:
        np.testing.assert_allclose(got, np.asarray(ref).astype(np.float32), rtol=2 ** -23, atol=1e-30,
                                   equal_nan=True, err_msg=what)


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("keepdims", [False, True], ids=["flat", "keepdims"])
@pytest.mark.parametrize("layout", ["contig", "transposed", "strided"])
@pytest.mark.parametrize("case", AXIS_CASES, ids=AXIS_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_moments_matches_reference(rng, dtype, case, layout, keepdims, correction):
    shape, axis = case
    x = make_x(rng, shape, dtype, layout, loc=3.0)
    x0 = x.copy()
    mean, var, count = normfast.moments(x, axis, correction=correction, keepdims=keepdims, return_count=True)
    rmean, rvar, rcount = ref_moments(x, axis, correction)
    assert count == rcount and isinstance(count, (int, np.integer))
    if keepdims:
        kshape = np.mean(np.zeros(shape), axis=axis, keepdims=True).shape
        assert mean.shape == kshape and var.shape == kshape
        rmean, rvar = rmean.reshape(kshape), rvar.reshape(kshape)
    else:
        assert mean.shape == np.shape(rmean) and var.shape == np.shape(rvar)
    _check(mean, rmean, dtype, "mean")
    _check(var, rvar, dtype, "var")
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_default_is_all_axes_biased(rng, dtype):
    x = make_x(rng, (4, 5, 6), dtype)
    res = normfast.moments(x)
    assert len(res) == 2
    mean, var = res
    assert mean.shape == () and var.shape == ()
    rmean, rvar, _ = ref_moments(x)
    _check(mean, rmean, dtype, "mean")
    _check(var, rvar, dtype, "var")
    m2, v2, n2 = normfast.moments(x, (0, 1, 2), return_count=True)
    assert n2 == x.size
    np.testing.assert_array_equal(m2, mean)
    np.testing.assert_array_equal(v2, var)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_correction_matches_numpy_ddof(rng, axis):
    x = make_x(rng, (6, 7, 8), np.float64)
    for c in (0, 1, 2, 5):
        _, var = normfast.moments(x, axis, correction=c)
        np.testing.assert_allclose(var, np.var(x, axis=axis, ddof=c), rtol=1e-12)


def test_correction_at_or_above_count_is_nan(rng):
    x = make_x(rng, (3, 4), np.float64)
    _, var = normfast.moments(x, 0, correction=3)
    assert var.shape == (4,) and np.isnan(var).all()
    _, var = normfast.moments(x, 0, correction=7)
    assert np.isnan(var).all()
    _, var = normfast.moments(x, 0, correction=2)
    assert np.isfinite(var).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e4 + 0.3, 1e8 + 1])
@pytest.mark.parametrize("shape,axis", [((1000,), 0), ((9000, 3), 0), ((3, 9000), 1), ((40, 5, 30), (0, 2)),
                                        ((5, 20000), None), ((300, 4, 3), (0, 2)), ((2, 3, 4, 5), (1, 3))])
def test_constant_data_exact(dtype, value, shape, axis):
    if dtype == np.float16 and abs(value) > 6e4:
        pytest.skip("not representable in float16")
    x = np.full(shape, value, dtype=dtype)
    c = float(x.flat[0])
    mean, var = normfast.moments(x, axis)
    assert np.all(var == 0), var
    assert np.all(mean == _out_dtype(dtype)(c)), (mean, c)
    m = Moments.from_array(x, 0 if axis is None else axis)
    assert np.all(m.m2 == 0) and np.all(m.mean == c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_variance_never_negative(dtype, axis):
    """Two adjacent representable values far from zero: tiny variance, never < 0."""
    base = dtype(1e4) if dtype == np.float32 else dtype(1e12)
    up = np.nextafter(base, dtype(np.inf))
    rng = np.random.default_rng(0)
    x = np.where(rng.random((5000, 7)) < 0.001, up, base).astype(dtype)
    mean, var = normfast.moments(x, axis)
    assert np.all(var >= 0)
    _, _, rstd = normfast.layer_norm(x, 7, eps=0.0, return_stats=True)
    assert np.all(np.isfinite(rstd[(x != x[:, :1]).any(axis=1)]))
    if dtype == np.float32:
        # float64 accumulation of float32 data: accurate.  (For float64 data one ulp apart at 1e12
        # the spread is below the float64 resolution of the mean itself; only the sign is checked.)
        _, rvar, _ = ref_moments(x, axis)
        np.testing.assert_allclose(var, rvar.astype(np.float32), rtol=2 ** -22, atol=0)


def test_large_offset_accuracy(rng):
    x = 1e8 + rng.normal(0, 1.0, (100000,))
    mean, var = normfast.moments(x)
    rmean, rvar, _ = ref_moments(x)
    assert abs(mean - rmean) <= np.spacing(1e8)
    np.testing.assert_allclose(var, rvar, rtol=1e-10)
    x32 = (1e4 + rng.normal(0, 0.01, (4, 50000))).astype(np.float32)
    m32, v32 = normfast.moments(x32, 1)
    rm, rv, _ = ref_moments(x32, 1)
    np.testing.assert_allclose(v32, rv.astype(np.float32), rtol=2 ** -23)
    np.testing.assert_allclose(m32, rm.astype(np.float32), rtol=2 ** -23)


@pytest.mark.parametrize("n", [1, 2, 3, 31, 33, 1023, 1025, 8191, 8193, 65537])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_odd_lengths(rng, dtype, n):
    for shape, axis in (((n,), 0), ((2, n), 1), ((n, 3), 0)):
        x = make_x(rng, shape, dtype, loc=7.0)
        mean, var = normfast.moments(x, axis)
        rmean, rvar, _ = ref_moments(x, axis)
        _check(mean, rmean, dtype, f"mean {shape}")
        _check(var, rvar, dtype, f"var {shape}")


def test_nan_is_isolated(rng):
    x = make_x(rng, (50, 4), np.float64)
    x[17, 2] = np.nan
    mean, var = normfast.moments(x, 0)
    assert np.isnan(mean[2]) and np.isnan(var[2])
    rmean, rvar, _ = ref_moments(x[:, [0, 1, 3]], 0)
    np.testing.assert_allclose(mean[[0, 1, 3]], rmean, rtol=1e-12)
    np.testing.assert_allclose(var[[0, 1, 3]], rvar, rtol=1e-12)


def test_empty_reductions():
    x = np.empty((0, 4), np.float64)
    mean, var, count = normfast.moments(x, 0, return_count=True)
    assert mean.shape == (4,) and np.isnan(mean).all() and np.isnan(var).all() and count == 0
    mean, var = normfast.moments(x, 1)
    assert mean.shape == (0,) and var.shape == (0,)
    mean, var = normfast.moments(np.empty((3, 0, 2), np.float32), (1,), keepdims=True)
    assert mean.shape == (3, 1, 2) and mean.dtype == np.float32 and np.isnan(mean).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_result_dtypes(rng, dtype):
    x = make_x(rng, (4, 5), dtype)
    for axis in (None, 0, 1):
        mean, var = normfast.moments(x, axis)
        assert mean.dtype == _out_dtype(dtype) and var.dtype == _out_dtype(dtype)


# ---------------------------------------------------------------- Moments

def _assert_moments_equal(a, b, rtol=1e-12):
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(a.m2, b.m2, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_merge_unequal_shards_equals_whole(rng, dtype):
    x = (rng.normal(0, 1, (1000, 16)) * np.arange(1, 17) + 1e3 * np.arange(16)).astype(dtype)
    whole = Moments.from_array(x, 0)
    bounds = [0, 1, 3, 100, 101, 517, 999, 1000]
    shards = [Moments.from_array(x[a:b], 0) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = Moments()
    for s in shards:
        merged.merge(s)
    _assert_moments_equal(merged, whole)
    rmean, rvar, _ = ref_moments(x, 0)
    np.testing.assert_allclose(merged.mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(merged.var(), rvar, rtol=1e-12)
    assert merged.count == 1000
    # merge order does not matter beyond rounding; reduce() merges in order
    _assert_moments_equal(Moments.reduce(shards[::-1]), whole)
    r = Moments.reduce(shards)
    np.testing.assert_array_equal(r.mean, merged.mean)
    np.testing.assert_array_equal(r.m2, merged.m2)
    # merging into a non-empty state: pairwise tree
    left = Moments.reduce(shards[:3])
    right = Moments.reduce(shards[3:])
    _assert_moments_equal(left.merge(right), whole)


def test_merge_returns_self_and_reduce_is_new(rng):
    a = Moments.from_array(make_x(rng, (10, 3), np.float64), 0)
    b = Moments.from_array(make_x(rng, (5, 3), np.float64), 0)
    b_before = (b.count.copy(), b.mean.copy(), b.m2.copy())
    assert a.merge(b) is a
    np.testing.assert_array_equal(b.count, b_before[0])
    np.testing.assert_array_equal(b.mean, b_before[1])
    np.testing.assert_array_equal(b.m2, b_before[2])
    states = [Moments.from_array(make_x(rng, (4, 3), np.float64), 0) for _ in range(3)]
    r = Moments.reduce(states)
    assert all(r is not s for s in states)
    assert r.count == 12


def test_update_chain_equals_whole(rng):
    x = make_x(rng, (301, 5, 4), np.float64, loc=50.0)
    m = Moments()
    for a, b in [(0, 100), (100, 101), (101, 101), (101, 301)]:
        assert m.update(x[a:b], axis=0) is m
    _assert_moments_equal(m, Moments.from_array(x, 0))
    rmean, rvar, _ = ref_moments(x, 0)
    np.testing.assert_allclose(m.mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(m.var(), rvar, rtol=1e-12)
    np.testing.assert_allclose(m.var(correction=1), np.var(x, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(m.std(), np.std(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.std(correction=1), np.std(x, axis=0, ddof=1), rtol=1e-12)


def test_update_with_axis_tuple(rng):
    x = make_x(rng, (6, 4, 5), np.float32)
    m = Moments().update(x[:2], axis=(0, 2)).update(x[2:], axis=(0, 2))
    rmean, rvar, _ = ref_moments(x, (0, 2))
    np.testing.assert_allclose(m.mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(m.var(), rvar, rtol=1e-12)
    assert m.count == 30


def test_empty_updates_are_neutral(rng):
    x = make_x(rng, (20, 3), np.float64)
    m = Moments().update(np.empty((0, 3)), 0).update(x, 0).update(np.empty((0, 3)), 0)
    ref = Moments.from_array(x, 0)
    np.testing.assert_array_equal(m.count, ref.count)
    np.testing.assert_array_equal(m.mean, ref.mean)
    np.testing.assert_array_equal(m.m2, ref.m2)
    e = Moments()
    assert np.isnan(e.var()) and np.isnan(e.var(correction=1))


def test_var_correction_vs_numpy(rng):
    x = make_x(rng, (37, 6), np.float64)
    m = Moments.from_array(x, 0)
    for c in (0, 1, 2):
        np.testing.assert_allclose(m.var(correction=c), np.var(x, axis=0, ddof=c), rtol=1e-12)
    one = Moments.from_array(x[:1], 0)
    assert np.all(one.var() == 0) and np.isnan(one.var(correction=1)).all()


def test_pickle_round_trip(rng):
    m = Moments.from_array(make_x(rng, (50, 7), np.float64, loc=3.0), 0)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        m2 = pickle.loads(pickle.dumps(m, protocol=proto))
        assert isinstance(m2, Moments)
        np.testing.assert_array_equal(m2.count, m.count)
        np.testing.assert_array_equal(m2.mean, m.mean)
        np.testing.assert_array_equal(m2.m2, m.m2)
        assert m2.mean.dtype == np.float64 and m2.m2.dtype == np.float64
    # a round-tripped shard still merges exactly like the original
    x = make_x(rng, (40, 7), np.float64)
    a = Moments.from_array(x[:13], 0)
    b = pickle.loads(pickle.dumps(Moments.from_array(x[13:], 0)))
    _assert_moments_equal(a.merge(b), Moments.from_array(x, 0))


def test_state_dtypes(rng):
    m = Moments.from_array(make_x(rng, (9, 2), np.float16), 0)
    for a in (m.count, m.mean, m.m2):
        assert a.dtype == np.float64


def test_merge_type_error():
    with pytest.raises(TypeError, match="other"):
        Moments().merge((1, 2.0, 0.0))


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(6), np.ones(6, bool), np.ones(6, np.complex64)],
                         ids=["int", "bool", "complex"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.moments(bad)
    with pytest.raises(TypeError, match="x"):
        Moments().update(bad)


def test_bad_arguments(rng):
    x = make_x(rng, (3, 4), np.float64)
    for ax in (2, -3, (0, 2)):
        with pytest.raises(ValueError, match="axis"):
            normfast.moments(x, ax)
    for ax in ((0, 0), (1, -1)):
        with pytest.raises(ValueError, match="axis"):
            normfast.moments(x, ax)
    with pytest.raises(TypeError, match="axis"):
        normfast.moments(x, 0.0)
    with pytest.raises(ValueError, match="correction"):
        normfast.moments(x, correction=-1)
    with pytest.raises(TypeError, match="correction"):
        normfast.moments(x, correction="1")
    with pytest.raises(TypeError, match="correction"):
        Moments.from_array(x).var(correction=None)


# ---------------------------------------------------------------- properties

@st.composite
def shapes_and_axes(draw):
    nd = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=nd, max_size=nd)))
    axes = draw(st.one_of(st.none(), st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True)))
    return shape, (None if axes is None else tuple(sorted(axes)))


@settings(max_examples=150, deadline=None)
@given(sa=shapes_and_axes(), dtype=st.sampled_from([np.float16, np.float32, np.float64]),
       layout=st.sampled_from(["contig", "transposed", "strided", "reversed"]), keepdims=st.booleans(),
       correction=st.integers(0, 2), seed=st.integers(0, 2 ** 32 - 1),
       loc=st.sampled_from([0.0, 1.0, -50.0, 1e4]))
def test_property_moments(sa, dtype, layout, keepdims, correction, seed, loc):
    shape, axes = sa
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, dtype, layout, loc=loc, scale=1.0)
    mean, var, count = normfast.moments(x, axes, correction=correction, keepdims=keepdims, return_count=True)
    rmean, rvar, rcount = ref_moments(x, axes, correction)
    assert count == rcount
    if keepdims:
        kshape = tuple(1 if (axes is None or i in axes) else s for i, s in enumerate(shape))
        rmean, rvar = rmean.reshape(kshape), rvar.reshape(kshape)
    assert mean.shape == np.shape(rmean)
    _check(mean, rmean, dtype, "mean")
    _check(var, rvar, dtype, "var", x=x.astype(np.float64))
    assert np.all(np.isnan(var) | (var >= 0))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8), width=st.integers(1, 5),
       seed=st.integers(0, 2 ** 32 - 1), loc=st.sampled_from([0.0, 1e6]))
def test_property_shard_merge(sizes, width, seed, loc):
    rng = np.random.default_rng(seed)
    x = loc + rng.normal(0, 1, (sum(sizes), width))
    bounds = np.cumsum([0] + sizes)
    merged = Moments.reduce([Moments.from_array(x[a:b], 0) for a, b in zip(bounds[:-1], bounds[1:])])
    assert merged.count == x.shape[0]
    if x.shape[0] == 0:
        return
    rmean, rvar, _ = ref_moments(x, 0)
    u = float(np.spacing(np.max(np.abs(x))))          # float64 resolution at the data's magnitude
    np.testing.assert_allclose(merged.mean, rmean, rtol=1e-12, atol=4 * u)
    np.testing.assert_allclose(merged.var(), rvar, rtol=1e-12, atol=4 * u * np.sqrt(rvar).max() + 4 * u * u)


# ---------------------------------------------------------------- unusual memory

@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype, axis):
    x = make_x(rng, (40, 3, 50), dtype, loc=2.0)
    rmean, rvar, _ = ref_moments(x, axis)
    for xx in unusual_copies(x):
        mean, var = normfast.moments(xx, axis)
        _check(mean, rmean, dtype, f"mean {xx.dtype}")
        _check(var, rvar, dtype, f"var {xx.dtype}")
        if axis is not None:
            m = Moments.from_array(xx, axis)
            np.testing.assert_allclose(m.mean, rmean, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- Array API edges (reliability issue, class 8)

def test_empty_axis_tuple_is_the_empty_reduction(rng):
    """axis=() reduces over nothing (the Array API's rule, NumPy's too): mean = x, var = 0."""
    x = make_x(rng, (3, 4), np.float64)
    mean, var = normfast.moments(x, ())
    np.testing.assert_array_equal(mean, np.mean(x, axis=()))
    np.testing.assert_array_equal(var, np.var(x, axis=()))


@pytest.mark.parametrize("correction", [0.5, 1.5, 2])
def test_real_correction(rng, correction):
    """correction may be any real >= 0 (Array API: int | float), like NumPy's ddof."""
    x = make_x(rng, (50, 3), np.float64)
    _, var = normfast.moments(x, 0, correction=correction)
    np.testing.assert_allclose(var, np.var(x.astype(np.longdouble), axis=0, ddof=correction).astype(np.float64),
                               rtol=1e-13)
    with pytest.raises(ValueError, match="correction"):
        normfast.moments(x, 0, correction=-0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [3, 40, 20001])
def test_infinite_values_give_numpy_results(dtype, n):
    """inf in the data: the mean is inf (not NaN from Chan's n * (inf - inf)), as NumPy gives."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(dtype)
    x[n // 2] = np.inf
    with np.errstate(invalid="ignore"):
        ref_mean, ref_var = np.mean(x.astype(np.float64)), np.var(x.astype(np.float64))
    mean, var = normfast.moments(x)
    assert mean == ref_mean and np.isnan(var) == np.isnan(ref_var)
    cols = np.stack([x, x], axis=1)                      # the column (channels-last) kernels
    mean, _ = normfast.moments(cols, 0)
    assert np.all(mean == ref_mean)
    x[0] = -np.inf
    assert np.isnan(normfast.moments(x)[0]) and np.isnan(np.mean(x.astype(np.float64)))


def test_merge_rejects_different_shapes():
    a = Moments.from_array(np.ones((3, 2)), 0)
    b = Moments.from_array(np.ones((3, 4)), 0)
    with pytest.raises(ValueError, match="shape"):
        a.merge(b)
    assert Moments.reduce([a, a]).count == 6          # the empty default state still merges with any


def test_moments_from_dask_array():
    """Moments.from_array takes a Dask array too (one read, computed now) and equals the in-memory state."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, size=(1000, 3))
    st = Moments.from_array(da.from_array(x, chunks=(250, 3)), axis=0)
    ref = Moments.from_array(x, axis=0)
    np.testing.assert_allclose(st.mean, x.astype(np.longdouble).mean(0).astype(np.float64), rtol=1e-14)
    np.testing.assert_allclose(st.var(), ref.var(), rtol=1e-12)
    np.testing.assert_array_equal(np.broadcast_to(st.count, (3,)), 1000)
