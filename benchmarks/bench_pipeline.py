"""StandardScaler pipelines (issue 14): normfast.sklearn against scikit-learn, dask-ml and plain Dask.

    pytest benchmarks -k pipeline --benchmark-columns=median,rounds

Same inputs as ``python -m normfast bench --scenario pipeline`` (normfast.bench.pipeline), at a
tenth of its rows so that the suite stays quick; ``extra_info`` holds the accuracy against the
exact reference (mean error in ulps, variance relative error).  Every peer is skipped when its
package is not installed.
"""
import numpy as np
import pytest

from normfast.bench import pipeline as bp

SK_SHAPE = (bp.SKLEARN_SHAPE[0] // 10, bp.SKLEARN_SHAPE[1])
DASK_SHAPE, DASK_CHUNK = (bp.DASK_SHAPE[0] // 10, bp.DASK_SHAPE[1]), bp.DASK_CHUNK_ROWS // 10


@pytest.fixture(scope="module")
def sk_data():
    X = 1e6 + 1e-2 * np.random.default_rng(0).standard_normal(SK_SHAPE)
    return X, bp._reference(X)


def _scaler(peer):
    if peer == "normfast":
        pytest.importorskip("sklearn")
        from normfast.sklearn import StandardScaler
        return StandardScaler
    if peer == "sklearn":
        return pytest.importorskip("sklearn.preprocessing").StandardScaler
    return pytest.importorskip("dask_ml.preprocessing").StandardScaler


@pytest.mark.parametrize("peer", ["normfast", "sklearn"])
@pytest.mark.parametrize("case", ["fit", "partial_fit x10"])
def test_sklearn_fit(benchmark, sk_data, case, peer):
    X, (rm, rv) = sk_data
    cls = _scaler(peer)
    parts = np.array_split(X, 10)

    def run():
        if case == "fit":
            return cls().fit(X)
        s = cls()
        for p in parts:
            s.partial_fit(p)
        return s

    s = benchmark(run)
    ulp, vrel = bp._errors(s.mean_, s.var_, rm, rv)
    benchmark.extra_info.update(peer=peer, case=case, shape=list(SK_SHAPE), mean_err_ulp=ulp, var_rel_err=vrel)
    if peer == "normfast":
        assert ulp <= 2 and vrel <= 1e-9


@pytest.fixture(scope="module")
def dask_data():
    da = pytest.importorskip("dask.array")
    X = (1000.0 + np.random.default_rng(1).standard_normal(DASK_SHAPE, dtype=np.float32)).astype(np.float32)
    return da.from_array(X, chunks=(DASK_CHUNK, DASK_SHAPE[1])), bp._reference(X)


@pytest.mark.parametrize("peer", ["normfast", "dask-ml", "plain dask"])
def test_dask_fit_transform(benchmark, dask_data, peer):
    import dask
    import normfast
    x, (rm, rv) = dask_data
    if peer == "plain dask":
        def run():
            m, v = dask.compute(x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64))
            return m, v, ((x - m.astype(np.float32)) / np.sqrt(v).astype(np.float32)).sum(0, dtype=np.float64).compute()
    else:
        cls = _scaler(peer)

        def run():
            s = cls().fit(x)
            return s.mean_, s.var_, s.transform(x).sum(0, dtype=np.float64).compute()
    saved = normfast.get_num_threads()
    normfast.set_num_threads(1)                         # 2 Dask workers give the parallelism
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            m, v, _ = benchmark(run)
    finally:
        normfast.set_num_threads(saved)
    ulp, vrel = bp._errors(m, v, rm, rv)
    benchmark.extra_info.update(peer=peer, case="dask fit+transform", shape=list(DASK_SHAPE), mean_err_ulp=ulp,
                                var_rel_err=vrel)
    if peer == "normfast":
        assert ulp <= 2 and vrel <= 1e-12
