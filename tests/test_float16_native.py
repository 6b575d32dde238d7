"""float16 computed natively in the C kernels (issue 12, class 4): values are widened to float64
exactly and results rounded once to float16, with no float32 copy of x or of the output.

References are plain NumPy: float16 -> float64 is exact, and NumPy's float64 -> float16 cast is
correctly rounded (round to nearest even, directly from float64), so a kernel that evaluates a
formula in float64 and rounds once must match the same formula evaluated by NumPy bit for bit.
"""
import numpy as np
import pytest

import normfast as nf
from normfast._cpu import _moments, _normalize
from normfast._engine_cpu import CpuEngine

pytestmark = pytest.mark.skipif(not _normalize.HAVE_F16, reason="kernels built without _Float16")

F16 = np.float16


def _same_bits(a, b):
    """Bitwise equal float16 arrays (any NaN equals any NaN of the same sign)."""
    a, b = np.asarray(a, F16), np.asarray(b, F16)
    nan = np.isnan(a) & np.isnan(b) & (np.signbit(a) == np.signbit(b))
    return bool(np.all((a.view(np.uint16) == b.view(np.uint16)) | nan))


def _apply(x, m, p, q, D=1):
    """y = (x - m) * p + q through apply4d with one coefficient per channel (x of C*D values)."""
    C = x.size // D
    y = np.empty_like(x)
    _normalize.apply4d(x, None, y, 1, 1, C, D, m, p, q, None, 1)
    return y


def test_kernel_dtype_is_float16_where_the_kernels_have_it():
    assert CpuEngine.kernel_dtype(F16) == np.dtype(F16)
    assert CpuEngine.kernel_dtype(np.float32) == np.dtype(np.float32)


@pytest.mark.parametrize("D", [1, 64])     # column mode (lanes) and row mode (segments)
def test_every_float16_value_is_read_and_written_exactly(D):
    x = np.arange(1 << 16, dtype=np.uint16).view(F16)
    C = x.size // D
    m, p, q = np.zeros(C), np.ones(C), np.zeros(C)
    y = _apply(x, m, p, q, D)
    with np.errstate(invalid="ignore"):
        ref = ((x.astype(np.float64) - 0.0) * 1.0 + 0.0).astype(F16)
    assert _same_bits(y, ref)


def test_results_are_rounded_once_from_float64():
    """y = (0 - 0) * 1 + q stores q itself: every rounding case of float64 -> float16 (ties to even
    at every exponent, values just off a tie, subnormals, the overflow threshold 65520, inf, NaN)."""
    rng = np.random.default_rng(0)
    h = np.arange(0, 0x7c00, dtype=np.uint16).view(F16).astype(np.float64)     # finite halves >= 0
    mid = (h[:-1] + h[1:]) / 2                                                 # exact ties
    off = np.concatenate([mid, np.nextafter(mid, 0), np.nextafter(mid, np.inf), mid + mid * 2.0**-40])
    special = np.array([65504.0, 65519.99, 65520.0, 7e4, np.inf, np.nan, 2.0**-25, 2.0**-25 * 1.0000001,
                        3 * 2.0**-26, 0.0, -0.0, 1e-300, 1e300])
    wide = rng.standard_normal(20000) * np.exp2(rng.integers(-30, 18, 20000))
    q = np.concatenate([off, -off, special, -special, wide])
    x = np.zeros(q.size, F16)
    y = _apply(x, np.zeros(q.size), np.ones(q.size), q)
    with np.errstate(over="ignore"):
        ref = q.astype(F16)                 # + 0.0 does not change q (ref: (0 - 0) * 1 + q)
    ref = np.where(q == 0, np.float16(0), ref).astype(F16)      # (0 - 0) * 1 + (-0.0) is +0.0
    assert _same_bits(y, ref)


def test_moments_of_float16_equal_those_of_its_float32_copy():
    """The widening is exact, so the float64 sums are the same numbers in the same order."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((37, 3, 50)) * 100 + 5).astype(F16)
    for dims in [(37, 1, 3, 50), (1, 37, 3, 50), (37, 3, 50, 1), (1, 37 * 3, 50, 1)]:
        o16, o32 = np.empty((dims[0] * dims[2], 3)), np.empty((dims[0] * dims[2], 3))
        _moments.reduce4d(x, None, None, *dims, 0, o16, 1)
        _moments.reduce4d(x.astype(np.float32), None, None, *dims, 0, o32, 1)
        assert np.array_equal(o16, o32)


def _ulps(a, ref):
    """Distance in float16 units in the last place of the reference."""
    ref = ref.astype(np.float64)
    ulp = np.spacing(np.abs(ref).astype(F16)).astype(np.float64)
    return np.abs(a.astype(np.float64) - ref) / ulp


CASES = {
    "layer_norm": lambda x, w: nf.layer_norm(x.reshape(-1, 64), 64, w.repeat(4), w.repeat(4), return_stats=True),
    "rms_norm": lambda x, w: nf.rms_norm(x.reshape(-1, 64), 64, w.repeat(4), eps=1e-5, return_stats=True),
    "group_norm": lambda x, w: nf.group_norm(x, 4, w, w, return_stats=True),
    "instance_norm": lambda x, w: nf.instance_norm(x, weight=w, bias=w, return_stats=True),
    "instance_norm_eval": lambda x, w: (nf.instance_norm(x, np.full(16, 0.5), np.full(16, 2.0), w, w,
                                                         use_input_stats=False),),
    "batch_norm": lambda x, w: nf.batch_norm(x, None, None, w, w, training=True, return_stats=True),
    "batch_norm_channels_last": lambda x, w: nf.batch_norm(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), None, None,
                                                           w, w, training=True, channel_axis=-1, return_stats=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operators_match_the_float32_copy_path(case):
    """Statistics equal the float32-copy path's (exact widening); outputs are within one float16
    ulp of it (it rounded twice: float64 -> float32 -> float16; native rounds once) and at least as
    close to the float64 reference."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 16, 3, 4)) * 3 + 1).astype(F16)     # 12 spatial values: column mode
    w = (rng.standard_normal(16) + 1).astype(F16)
    r16 = CASES[case](x, w)
    r32 = CASES[case](x.astype(np.float32), w.astype(np.float32))
    r64 = CASES[case](x.astype(np.float64), w.astype(np.float64))
    assert r16[0].dtype == F16
    for s16, s32 in zip(r16[1:], r32[1:]):
        assert np.array_equal(s16, s32)
    y16, y32, y64 = r16[0], r32[0].astype(F16), r64[0]
    assert _ulps(y16, y32).max() <= 1
    assert _ulps(y16, y64).max() <= 0.5 + 1e-3
    assert np.abs(y16 - y64).max() <= np.abs(y32 - y64).max()


@pytest.mark.parametrize("case", ["layer_norm", "instance_norm", "group_norm", "batch_norm"])
def test_backward_in_float16_is_the_float64_result_rounded_once(case):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 3, 5)).astype(F16)      # 15 spatial values: column-mode dx
    g = rng.standard_normal(x.shape).astype(F16)
    w = (rng.standard_normal(8) + 1).astype(F16)
    x2 = x.reshape(-1, 24)
    w2 = np.resize(w, 24)

    def run(dt):
        xd, gd, wd = x.astype(dt), g.astype(dt), w.astype(dt)
        if case == "layer_norm":
            _, m, r = nf.layer_norm(xd.reshape(-1, 24), 24, w2.astype(dt), return_stats=True)
            return nf.layer_norm_backward(gd.reshape(-1, 24), xd.reshape(-1, 24), m, r, 24, w2.astype(dt))
        if case == "instance_norm":
            _, m, r = nf.instance_norm(xd, weight=wd, return_stats=True)
            return nf.instance_norm_backward(gd, xd, m, r, wd)
        if case == "group_norm":
            _, m, r = nf.group_norm(xd, 2, wd, return_stats=True)
            return nf.group_norm_backward(gd, xd, m, r, 2, wd)
        _, m, r = nf.batch_norm(xd, None, None, wd, training=True, return_stats=True)
        return nf.batch_norm_backward(gd, xd, m, r, wd)

    dx16, dx64 = run(F16)[0], run(np.float64)[0]
    assert dx16.dtype == F16 and x2.shape[1] == 24
    # the float16 statistics and sums are those of float64 on the same values up to float64
    # rounding, so dx is float64's dx rounded once (allowing for ties broken by that rounding)
    assert _ulps(dx16, dx64).max() <= 0.5 + 1e-6
