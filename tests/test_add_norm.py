"""Fused residual add + norm: equal to the unfused sequence; gradients against torch autograd."""
import numpy as np
import pytest

import normfast as nf


def ref_ln(h, w=None, b=None, eps=1e-5, rms=False):
    h = h.astype(np.float64)
    if rms:
        y = h / np.sqrt((h * h).mean(-1, keepdims=True) + eps)
    else:
        y = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12), (np.float16, 4e-3)])
@pytest.mark.parametrize("N", [1, 3, 1025])
@pytest.mark.parametrize("affine", [False, True])
def test_add_layer_norm_matches_unfused(dtype, tol, N, affine):
    rng = np.random.default_rng(N)
    x = (5 + rng.standard_normal((7, N))).astype(dtype)
    r = rng.standard_normal((7, N)).astype(dtype)
    w = rng.standard_normal(N).astype(dtype) if affine else None
    b = rng.standard_normal(N).astype(dtype) if affine else None
    y, h, mean, rstd = nf.add_layer_norm(x, r, N, w, b, return_stats=True)
    assert np.array_equal(h, x + r)                       # bitwise: same rounding as the unfused add
    assert y.dtype == dtype and h.dtype == dtype and mean.shape == (7,) and rstd.shape == (7,)
    ref = ref_ln(h, None if w is None else w.astype(np.float64), None if b is None else b.astype(np.float64))
    scale = 1 + np.abs(ref).max() if dtype == np.float16 else 1
    assert np.abs(y.astype(np.float64) - ref).max() <= tol * scale * (1 if N > 1 else 1)
    y2 = nf.layer_norm(x + r, N, w, b)
    assert np.abs(y.astype(np.float64) - y2.astype(np.float64)).max() <= tol * scale


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_add_rms_norm_matches_unfused(dtype, tol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 300)).astype(dtype)
    r = rng.standard_normal((9, 300)).astype(dtype)
    w = rng.standard_normal(300).astype(dtype)
    y, h, rstd = nf.add_rms_norm(x, r, 300, w, eps=1e-6, return_stats=True)
    assert np.array_equal(h, x + r)
    assert np.abs(y - ref_ln(h, w.astype(np.float64), eps=1e-6, rms=True)).max() <= tol * 4
    assert np.abs(rstd - 1 / np.sqrt((h.astype(np.float64) ** 2).mean(-1) + 1e-6)).max() <= 1e-12 * rstd.max()


def test_adversarial_offset_accuracy():
    rng = np.random.default_rng(2)
    x = (1e4 + 0.1 * rng.standard_normal((16, 4096))).astype(np.float32)
    r = (0.01 * rng.standard_normal((16, 4096))).astype(np.float32)
    y, h = nf.add_layer_norm(x, r, 4096)
    assert np.abs(y - ref_ln(h)).max() <= 2e-6


def test_in_place_outputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    r = rng.standard_normal((5, 64)).astype(np.float32)
    y_ref, h_ref = nf.add_layer_norm(x, r, 64)
    xx, rr = x.copy(), r.copy()
    y, h = nf.add_layer_norm(xx, rr, 64, out=xx, residual_out=rr)
    assert y is xx and h is rr
    assert np.array_equal(y, y_ref) and np.array_equal(h, h_ref)


def test_inputs_not_modified_and_bad_args():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    r = rng.standard_normal((5, 8)).astype(np.float32)
    xc, rc = x.copy(), r.copy()
    nf.add_layer_norm(x, r, 8)
    assert np.array_equal(x, xc) and np.array_equal(r, rc)
    with pytest.raises(ValueError, match="residual"):
        nf.add_layer_norm(x, r[:, :4], 8)
    with pytest.raises(ValueError, match="residual"):
        nf.add_layer_norm(x, r.astype(np.float64), 8)
    with pytest.raises(ValueError, match="different"):
        o = np.empty_like(x)
        nf.add_layer_norm(x, r, 8, out=o, residual_out=o)
    with pytest.raises(TypeError, match="residual"):
        nf.add_layer_norm(x, r.astype(np.int32), 8)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("with_gh", [False, True])
def test_backward_against_torch(dtype, tol, with_gh):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 33)).astype(dtype)
    r = rng.standard_normal((6, 33)).astype(dtype)
    w = rng.standard_normal(33).astype(dtype)
    b = rng.standard_normal(33).astype(dtype)
    gy = rng.standard_normal((6, 33)).astype(dtype)
    gh = rng.standard_normal((6, 33)).astype(dtype) if with_gh else None
    y, h, mean, rstd = nf.add_layer_norm(x, r, 33, w, b, return_stats=True)
    gx, gw, gb = nf.add_layer_norm_backward(gy, gh, h, mean, rstd, 33, w)
    xt, rt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(r).requires_grad_()
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    ht = xt + rt
    yt = F.layer_norm(ht, (33,), wt, bt)
    outs, grads = [yt], [torch.from_numpy(gy)]
    if with_gh:
        outs.append(ht)
        grads.append(torch.from_numpy(gh))
    tx, tr, tw, tb = torch.autograd.grad(outs, (xt, rt, wt, bt), grads)
    for a, t in ((gx, tx), (gx, tr), (gw, tw), (gb, tb)):
        assert np.abs(a - t.numpy()).max() <= tol * (1 + np.abs(t.numpy()).max())
    # RMS variant
    y, h, rs = nf.add_rms_norm(x, r, 33, w, eps=1e-6, return_stats=True)
    gx, gw = nf.add_rms_norm_backward(gy, gh, h, rs, 33, w)
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    ht = xt + torch.from_numpy(r)
    yt = F.rms_norm(ht, (33,), wt, eps=1e-6)
    outs = [yt] + ([ht] if with_gh else [])
    tx, tw = torch.autograd.grad(outs, (xt, wt), grads)
    assert np.abs(gx - tx.numpy()).max() <= tol * (1 + np.abs(tx.numpy()).max())
    assert np.abs(gw - tw.numpy()).max() <= tol * (1 + np.abs(tw.numpy()).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["separate", "grad_y", "grad_h", "h"])
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_backward_out(rms, where, dtype):
    """grad_input written into out= (a separate array, or grad_y / grad_h / h in place) is bitwise
    the allocated result and matches the float64 formula; overlapping out is refused."""
    rng = np.random.default_rng(6)
    x, r = (rng.normal(2.0, 1.5, (40, 300)).astype(dtype) for _ in range(2))
    w = rng.normal(1.0, 0.3, 300).astype(dtype)
    gy, gh = (rng.standard_normal((40, 300)).astype(dtype) for _ in range(2))
    if rms:
        y, h, rs = nf.add_rms_norm(x, r, 300, w, return_stats=True)
        mean = None
        bwd = lambda **kw: nf.add_rms_norm_backward(gy, gh, h, rs, 300, w, **kw)  # noqa: E731
    else:
        y, h, mean, rs = nf.add_layer_norm(x, r, 300, w, return_stats=True)
        bwd = lambda **kw: nf.add_layer_norm_backward(gy, gh, h, mean, rs, 300, w, **kw)  # noqa: E731
    full = bwd()
    h64, gy64 = h.astype(np.float64), gy.astype(np.float64)
    m = np.zeros(40) if rms else h64.mean(axis=1)
    rstd = 1 / np.sqrt(((h64 - m[:, None]) ** 2).mean(axis=1) + (np.finfo(dtype).eps if rms else 1e-5))
    xh = (h64 - m[:, None]) * rstd[:, None]
    g = gy64 * w.astype(np.float64)
    c1 = 0.0 if rms else g.mean(axis=1, keepdims=True)
    exp = rstd[:, None] * (g - c1 - xh * (g * xh).mean(axis=1, keepdims=True)) + gh
    out = {"separate": np.empty_like(h), "grad_y": gy, "grad_h": gh, "h": h}[where]
    got = bwd(out=out)
    assert got[0] is out
    np.testing.assert_array_equal(out, full[0])
    for a, f in zip(got[1:], full[1:]):
        np.testing.assert_array_equal(a, f)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, exp, rtol=tol, atol=tol * np.abs(exp).max())
    big = np.zeros(h.size + 1, dtype)
    with pytest.raises(ValueError, match="overlaps"):
        nf.add_layer_norm_backward(gy, big[:-1].reshape(h.shape), h, np.zeros(40), np.ones(40), 300, w,
                                   out=big[1:].reshape(h.shape))
