"""normfast.set_float32_precision("high"): float32 rows normalized at float32 width, within the
bound proven in src_c/apply_f32.h, element by element, against a long-double reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normfast as nf

U = 2.0 ** -24                      # float32 unit roundoff
LD = np.longdouble


@pytest.fixture(autouse=True)
def high():
    nf.set_float32_precision("high")
    yield
    nf.set_float32_precision("highest")


def reference(x, w, b, eps, rms):
    """(T, y) in long double: T = (x - mean) * rstd * w, y = T + b."""
    xl = x.astype(LD)
    mean = np.zeros(x.shape[:-1] + (1,), LD) if rms else xl.mean(axis=-1, keepdims=True)
    var = (xl * xl).mean(axis=-1, keepdims=True) if rms else ((xl - mean) ** 2).mean(axis=-1, keepdims=True)
    t = (xl - mean) / np.sqrt(var + LD(eps))
    if w is not None:
        t = t * w.astype(LD)
    return t, t + (b.astype(LD) if b is not None else 0)


def assert_within_bound(y, x, w, b, eps, rms):
    t, ref = reference(x, w, b, eps, rms)
    err = np.abs(y.astype(LD) - ref)
    # the proven bound, plus the float64 statistics' own error (as the default mode's tests allow)
    bound = 5.01 * U * np.abs(t) + 1.01 * U * np.abs(ref) + 1e-9
    assert (err <= bound).all(), f"max err / bound {float((err / bound).max()):.3f}"


def data(rng, shape, kind):
    if kind == "offset":                       # the contract's case: mean 1e4, std 0.1
        return (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "scales":                       # values spread over many binades
        return (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, shape))).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(M=st.integers(1, 9), N=st.integers(1, 300), kind=st.sampled_from(["normal", "offset", "scales"]),
       affine=st.sampled_from(["none", "weight", "both", "float64"]), rms=st.booleans(), seed=st.integers(0, 99))
def test_within_the_proven_bound(M, N, kind, affine, rms, seed):
    rng = np.random.default_rng(seed)
    x = data(rng, (M, N), kind)
    w = (rng.standard_normal(N) * 2).astype(np.float32) if affine != "none" else None
    b = rng.standard_normal(N).astype(np.float32) if affine in ("both", "float64") and not rms else None
    if affine == "float64":                    # float64 parameters: the general path
        w, b = w.astype(np.float64), None if b is None else b.astype(np.float64)
    y = nf.rms_norm(x, N, w, 1e-5) if rms else nf.layer_norm(x, N, w, b, 1e-5)
    assert y.dtype == np.float32
    assert_within_bound(y, x, w, b, 1e-5, rms)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_contract_at_mean_1e4_std_0_1(rms):
    x = data(np.random.default_rng(0), (512, 768), "offset")
    y = nf.rms_norm(x, 768, None, 1e-5) if rms else nf.layer_norm(x, 768)
    _, ref = reference(x, None, None, 1e-5, rms)
    assert float(np.abs(y.astype(LD) - ref).max()) <= 2e-6
    assert_within_bound(y, x, None, None, 1e-5, rms)


def test_fast_and_general_paths_agree_bitwise():
    rng = np.random.default_rng(1)
    x = data(rng, (33, 200), "normal")
    w, b = rng.standard_normal(200).astype(np.float32), rng.standard_normal(200).astype(np.float32)
    fast = nf.layer_norm(x, 200, w, b)
    general = nf.layer_norm(x, (200,), w.astype(np.float64), b.astype(np.float64))   # float64 copies
    strided = nf.layer_norm(x, 200, np.repeat(w, 2)[::2], b)                        # strided weight
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_array_equal(fast, strided)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_thread_count_invariance(rms):
    x = data(np.random.default_rng(2), (256, 1024), "offset")
    w = np.random.default_rng(3).standard_normal(1024).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        nf.set_num_threads(n)
        outs.append(nf.rms_norm(x, 1024, w) if rms else nf.layer_norm(x, 1024, w, w))
    nf.set_num_threads(None)
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)


def test_other_dtypes_and_the_statistics_do_not_change():
    rng = np.random.default_rng(4)
    x32 = data(rng, (16, 100), "offset")
    high = [nf.layer_norm(x32.astype(dt), 100, return_stats=True) for dt in (np.float64, np.float16)]
    _, m_high, r_high = nf.layer_norm(x32, 100, return_stats=True)
    nf.set_float32_precision("highest")
    highest = [nf.layer_norm(x32.astype(dt), 100, return_stats=True) for dt in (np.float64, np.float16)]
    _, m, r = nf.layer_norm(x32, 100, return_stats=True)
    for a, c in zip(high, highest):
        for u, v in zip(a, c):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(m_high, m)
    np.testing.assert_array_equal(r_high, r)


def test_highest_is_the_default_and_restores_float64_results():
    x = data(np.random.default_rng(5), (64, 768), "offset")
    y_high = nf.layer_norm(x, 768)
    nf.set_float32_precision("highest")
    assert nf.get_float32_precision() == "highest"
    y = nf.layer_norm(x, 768)
    _, ref = reference(x, None, None, 1e-5, False)
    # the default: one rounding of a float64 evaluation (within one float32 ulp of the reference) ...
    assert (np.abs(y.astype(LD) - ref) <= np.spacing(np.abs(ref).astype(np.float32)).astype(LD) + 1e-9).all()
    # ... which the float32-width evaluation is not, everywhere: the setting changes the kernel
    assert not np.array_equal(y, y_high)


@pytest.mark.parametrize("bad", ["medium", None, 1, "HIGH"])
def test_bad_precision(bad):
    with pytest.raises(ValueError, match="set_float32_precision: precision"):
        nf.set_float32_precision(bad)
    assert nf.get_float32_precision() == "high"
