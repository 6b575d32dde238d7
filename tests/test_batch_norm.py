"""batch_norm forward: training / eval, running statistics (torch rules), layouts, out=,
accuracy, edge cases, bad inputs; batch_norm_backward (class TestBackward)."""
import numpy as np
import pytest
from _helpers import (
    AFFINES,
    C,
    CA_IDS,
    CAS,
    DTYPE_IDS,
    DTYPES,
    EPS,
    N,
    OUT_MODES,
    SPATIAL,
    TORCH_GRAD_TOL,
    BackwardCase,
    BackwardTests,
    assert_close_ref,
    assert_grads_close,
    assert_offset_accuracy,
    assert_out_alignments,
    assert_stats_close,
    call_with_out,
    channel_shape,
    channels_last,
    make_params,
    make_x,
    ref_batch_norm_eval,
    ref_batch_norm_train,
    unusual_copies,
)

import normfast

RANKS = (0, 1, 2, 3)


def _running(rng, dtype=np.float64):
    return rng.normal(0.3, 1.0, C).astype(dtype), rng.uniform(0.5, 3.0, C).astype(dtype)


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_train_matches_reference(rng, dtype, rank, ca, affine, out_mode):
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    w, b = make_params(rng, (C,), dtype, affine)
    ref, rmean, rrstd, _ = ref_batch_norm_train(x, w, b, 1e-5, ca)
    y = call_with_out(lambda a, **kw: normfast.batch_norm(a, None, None, w, b, True, 0.1, 1e-5, channel_axis=ca, **kw),
                      x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("out_mode", OUT_MODES)
@pytest.mark.parametrize("affine", ["none", "both"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_eval_matches_reference(rng, dtype, rank, ca, affine, out_mode):
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype)
    w, b = make_params(rng, (C,), dtype, affine)
    rm, rv = _running(rng)
    rm0, rv0 = rm.copy(), rv.copy()
    ref = ref_batch_norm_eval(x, rm, rv, w, b, 1e-5, ca)
    y = call_with_out(lambda a, **kw: normfast.batch_norm(a, rm, rv, w, b, False, channel_axis=ca, **kw), x, out_mode)
    assert_close_ref(y, ref)
    np.testing.assert_array_equal(rm, rm0)          # eval never touches the running stats
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("out_mode", [None, "inplace", "separate"])
@pytest.mark.parametrize("layout", ["strided", "transposed", "reversed"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", [1, 2], ids=["sp1", "sp2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noncontiguous_input(rng, dtype, rank, ca, layout, out_mode, training):
    x = make_x(rng, channel_shape(4, C, SPATIAL[rank], ca), dtype, layout)
    assert not x.flags.c_contiguous
    w, b = make_params(rng, (C,), dtype, "both")
    rm, rv = _running(rng)
    if training:
        ref = ref_batch_norm_train(x, w, b, 1e-5, ca)[0]
    else:
        ref = ref_batch_norm_eval(x, rm, rv, w, b, 1e-5, ca)
    y = call_with_out(lambda a, **kw: normfast.batch_norm(a, rm.copy(), rv.copy(), w, b, training, channel_axis=ca,
                                                          **kw),
                      x, out_mode)
    assert_close_ref(y, ref)


@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("rank", RANKS, ids=[f"sp{r}" for r in RANKS])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_return_stats(rng, dtype, rank, ca):
    x = make_x(rng, channel_shape(N, C, SPATIAL[rank], ca), dtype, loc=4.0)
    y, mean, rstd = normfast.batch_norm(x, training=True, eps=1e-3, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_batch_norm_train(x, eps=1e-3, channel_axis=ca)
    assert mean.shape == (C,) and rstd.shape == (C,)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean, "mean")
    assert_stats_close(rstd, rrstd, "rstd")
    rm, rv = _running(rng, np.float32)
    y, mean, rstd = normfast.batch_norm(x, rm, rv, training=False, eps=1e-3, channel_axis=ca, return_stats=True)
    assert_stats_close(mean, rm.astype(np.float64), "eval mean")
    assert_stats_close(rstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-3), "eval rstd")


# ---------------------------------------------------------------- running statistics

@pytest.mark.parametrize("buf_dtype", [np.float64, np.float32], ids=["buf64", "buf32"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.0, 1.0])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_running_update_reference(rng, ca, momentum, buf_dtype):
    rm, rv = _running(rng, buf_dtype)
    em, ev = rm.astype(np.float64), rv.astype(np.float64)
    for _ in range(3):
        x = make_x(rng, channel_shape(5, C, (4, 3), ca), np.float64, loc=2.0)
        _, mean, _, var_u = ref_batch_norm_train(x, channel_axis=ca)
        normfast.batch_norm(x, rm, rv, training=True, momentum=momentum, channel_axis=ca)
        em = (1 - momentum) * em + momentum * mean
        ev = (1 - momentum) * ev + momentum * var_u
        assert rm.dtype == buf_dtype and rv.dtype == buf_dtype
        rtol = 1e-12 if buf_dtype == np.float64 else 2e-7
        np.testing.assert_allclose(rm, em, rtol=rtol, atol=1e-13)
        np.testing.assert_allclose(rv, ev, rtol=rtol, atol=1e-13)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_running_update_matches_torch(rng, dtype, ca, momentum):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    rm, rv = _running(rng, dtype)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    w, b = make_params(rng, (C,), dtype, "both")
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for _ in range(3):
        x = make_x(rng, channel_shape(4, C, (5, 3), ca), dtype, loc=1.5)
        tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, ca, 1)))
        ty = F.batch_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), True, momentum, 1e-5)
        y = normfast.batch_norm(x, rm, rv, w, b, True, momentum, 1e-5, channel_axis=ca)
        np.testing.assert_allclose(y, np.moveaxis(ty.numpy(), 1, ca), **tol)
        np.testing.assert_allclose(rm, trm.numpy(), **tol)
        np.testing.assert_allclose(rv, trv.numpy(), **tol)
    # eval with the accumulated statistics
    x = make_x(rng, channel_shape(4, C, (5, 3), ca), dtype)
    tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, ca, 1)))
    ty = F.batch_norm(tx, trm, trv, torch.from_numpy(w), torch.from_numpy(b), False, momentum, 1e-5)
    y = normfast.batch_norm(x, rm, rv, w, b, False, momentum, 1e-5, channel_axis=ca)
    np.testing.assert_allclose(y, np.moveaxis(ty.numpy(), 1, ca), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cumulative_average_matches_torch_module(rng, dtype):
    """momentum=None: cumulative moving average with num_batches_tracked, as BatchNorm2d(momentum=None)."""
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm2d(C, momentum=None, eps=1e-5, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.3, C)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 1, C)))
    bn.train()
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    nbt = np.zeros(1, np.int64)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for step in range(3):
        x = make_x(rng, (2 + step, C, 4, 5), dtype, loc=step - 1.0, scale=1.0 + step)
        with torch.no_grad():
            ty = bn(torch.from_numpy(x)).numpy()
        y = normfast.batch_norm(x, rm, rv, w, b, True, None, 1e-5, num_batches_tracked=nbt)
        assert nbt.dtype == np.int64 and nbt.shape == (1,)
        assert int(nbt[0]) == step + 1 == int(bn.num_batches_tracked)
        np.testing.assert_allclose(y, ty, **tol)
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), **tol)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), **tol)
    # eval: no increment, uses the running statistics
    bn.eval()
    x = make_x(rng, (3, C, 4, 5), dtype)
    with torch.no_grad():
        ty = bn(torch.from_numpy(x)).numpy()
    y = normfast.batch_norm(x, rm, rv, w, b, False, None, 1e-5, num_batches_tracked=nbt)
    assert int(nbt[0]) == 3
    np.testing.assert_allclose(y, ty, **tol)


def test_cumulative_average_reference(rng):
    """Without torch: after k calls with momentum=None the running mean is the plain average
    of the k batch means (and likewise the unbiased variances)."""
    rm, rv = np.full(C, 9.0), np.full(C, 9.0)
    nbt = np.zeros(1, np.int64)
    means, vars_ = [], []
    for k in range(4):
        x = make_x(rng, (3, C, 7), np.float64, loc=k)
        _, m, _, v = ref_batch_norm_train(x)
        means.append(m)
        vars_.append(v)
        normfast.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=nbt)
        np.testing.assert_allclose(rm, np.mean(means, axis=0), rtol=1e-12)
        np.testing.assert_allclose(rv, np.mean(vars_, axis=0), rtol=1e-12)
    assert int(nbt[0]) == 4


def test_num_batches_tracked_incremented_with_momentum(rng):
    nbt = np.array([5], np.int64)
    rm, rv = np.zeros(C), np.ones(C)
    normfast.batch_norm(make_x(rng, (4, C), np.float32), rm, rv, training=True, momentum=0.1,
                        num_batches_tracked=nbt)
    assert int(nbt[0]) == 6


def test_momentum_none_needs_num_batches_tracked(rng):
    x = make_x(rng, (4, C, 3), np.float32)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        normfast.batch_norm(x, np.zeros(C), np.ones(C), training=True, momentum=None)


def test_training_without_running_stats_and_eval_requires_them(rng):
    x = make_x(rng, (4, C, 3), np.float32)
    ref = ref_batch_norm_train(x)[0]
    assert_close_ref(normfast.batch_norm(x, training=True), ref)
    with pytest.raises(ValueError, match="running_mean"):
        normfast.batch_norm(x, training=False)
    with pytest.raises(ValueError, match="running"):
        normfast.batch_norm(x, np.zeros(C), None, training=False)


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_accuracy_large_offset_float32(rng, ca):
    """4096 float32 values per channel around 1e4 (std 0.1): max abs error <= 2e-6."""
    Cc = 8
    shape = channel_shape(4, Cc, (32, 32), ca)
    offs = 1e4 + 37.0 * np.arange(Cc)
    x = rng.normal(0, 0.1, shape) + offs.reshape([-1 if i == ca % 4 else 1 for i in range(4)])
    x = x.astype(np.float32)
    y, mean, rstd = normfast.batch_norm(x, training=True, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_batch_norm_train(x, channel_axis=ca)
    assert_offset_accuracy(y, ref, mean, rmean, rstd, rrstd)


# ---------------------------------------------------------------- edge cases

@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_channels_exact(rng, dtype, ca):
    shape = channel_shape(4, C, (6, 7), ca)
    x = make_x(rng, shape, dtype)
    xc = np.moveaxis(x, ca, 1)
    consts = [0.0, 0.3, 1e4 + 0.1, -5.5]
    for c, v in zip([0, 2, 3, 5], consts):
        xc[:, c] = v
    idx = [0, 2, 3, 5]
    y = normfast.batch_norm(x, training=True, channel_axis=ca)
    assert np.all(np.moveaxis(y, ca, 1)[:, idx] == 0)
    w, b = make_params(rng, (C,), dtype, "both")
    y, mean, rstd = normfast.batch_norm(x, None, None, w, b, True, channel_axis=ca, return_stats=True)
    yc = np.moveaxis(y, ca, 1)
    for c in idx:
        assert np.all(yc[:, c] == b[c])
    assert np.all(mean[idx] == np.array(consts, dtype=dtype).astype(np.float64))
    assert np.all(rstd[idx] == 1 / np.sqrt(1e-5))


@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_channel_isolated(rng, dtype, ca):
    x = make_x(rng, channel_shape(4, C, (5, 6), ca), dtype)
    np.moveaxis(x, ca, 1)[2, 4, 1, 3] = np.nan
    w, b = make_params(rng, (C,), dtype, "both")
    rm, rv = np.zeros(C), np.ones(C)
    y, mean, rstd = normfast.batch_norm(x, rm, rv, w, b, True, channel_axis=ca, return_stats=True)
    yc = np.moveaxis(y, ca, 1)
    assert np.isnan(yc[:, 4]).all() and np.isnan(mean[4]) and np.isnan(rstd[4])
    assert np.isnan(rm[4]) and np.isnan(rv[4])
    keep = [0, 1, 2, 3, 5]
    xk = np.take(x, keep, axis=ca % x.ndim)
    ref, rmean, rrstd, _ = ref_batch_norm_train(xk, w[keep], b[keep], channel_axis=ca)
    assert_close_ref(np.take(y, keep, axis=ca % x.ndim), ref)
    assert_stats_close(mean[keep], rmean)
    assert np.isfinite(rm[keep]).all() and np.isfinite(rv[keep]).all()


@pytest.mark.parametrize("n", [2, 3, 31, 33, 1023, 1025, 8193, 65537])
@pytest.mark.parametrize("layout", ["NC", "NCL", "1CL", "2CL", "NLC", "2LC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_odd_sizes(rng, dtype, layout, n):
    shape, ca = {"NC": ((n, 3), 1), "NCL": ((n, 3, 1), 1), "1CL": ((1, 3, n), 1), "2CL": ((2, 3, n), 1),
                 "NLC": ((1, n, 3), -1), "2LC": ((2, n, 3), -1)}[layout]
    x = make_x(rng, shape, dtype, loc=3.0)
    w, b = make_params(rng, (3,), dtype, "both")
    y, mean, rstd = normfast.batch_norm(x, None, None, w, b, True, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_batch_norm_train(x, w, b, channel_axis=ca)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("shape,ca", [((1, C), 1), ((1, C, 1), 1), ((1, C, 1, 1), 1), ((1, 1, 1, C), -1),
                                      ((1, 1, C), -1)])
def test_train_one_value_per_channel_raises(shape, ca):
    rm, rv = np.zeros(C), np.ones(C)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        normfast.batch_norm(np.ones(shape, np.float32), rm, rv, training=True, channel_axis=ca)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    # eval mode is fine with one value per channel
    y = normfast.batch_norm(np.full(shape, 2.0, np.float32), rm, rv, training=False, channel_axis=ca)
    np.testing.assert_allclose(y, 2.0 / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("shape,ca", [((1, C, 2), 1), ((2, C), 1), ((1, 2, C), -1)])
def test_train_two_values_per_channel(rng, shape, ca):
    x = make_x(rng, shape, np.float64)
    assert_close_ref(normfast.batch_norm(x, training=True, channel_axis=ca),
                     ref_batch_norm_train(x, channel_axis=ca)[0])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,ca", [((0, C), 1), ((0, C, 4, 4), 1), ((0, 4, 4, C), -1)])
def test_empty_batch(dtype, shape, ca, training):
    """N=0 gives an empty output (as torch) and leaves the running statistics alone."""
    x = np.empty(shape, dtype=dtype)
    rm, rv = np.zeros(C), np.ones(C)
    y = normfast.batch_norm(x, rm, rv, training=training, channel_axis=ca)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_input_and_params_not_modified(rng):
    x = make_x(rng, (4, C, 5), np.float32)
    w, b = make_params(rng, (C,), np.float32, "both")
    copies = [a.copy() for a in (x, w, b)]
    normfast.batch_norm(x, None, None, w, b, True)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [np.arange(24).reshape(2, 3, 4), np.ones((2, 3, 4), bool),
                                 np.ones((2, 3, 4), np.complex128)], ids=["int", "bool", "complex"])
def test_non_float_input_raises(bad):
    with pytest.raises(TypeError, match="x"):
        normfast.batch_norm(bad, training=True)


def test_bad_arguments():
    x = np.ones((4, 3, 5), np.float32)
    x[0, :, 0] = 2
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="2 dimensions|dimension"):
        normfast.batch_norm(np.ones(5, np.float32), training=True)
    with pytest.raises(ValueError, match="weight"):
        normfast.batch_norm(x, weight=np.ones(5), training=True)
    with pytest.raises(ValueError, match="bias"):
        normfast.batch_norm(x, bias=np.ones((3, 1)), training=True)
    with pytest.raises(ValueError, match="weight"):
        normfast.batch_norm(x, weight=np.ones(3), training=True, channel_axis=-1)   # C = 5 channels-last
    with pytest.raises(ValueError, match="running_mean"):
        normfast.batch_norm(x, np.zeros(4), rv, training=True)
    with pytest.raises(ValueError, match="running_var"):
        normfast.batch_norm(x, rm, np.ones(4), training=False)
    with pytest.raises(TypeError, match="running_mean"):
        normfast.batch_norm(x, np.zeros(3, np.int64), rv, training=True)
    for m in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="momentum"):
            normfast.batch_norm(x, rm, rv, training=True, momentum=m)
    with pytest.raises(TypeError, match="momentum"):
        normfast.batch_norm(x, rm, rv, training=True, momentum="0.1")
    for e in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            normfast.batch_norm(x, training=True, eps=e)
    with pytest.raises(ValueError, match="channel_axis"):
        normfast.batch_norm(x, training=True, channel_axis=3)
    with pytest.raises(TypeError, match="channel_axis"):
        normfast.batch_norm(x, training=True, channel_axis=1.0)
    with pytest.raises(TypeError, match="num_batches_tracked"):
        normfast.batch_norm(x, rm, rv, training=True, num_batches_tracked=np.zeros(1, np.float64))
    with pytest.raises(TypeError, match="num_batches_tracked"):
        normfast.batch_norm(x, rm, rv, training=True, num_batches_tracked=0)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_read_only_running_stats():
    x = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    rm, rv = np.zeros(3), np.ones(3)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean"):
        normfast.batch_norm(x, rm, rv, training=True)
    np.testing.assert_array_equal(rv, 1)
    normfast.batch_norm(x, rm, rv, training=False)      # read-only is fine in eval


def test_bad_out(rng):
    x = make_x(rng, (4, 3, 5), np.float32)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        normfast.batch_norm(x, training=True, out=ro)
    with pytest.raises(TypeError, match="out"):
        normfast.batch_norm(x, training=True, out=np.empty(x.shape, np.float64))
    buf = make_x(rng, (4, 3, 10), np.float32)
    keep = buf.copy()
    with pytest.raises(ValueError, match="out"):
        normfast.batch_norm(buf[..., :5], training=True, out=buf[..., 3:8])
    np.testing.assert_array_equal(buf, keep)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unaligned_and_byteswapped_input(rng, dtype, ca, training):
    x = make_x(rng, channel_shape(4, C, (5, 7), ca), dtype)
    w, b = make_params(rng, (C,), dtype, "both")
    rm, rv = _running(rng)
    ref = (ref_batch_norm_train(x, w, b, channel_axis=ca)[0] if training
           else ref_batch_norm_eval(x, rm, rv, w, b, channel_axis=ca))
    for xx in unusual_copies(x):
        y = normfast.batch_norm(xx, rm.copy(), rv.copy(), w, b, training, channel_axis=ca)
        assert y.dtype == xx.dtype
        assert_close_ref(y, ref)
        assert normfast.batch_norm(xx, rm.copy(), rv.copy(), w, b, training, channel_axis=ca, out=xx) is xx
        assert_close_ref(xx, ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_low_precision_running_buffers(rng, dtype):
    """Running buffers in x's low precision: updated (computed in float64, rounded once)."""
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    em, ev = np.zeros(C), np.ones(C)
    for _ in range(3):
        x = make_x(rng, (4, C, 6), dtype, loc=1.0)
        _, mean, _, var_u = ref_batch_norm_train(x)
        normfast.batch_norm(x, rm, rv, training=True, momentum=0.25)
        em = (1 - 0.25) * em.astype(dtype).astype(np.float64) + 0.25 * mean
        ev = (1 - 0.25) * ev.astype(dtype).astype(np.float64) + 0.25 * var_u
        assert rm.dtype == dtype and rv.dtype == dtype
        assert_close_ref(rm, em)
        assert_close_ref(rv, ev)


@pytest.mark.parametrize("n", [8193, 20000])
@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
def test_long_segments_and_many_channels(rng, ca, n):
    """Per-channel segments longer than one statistics chunk (channels first) and more
    channels than one chunk of lanes (channels last)."""
    shape = (2, 3, n) if ca == 1 else (3, 2, n)        # channels-last: C = n
    x = make_x(rng, shape, np.float32, loc=-20.0)
    y, mean, rstd = normfast.batch_norm(x, training=True, channel_axis=ca, return_stats=True)
    ref, rmean, rrstd, _ = ref_batch_norm_train(x, channel_axis=ca)
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean)
    assert_stats_close(rstd, rrstd)


@pytest.mark.parametrize("shape,ca", [((2, C, 0), 1), ((2, 0, C), -1), ((2, C, 0, 3), 1)])
def test_empty_spatial(shape, ca):
    """Zero spatial positions: an empty output in both modes (as torch), running stats untouched."""
    x = np.empty(shape, np.float32)
    for training in (False, True):
        rm, rv = np.zeros(C), np.ones(C)
        y = normfast.batch_norm(x, rm, rv, training=training, channel_axis=ca)
        assert y.shape == shape
        np.testing.assert_array_equal(rm, 0)
        np.testing.assert_array_equal(rv, 1)


def test_weight_bias_as_lists(rng):
    x = make_x(rng, (4, 3, 5), np.float64)
    w, b = [1.0, 2.0, 0.5], [0.0, -1.0, 3.0]
    assert_close_ref(normfast.batch_norm(x, None, None, w, b, True),
                     ref_batch_norm_train(x, np.array(w), np.array(b))[0])


@pytest.mark.parametrize("ca", CAS, ids=CA_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_large_outputs_any_alignment(dtype, ca):
    """Outputs over 4 MiB (large-output store paths) into misaligned and in-place buffers."""
    rng = np.random.default_rng(7)
    hw = (182, 182) if dtype == np.float32 else (129, 129)
    x0 = make_x(rng, channel_shape(4, 8, hw, ca), dtype, loc=30.0)
    assert x0.nbytes >= 4 << 20
    w, b = make_params(rng, (8,), dtype, "both")
    ref = ref_batch_norm_train(x0, w, b, channel_axis=ca)[0]
    assert_out_alignments(lambda a, **kw: normfast.batch_norm(a, None, None, w, b, True, channel_axis=ca, **kw),
                          x0, ref)


# ---------------------------------------------------------------- backward

class TestBackward(BackwardTests):
    """batch_norm_backward (training and eval): the backward tests the norms share
    (tests/_helpers.py) on batch_norm's cases, and its own."""
    KINDS = ("batch", "batch_eval")

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("channel_axis", [1, -1])
    def test_batch_norm_running_stats_train_against_torch(self, dtype, channel_axis):
        """Train mode with running buffers: gradients are those of the batch statistics and the
        buffers are updated like torch's (the gradient does not see the running stats)."""
        torch = pytest.importorskip("torch")
        cf = (3, 4, 5, 2)
        case = BackwardCase("batch", cf if channel_axis == 1 else channels_last(cf), channel_axis=channel_axis)
        x, dy, w, b = case.data(dtype, True, seed=3)
        rm = np.linspace(-1, 1, 4).astype(dtype)
        rv = np.linspace(0.5, 2, 4).astype(dtype)
        rm_n, rv_n, rm_t, rv_t = rm.copy(), rv.copy(), torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        _, mean, rstd = case.forward(x, w, b, stats=True, rm=rm_n, rv=rv_n)
        got = case.backward(dy, x, (mean, rstd), w)
        exp = case.torch_grads(torch, x, dy, w, b, rm_t, rv_t)
        tol = TORCH_GRAD_TOL[dtype]
        assert_grads_close(got, exp, tol["rtol"], tol["atol"])
        np.testing.assert_allclose(rm_n, rm_t.numpy(), **tol)
        np.testing.assert_allclose(rv_n, rv_t.numpy(), **tol)
        # same gradients without the running buffers
        got2 = case.grads(dy, x, w, b)
        for g, g2 in zip(got, got2):
            np.testing.assert_array_equal(g, g2)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    def test_batch_norm_eval_differs_from_train(self, dtype):
        """Eval-mode gradient is rstd_running * w * dy, not the training formula."""
        case = BackwardCase("batch_eval", (4, 3, 5))
        x, dy, w, b = case.data(dtype, True, seed=8)
        _, mean, rstd = case.forward(x, w, b, stats=True)
        np.testing.assert_allclose(mean, case.rm, rtol=0, atol=0)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(case.rv + EPS), rtol=1e-15)
        gx, gw, gb = normfast.batch_norm_backward(dy, x, mean, rstd, w, training=False)
        exp = dy.astype(np.float64) * (rstd * w.astype(np.float64))[None, :, None]
        np.testing.assert_allclose(gx, exp, rtol=1e-6 if dtype == np.float32 else 1e-13)
        gx_train, _, _ = normfast.batch_norm_backward(dy, x, mean, rstd, w, training=True)
        assert not np.allclose(gx, gx_train)
