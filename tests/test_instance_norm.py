"""instance_norm forward: reference, torch, running statistics, layouts, out=, accuracy,
edge cases, bad inputs; instance_norm_backward (class TestBackward)."""
import numpy as np
import pytest
from _helpers import (
    AFFINES,
    C,
    CA_IDS,
    CAS,
    DTYPE_IDS,
    DTYPES,
    N,
    OUT_MODES,
    SPATIAL,
    BackwardTests,
    assert_close_ref,
    assert_offset_accuracy,
    assert_out_alignments,
    assert_stats_close,
    call_with_out,
    channel_shape,
    make_params,
    make_x,
    ref_batch_norm_eval,
    ref_instance_norm,
    unusual_copies,
)

import normfast

RANKS = (1, 2, 3)


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(rng, dtype, rank, ca, affine, out_mode):
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    w, b = make_params(rng, (C,), dtype, affine)
    ref = ref_instance_norm(x, w, b, 1e-5, ca)[0]
    y = call_with_out(lambda a, **kw: normfast.instance_norm(a, None, None, w, b, True, 0.1, 1e-5, channel_axis=ca,
                                                             **kw),
                      x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate_strided"])
@pytest.mark.parametrize("affine", ["none", "both"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_with_running_stats_matches_reference(rng, dtype, rank, ca, affine, out_mode):
    """Tracking running statistics takes another code path: same output."""
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    w, b = make_params(rng, (C,), dtype, affine)
    ref = ref_instance_norm(x, w, b, 1e-5, ca)[0]
    rm, rv = np.zeros(C), np.ones(C)
    y = call_with_out(lambda a, **kw: normfast.instance_norm(a, rm, rv, w, b, True, 0.1, 1e-5, channel_axis=ca, **kw),
                      x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate"])
@pytest.mark.parametrize("affine", ["none", "both"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", (0,) + RANKS, ids=[f"sp{r}" for r in (0,) + RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_running_stats_mode_matches_reference(rng, dtype, rank, ca, affine, out_mode):
    """use_input_stats=False normalizes with the running statistics (like batch_norm eval)."""
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    w, b = make_params(rng, (C,), dtype, affine)
    rm, rv = rng.normal(0, 1, C), rng.uniform(0.5, 2, C)
    rm0, rv0 = rm.copy(), rv.copy()
    ref = ref_batch_norm_eval(x, rm, rv, w, b, 1e-5, ca)
    y = call_with_out(lambda a, **kw: normfast.instance_norm(a, rm, rv, w, b, False, channel_axis=ca, **kw),
                      x, out_mode)
    assert_close_ref(y, ref)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("out_mode", [None, "inplace", "separate"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", [1, 2], ids=["sp1", "sp2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_input(rng, dtype, rank, ca, layout, out_mode):
    x = make_x(rng, channel_shape(4, C, SPATIAL[rank], ca), dtype, layout)
    assert not x.flags.c_contiguous
    w, b = make_params(rng, (C,), dtype, "both")
    ref = ref_instance_norm(x, w, b, 1e-5, ca)[0]
    y = call_with_out(lambda a, **kw: normfast.instance_norm(a, None, None, w, b, channel_axis=ca, **kw), x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_return_stats(rng, dtype, rank, ca, track):
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype, loc=-4.0)
    rm, rv = (np.zeros(C), np.ones(C)) if track else (None, None)
    y, mean, rstd = normfast.instance_norm(x, rm, rv, eps=1e-3, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_instance_norm(x, eps=1e-3, channel_axis=ca)
    assert mean.shape == (N, C) and rstd.shape == (N, C)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean, "mean")
    assert_stats_close(rstd, rrstd, "rstd")


# ---------------------------------------------------------------- running statistics

@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_running_update_reference(rng, ca, momentum):
    """running <- (1 - m) * running + m * (batch average of per-instance mean / unbiased var)."""
    rm, rv = rng.normal(0, 1, C), rng.uniform(0.5, 2, C)
    em, ev = rm.copy(), rv.copy()
    for _ in range(3):
        x = make_x(rng, channel_shape(N, C, (4, 5), ca), np.float64, loc=1.0)
        _, mean, _, var_u = ref_instance_norm(x, channel_axis=ca)
        normfast.instance_norm(x, rm, rv, momentum=momentum, channel_axis=ca)
        em = (1 - momentum) * em + momentum * mean.mean(axis=0)
        ev = (1 - momentum) * ev + momentum * var_u.mean(axis=0)
        np.testing.assert_allclose(rm, em, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, ev, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matches_torch_running_update(rng, dtype, rank, ca, momentum):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    w, b = make_params(rng, (C,), dtype, "both")
    rm, rv = rng.normal(0, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    for _ in range(3):
        x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype, loc=0.5)
        tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, ca, 1)))
        ty = F.instance_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), True, momentum, 1e-5)
        y = normfast.instance_norm(x, rm, rv, w, b, True, momentum, 1e-5, channel_axis=ca)
        np.testing.assert_allclose(y, np.moveaxis(ty.numpy(), 1, ca), **tol)
        np.testing.assert_allclose(rm, trm.numpy(), **tol)
        np.testing.assert_allclose(rv, trv.numpy(), **tol)
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, ca, 1)))
    ty = F.instance_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), False, momentum, 1e-5)
    y = normfast.instance_norm(x, rm, rv, w, b, False, momentum, 1e-5, channel_axis=ca)
    np.testing.assert_allclose(y, np.moveaxis(ty.numpy(), 1, ca), **tol)


@pytest.mark.parametrize("affine", ["none", "both"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matches_torch(rng, dtype, rank, ca, affine):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype, loc=2.0)
    w, b = make_params(rng, (C,), dtype, affine)
    tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, ca, 1)))
    ty = F.instance_norm(tx, None, None, None if w is None else torch.from_numpy(w),
                         None if b is None else torch.from_numpy(b), True, 0.1, 1e-5)
    y = normfast.instance_norm(x, None, None, w, b, channel_axis=ca)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y, np.moveaxis(ty.numpy(), 1, ca), **tol)


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_accuracy_large_offset_float32(rng, ca, track):
    """4096 float32 values per (n, c) around 1e4 (std 0.1): max abs error <= 2e-6."""
    Cc = 4
    shape = channel_shape(2, Cc, (64, 64), ca)
    offs = 1e4 + 23.0 * np.arange(Cc)
    x = rng.normal(0, 0.1, shape) + offs.reshape([-1 if i == ca % 4 else 1 for i in range(4)])
    x = x.astype(np.float32)
    rm, rv = (np.zeros(Cc), np.ones(Cc)) if track else (None, None)
    y, mean, rstd = normfast.instance_norm(x, rm, rv, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_instance_norm(x, channel_axis=ca)
    assert_offset_accuracy(y, ref, mean, rmean, rstd, rrstd)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_instances_exact(rng, dtype, ca, track):
    x = make_x(rng, channel_shape(N, C, (5, 7), ca), dtype)
    xc = np.moveaxis(x, ca, 1)
    xc[0, 1] = 1e4 + 0.1
    xc[2, 5] = -0.3
    xc[1, 0] = 0.0
    idx = [(0, 1), (2, 5), (1, 0)]
    rm, rv = (np.zeros(C), np.ones(C)) if track else (None, None)
    y = np.moveaxis(normfast.instance_norm(x, rm, rv, channel_axis=ca), ca, 1)
    for n, c in idx:
        assert np.all(y[n, c] == 0)
    w, b = make_params(rng, (C,), dtype, "both")
    y, mean, rstd = normfast.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
    y = np.moveaxis(y, ca, 1)
    for n, c in idx:
        assert np.all(y[n, c] == b[c])
        assert rstd[n, c] == 1 / np.sqrt(1e-5)
    assert mean[0, 1] == np.float64(dtype(1e4 + 0.1))


@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_instance_isolated(rng, dtype, ca):
    x = make_x(rng, channel_shape(N, C, (4, 5), ca), dtype)
    np.moveaxis(x, ca, 1)[1, 3, 2, 2] = np.nan
    w, b = make_params(rng, (C,), dtype, "both")
    y, mean, rstd = normfast.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True)
    yc = np.moveaxis(y, ca, 1)
    assert np.isnan(yc[1, 3]).all() and np.isnan(mean[1, 3]) and np.isnan(rstd[1, 3])
    ref, rmean, rrstd, _ = ref_instance_norm(x, w, b, channel_axis=ca)
    ok = np.ones(yc.shape, bool)
    ok[1, 3] = False
    assert_close_ref(yc[ok], np.moveaxis(ref, ca, 1)[ok])
    okm = np.ones((N, C), bool)
    okm[1, 3] = False
    assert_stats_close(mean[okm], rmean[okm])


@pytest.mark.parametrize("L", [2, 3, 31, 33, 1023, 1025, 8193, 65537])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_odd_sizes(rng, dtype, ca, L):
    x = make_x(rng, channel_shape(2, 2, (L,), ca), dtype, loc=3.0)
    w, b = make_params(rng, (2,), dtype, "both")
    y, mean, rstd = normfast.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_instance_norm(x, w, b, channel_axis=ca)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("shape,ca", [((2, C), 1), ((2, C, 1), 1), ((2, C, 1, 1), 1), ((2, 1, 1, C), -1),
                                      ((2, 1, C), -1), ((2, C), -1)])
def test_one_spatial_element_raises(shape, ca, track):
    rm, rv = (np.zeros(C), np.ones(C)) if track else (None, None)
    with pytest.raises(ValueError, match="spatial"):
        normfast.instance_norm(np.ones(shape, np.float32), rm, rv, channel_axis=ca)
    if track:
        np.testing.assert_array_equal(rm, 0)
        np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize("shape,ca", [((1, C, 2), 1), ((1, 1, 2, C), -1), ((2, 1, 3, 1), 1)])
def test_size_one_dims(rng, shape, ca):
    x = make_x(rng, shape, np.float32)
    y, mean, rstd = normfast.instance_norm(x, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_instance_norm(x, channel_axis=ca)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,ca", [((0, C, 4), 1), ((0, C, 4, 4), 1), ((0, 4, 4, C), -1)])
def test_empty_batch(dtype, shape, ca):
    x = np.empty(shape, dtype=dtype)
    y, mean, rstd = normfast.instance_norm(x, channel_axis=ca, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == (0, C) and rstd.shape == (0, C)
    rm, rv = np.zeros(C), np.ones(C)
    y = normfast.instance_norm(x, rm, rv, use_input_stats=False, channel_axis=ca)
    assert y.shape == shape


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(24).reshape(2, 6, 2), np.ones((2, 6, 2), bool),
                                 np.ones((2, 6, 2), np.complex128)], ids=["int", "bool", "complex"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.instance_norm(bad)


def test_bad_arguments(rng):
    x = make_x(rng, (2, 6, 4), np.float32)
    rm, rv = np.zeros(6), np.ones(6)
    with pytest.raises(ValueError, match="weight"):
        normfast.instance_norm(x, weight=np.ones(4))
    with pytest.raises(ValueError, match="bias"):
        normfast.instance_norm(x, bias=np.ones(4), channel_axis=1)
    with pytest.raises(ValueError, match="running_mean"):
        normfast.instance_norm(x, np.zeros(4), rv)
    with pytest.raises(ValueError, match="running_var"):
        normfast.instance_norm(x, rm, np.ones(2))
    for m in (1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            normfast.instance_norm(x, rm, rv, momentum=m)
    for e in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            normfast.instance_norm(x, eps=e)
    with pytest.raises(ValueError, match="running"):
        normfast.instance_norm(x, use_input_stats=False)
    with pytest.raises(ValueError, match="channel_axis"):
        normfast.instance_norm(x, channel_axis=0)
    with pytest.raises(ValueError):
        normfast.instance_norm(np.ones(6, np.float32))
    ro_m = np.zeros(6)
    ro_m.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean"):
        normfast.instance_norm(x, ro_m, rv)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.instance_norm(x, out=ro)
    with pytest.raises(TypeError, match="out"):
        normfast.instance_norm(x, out=np.empty(x.shape, np.float64))
    buf = make_x(rng, (2, 6, 8), np.float32)
    with pytest.raises(ValueError, match="out"):
        normfast.instance_norm(buf[..., :4], out=buf[..., 2:6])


@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("shape,ca", [((2, C, 0), 1), ((2, 0, C), -1), ((2, C, 3, 0), 1)])
def test_empty_spatial(shape, ca, track):
    """Zero spatial positions: an empty output (as torch), not the one-element error."""
    x = np.empty(shape, np.float32)
    rm, rv = (np.zeros(C), np.ones(C)) if track else (None, None)
    y = normfast.instance_norm(x, rm, rv, channel_axis=ca)
    assert y.shape == shape


@pytest.mark.parametrize("Cc", [40, 9000])
def test_many_channels_last(rng, Cc):
    x = make_x(rng, (2, 3, 4, Cc), np.float32, loc=5.0)
    y, mean, rstd = normfast.instance_norm(x, channel_axis=-1, return_stats=True)
    ref, rmean, rrstd, _ = ref_instance_norm(x, channel_axis=-1)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype, ca, track):
    x = make_x(rng, channel_shape(3, C, (5, 7), ca), dtype)
    w, b = make_params(rng, (C,), dtype, "both")
    ref, rmean, rrstd, _ = ref_instance_norm(x, w, b, channel_axis=ca)
    for xx in unusual_copies(x):
        rm, rv = (np.zeros(C), np.ones(C)) if track else (None, None)
        y, mean, rstd = normfast.instance_norm(xx, rm, rv, w, b, channel_axis=ca, return_stats=True)
        assert y.dtype == xx.dtype
        assert_close_ref(y, ref)
        assert_stats_close(mean, rmean)
        assert normfast.instance_norm(xx, None, None, w, b, channel_axis=ca, out=xx) is xx
        assert_close_ref(xx, ref)


@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_large_outputs_any_alignment(ca):
    """Outputs over 4 MiB (large-output store paths), odd spatial size, into misaligned
    (by one element / one byte) and in-place buffers."""
    rng = np.random.default_rng(11)
    x0 = make_x(rng, channel_shape(4, 32, (127, 65), ca), np.float32, loc=-40.0)
    assert x0.nbytes >= 4 << 20
    w, b = make_params(rng, (32,), np.float32, "both")
    ref = ref_instance_norm(x0, w, b, channel_axis=ca)[0]
    assert_out_alignments(lambda a, **kw: normfast.instance_norm(a, None, None, w, b, channel_axis=ca, **kw),
                          x0, ref)


# ---------------------------------------------------------------- backward

class TestBackward(BackwardTests):
    """instance_norm_backward: the backward tests the norms share (tests/_helpers.py) on
    instance_norm's cases."""
    KINDS = ("instance",)
