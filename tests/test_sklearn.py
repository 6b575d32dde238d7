"""normfast.sklearn.StandardScaler: scikit-learn's own estimator checks; statistics against a
long-double reference (plain NumPy); transform against scikit-learn's scaler; NaN, weights,
partial_fit, in place, pandas, sparse and Dask input."""
import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.preprocessing import StandardScaler as SkScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from normfast.sklearn import StandardScaler, weighted_moments  # noqa: E402

ULP_1E6 = float(np.spacing(1e6))


def _ref(X, w=None):
    """Weighted per-column mean / biased variance in long double, NaN ignored (two-pass)."""
    X = np.asarray(X, dtype=np.longdouble)
    w = np.ones(X.shape[0], dtype=np.longdouble) if w is None else np.asarray(w, dtype=np.longdouble)
    W = np.where(np.isnan(X), 0, w[:, None])
    Xz = np.where(np.isnan(X), 0, X)
    n = W.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):            # all-NaN columns give NaN
        mean = (W * Xz).sum(axis=0) / n
        var = (W * (Xz - mean) ** 2).sum(axis=0) / n
    return n, mean, var


def _shifted(shape, seed=0, loc=1e6, scale=1e-2, dtype=np.float64):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _expected_failed(est):
    """Checks an instance cannot pass, with the reason (scikit-learn's own StandardScaler fails them too)."""
    if not est.copy:
        return {"check_methods_sample_order_invariance":
                "copy=False scales X in place, so transform(X) then transform(X[idx]) sees scaled data "
                "(sklearn.preprocessing.StandardScaler(copy=False) fails this check the same way)"}
    return {}


# Every check runs; the only skips are scikit-learn's check_array_api_input on NumPy, which skips
# itself ("SCIPY_ARRAY_API is not set") unless the environment variable is set before SciPy is
# imported (with SCIPY_ARRAY_API=1 they run and pass).
@parametrize_with_checks([StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False),
                          StandardScaler(with_mean=False, with_std=False), StandardScaler(copy=False)],
                         expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_fit_exact_on_large_mean():
    # Enough rows per column that the kernel's chunk merges (absolute means, ulp(1e6) = 1.2e-10
    # against std 1e-2) stay below 1e-10 relative in the variance; at 2e4 rows they reach 2e-10.
    X = _shifted((200000, 4))
    s = StandardScaler().fit(X)
    _, mean, var = _ref(X)
    assert np.max(np.abs(s.mean_ - mean.astype(np.float64))) <= 2 * ULP_1E6
    assert np.max(np.abs(s.var_ / var.astype(np.float64) - 1)) <= 1e-10
    assert s.n_samples_seen_ == 200000 and isinstance(s.n_samples_seen_, np.integer)
    sk = SkScaler().fit(X)                              # same quantities as scikit-learn's, less rounding
    np.testing.assert_allclose(s.var_, sk.var_, rtol=1e-5)
    Z = s.transform(X)
    Zref = (X.astype(np.longdouble) - mean) / np.sqrt(var)
    assert np.max(np.abs(Z - Zref.astype(np.float64))) <= 1e-6


def test_partial_fit_chunks_equal_fit():
    X = _shifted((200000, 4), seed=1)
    s = StandardScaler()
    for part in np.array_split(X, 10):
        s.partial_fit(part)
    _, mean, var = _ref(X)
    assert np.max(np.abs(s.mean_ - mean.astype(np.float64))) <= 2 * ULP_1E6
    assert np.max(np.abs(s.var_ / var.astype(np.float64) - 1)) <= 1e-10
    assert s.n_samples_seen_ == 200000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_ignored_in_fit_kept_in_transform(dtype):
    X = _shifted((5000, 4), seed=2, loc=3.0, scale=2.0, dtype=dtype)
    X[::7, 1] = np.nan
    X[:, 3] = np.nan
    s = StandardScaler().fit(X)
    n, mean, var = _ref(X)
    np.testing.assert_array_equal(s.n_samples_seen_, n.astype(np.int64))
    np.testing.assert_allclose(s.mean_[:3], mean[:3].astype(np.float64), rtol=1e-14)
    np.testing.assert_allclose(s.var_[:3], var[:3].astype(np.float64), rtol=1e-12)
    assert np.isnan(s.mean_[3])
    Z = s.transform(X)
    assert Z.dtype == dtype
    np.testing.assert_array_equal(np.isnan(Z), np.isnan(X))
    sk = SkScaler().fit(X[:, :3])
    np.testing.assert_allclose(Z[:, :3], sk.transform(X[:, :3]), rtol=1e-4 if dtype == np.float32 else 1e-9,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_inf_raises_like_sklearn():
    X = np.ones((10, 3))
    X[2, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        StandardScaler().fit(X)


@pytest.mark.parametrize("nan", [False, True])
def test_sample_weight_exact(nan):
    X = _shifted((40000, 4), seed=3)
    if nan:
        X[::5, 0] = np.nan
    w = np.random.default_rng(4).random(40000) * 3
    w[::11] = 0.0
    s = StandardScaler().fit(X, sample_weight=w)
    n, mean, var = _ref(X, w)
    np.testing.assert_allclose(s.n_samples_seen_, n.astype(np.float64), rtol=1e-13)
    assert np.max(np.abs(s.mean_ - mean.astype(np.float64))) <= 2 * ULP_1E6
    assert np.max(np.abs(s.var_ / var.astype(np.float64) - 1)) <= 1e-10
    # integer weights equal repeating the rows
    wi = np.random.default_rng(5).integers(0, 4, 40000)
    a = StandardScaler().fit(X, sample_weight=wi)
    b = StandardScaler().fit(np.repeat(X, wi, axis=0))
    assert np.max(np.abs(a.mean_ - b.mean_)) <= 2 * ULP_1E6
    np.testing.assert_allclose(a.var_, b.var_, rtol=1e-10)


def test_weighted_moments_blocks_merge_like_whole():
    X = np.random.default_rng(6).normal(5.0, 1.0, (300000, 3))     # several 1 MiB blocks
    w = np.random.default_rng(7).random(300000)
    m = weighted_moments(X, w)
    n, mean, var = _ref(X, w)
    np.testing.assert_allclose(m.count, n.astype(np.float64), rtol=1e-13)
    np.testing.assert_allclose(m.mean, mean.astype(np.float64), rtol=1e-15)
    np.testing.assert_allclose(m.m2 / m.count, var.astype(np.float64), rtol=1e-13)


def test_float32_keeps_accuracy():
    X = _shifted((20000, 4), seed=8, loc=1e4, scale=0.1, dtype=np.float32)
    s = StandardScaler().fit(X)
    Z = s.transform(X)
    assert Z.dtype == np.float32
    _, mean, var = _ref(X)
    Zref = ((X.astype(np.longdouble) - mean) / np.sqrt(var)).astype(np.float64)
    assert np.max(np.abs(Z - Zref)) <= 1e-6 * 4          # float32 output rounding (|z| < 5)
    Zsk = SkScaler().fit(X).transform(X)
    assert np.max(np.abs(Z - Zref)) < np.max(np.abs(Zsk - Zref))
    back = s.inverse_transform(Z)
    assert np.max(np.abs(back.astype(np.float64) - X)) <= 2 * float(np.spacing(np.float32(1e4)))


def test_copy_false_in_place_and_constant_feature():
    X = _shifted((1000, 3), seed=9)
    X[:, 1] = 0.1                                      # constant feature: scale 1
    Xc = X.copy()
    s = StandardScaler(copy=False).fit(X)
    assert s.scale_[1] == 1.0 and s.var_[1] == 0.0
    Z = s.transform(X)
    assert Z is X
    np.testing.assert_allclose(X[:, 1], 0.0, atol=0)
    np.testing.assert_allclose(X, StandardScaler().fit(Xc).transform(Xc), rtol=0, atol=0)
    w = np.random.default_rng(1).random(1000)        # weighted mean of a constant is one rounding off
    assert StandardScaler().fit(Xc, sample_weight=w).scale_[1] == 1.0


def test_pandas_feature_names_and_set_output():
    pd = pytest.importorskip("pandas")
    X = _shifted((500, 3), seed=10)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    s = StandardScaler().set_output(transform="pandas").fit(df)
    out = s.transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b", "c"]
    assert list(s.get_feature_names_out()) == ["a", "b", "c"]
    np.testing.assert_allclose(out.to_numpy(), StandardScaler().fit_transform(X), rtol=0, atol=0)


def test_sparse():
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(200, 5, density=0.3, format="csr", random_state=0)
    with pytest.raises(ValueError, match="Cannot center sparse matrices"):
        StandardScaler().fit(X)
    s = StandardScaler(with_mean=False).fit(X)
    ref = SkScaler(with_mean=False).fit(X)
    np.testing.assert_allclose(s.scale_, ref.scale_, rtol=1e-12)
    np.testing.assert_allclose(s.transform(X).toarray(), ref.transform(X).toarray(), rtol=1e-12)


def test_dask_fit_one_pass_and_lazy_transform():
    da = pytest.importorskip("dask.array")
    X = _shifted((20000, 4), seed=11, loc=1e3, scale=1.0, dtype=np.float32)
    X[::9, 2] = np.nan
    reads = []
    x = da.from_array(X, chunks=(3000, 2)).map_blocks(lambda b: reads.append(1) or b, dtype=X.dtype,
                                                      meta=np.empty((0, 0), X.dtype))
    s = StandardScaler().fit(x)
    assert len(reads) == 7 * 2                                   # one read of each of the 7 x 2 chunks
    z = s.transform(x)
    assert len(reads) == 14                                      # transform is lazy
    n, mean, var = _ref(X)
    np.testing.assert_array_equal(s.n_samples_seen_, n.astype(np.int64))
    assert np.max(np.abs(s.mean_ - mean.astype(np.float64))) <= 2 * float(np.spacing(1e3))
    np.testing.assert_allclose(s.var_, var.astype(np.float64), rtol=1e-12)
    z = s.transform(x)
    assert isinstance(z, da.Array) and z.dtype == np.float32
    np.testing.assert_array_equal(z.compute(), StandardScaler().fit(X).transform(X))
    np.testing.assert_allclose(s.inverse_transform(z).compute(), X, rtol=1e-6)
    p = StandardScaler()
    for lo in range(0, 20000, 5000):
        p.partial_fit(x[lo:lo + 5000])
    np.testing.assert_allclose(p.mean_, s.mean_, rtol=1e-15)
    with pytest.raises(ValueError, match="features"):
        s.transform(x[:, :3])


def test_bench_pipeline_scenario(monkeypatch, tmp_path, capsys):
    """`python -m normfast bench --scenario pipeline` on small sizes: every peer runs, normfast's
    statistics meet the issue's accuracy, passes are counted."""
    import json
    pytest.importorskip("dask.array")
    from normfast import bench
    from normfast.bench import pipeline as bp
    monkeypatch.setattr(bp, "SKLEARN_SHAPE", (20000, 4))
    monkeypatch.setattr(bp, "DASK_SHAPE", (40000, 3))
    monkeypatch.setattr(bp, "DASK_CHUNK_ROWS", 10000)
    out = tmp_path / "r.json"
    assert bench.main(["--scenario", "pipeline", "--reps", "1", "--json", str(out)]) == 0
    assert "normfast partial_fit x10" in capsys.readouterr().out
    rows = {(r["case"], r["what"]): r for r in json.loads(out.read_text())["results"]}
    for key in (("sklearn", "normfast fit"), ("sklearn", "normfast partial_fit x10"), ("dask", "normfast fit")):
        assert rows[key]["mean_err_ulp"] <= 2 and rows[key]["var_rel_err"] <= 1e-8, key
    assert rows["sklearn", "normfast fit"]["passes"] == 1 and rows["sklearn", "sklearn fit"]["passes"] > 1
    assert rows["dask", "normfast fit"]["passes"] == 1                 # measured chunk reads
    assert rows["dask", "normfast fit+transform"]["passes"] == 2
    # z = (x - mean) / std with std = 1e-2 * mean / 1e8: 2 ulps of the mean are 2.3e-8 std
    assert rows["sklearn", "normfast transform"]["z_err_std"] <= 2 * np.spacing(1e6) / 1e-2
    assert rows["dask", "normfast fit+transform"]["z_err_std"] <= 1e-6
    assert ("dask", "dask-ml fit") in rows or pytest.importorskip("dask_ml") is None
