"""The C-level fast path of layer_norm / rms_norm (server-speed issue, item 1): it must take the
common call, give bitwise the general path's result (and so the float64/long-double reference's
within the operator tests' tolerance), and decline everything else to the general path."""
import numpy as np
import pytest

import normfast as nf
from _helpers import assert_close_ref, ref_layer_norm, ref_rms_norm
from normfast._cpu._normalize import rows_fast

GENERAL_LN = nf.layer_norm.__wrapped__          # the dispatched general path
GENERAL_RMS = nf.rms_norm.__wrapped__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 768), (32, 768), (3, 5, 64), (700, 33)])
@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
def test_fast_path_equals_general_path(dtype, shape, affine):
    rng = np.random.default_rng(sum(shape))
    N = shape[-1]
    x = (rng.normal(size=shape) * 3 + 1e3).astype(dtype)
    w = rng.normal(size=N).astype(dtype) if affine in ("weight", "both") else None
    b = rng.normal(size=N).astype(dtype) if affine in ("bias", "both") else None
    fast = rows_fast(x, N, w, b, 1e-5, None, True, False)
    assert fast is not NotImplemented
    general = GENERAL_LN(x, N, w, b, 1e-5, return_stats=True)
    for f, g in zip(fast, general):
        np.testing.assert_array_equal(f, g)
        assert f.dtype == g.dtype and f.shape == g.shape
    assert_close_ref(fast[0], ref_layer_norm(x, N, w, b)[0])
    y, rstd = rows_fast(x, (N,), w, None, None, None, True, True)
    gy, grstd = GENERAL_RMS(x, N, w, None, return_stats=True)
    np.testing.assert_array_equal(y, gy)
    np.testing.assert_array_equal(rstd, grstd)
    assert_close_ref(y, ref_rms_norm(x, N, w, None)[0])
    out = np.empty_like(x)                                   # out= and in place
    assert nf.layer_norm(x, N, w, b, out=out) is out
    np.testing.assert_array_equal(out, general[0])
    xi = x.copy()
    assert nf.layer_norm(xi, N, w, b, out=xi) is xi
    np.testing.assert_array_equal(xi, general[0])


def test_fast_path_on_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 96)).astype(np.float32)
    w, b = rng.normal(size=96).astype(np.float32), rng.normal(size=96).astype(np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    y = rows_fast(xt, 96, wt, bt, 1e-5, None, False, False)
    assert isinstance(y, torch.Tensor)
    np.testing.assert_array_equal(y.numpy(), GENERAL_LN(x, 96, w, b))
    ref = torch.nn.functional.layer_norm(xt.double(), (96,), wt.double(), bt.double()).float().numpy()
    np.testing.assert_allclose(nf.layer_norm(xt, 96, wt, bt).numpy(), ref, atol=2e-6)
    # declined: autograd, non-contiguous, negative bit, other dtypes
    assert rows_fast(xt.clone().requires_grad_(), 96, None, None, 1e-5, None, False, False) is NotImplemented
    assert rows_fast(xt.t().contiguous().t(), 4, None, None, 1e-5, None, False, False) is NotImplemented
    assert rows_fast(torch.neg(xt).resolve_neg()._neg_view(), 96, None, None, 1e-5, None, False, False) \
        is NotImplemented
    assert rows_fast(xt.bfloat16(), 96, None, None, 1e-5, None, False, False) is NotImplemented


@pytest.mark.parametrize("case", ["strided", "float16", "swapped", "weight_dtype", "weight_strided", "shape_tuple2",
                                  "eps_int", "out_overlap", "out_f_order", "empty_row", "list_x", "weight_in_out"])
def test_fast_path_declines_and_general_path_answers(case):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 16)).astype(np.float32)
    args = dict(x=x, ns=16, w=None, b=None, eps=1e-5, out=None)
    if case == "strided":
        args["x"] = rng.normal(size=(6, 32)).astype(np.float32)[:, ::2]
    elif case == "float16":
        args["x"] = x.astype(np.float16)
    elif case == "swapped":
        args["x"] = x.astype(x.dtype.newbyteorder())
    elif case == "weight_dtype":
        args["w"] = np.ones(16)
    elif case == "weight_strided":
        args["w"] = np.ones(32, np.float32)[::2]
    elif case == "shape_tuple2":
        args["x"], args["ns"] = x.reshape(6, 4, 4), (4, 4)
    elif case == "eps_int":
        args["eps"] = 0
    elif case == "out_overlap":
        buf = np.zeros((6, 17), np.float32)
        args["x"], args["out"] = buf[:, :16], buf[:, 1:]
    elif case == "out_f_order":
        args["out"] = np.asfortranarray(np.empty_like(x))
    elif case == "empty_row":
        args["x"], args["ns"] = np.empty((3, 0), np.float32), 0
    elif case == "list_x":
        args["x"] = x.tolist()
    elif case == "weight_in_out":
        out = np.empty_like(x)
        args["out"], args["w"] = out, out[0]
    assert rows_fast(args["x"], args["ns"], args["w"], args["b"], args["eps"], args["out"], False, False) \
        is NotImplemented
    if case in ("out_overlap", "list_x"):
        with pytest.raises((ValueError, TypeError), match="layer_norm"):
            nf.layer_norm(args["x"], args["ns"], args["w"], args["b"], args["eps"], out=args["out"])
        return
    xv = np.asarray(args["x"])
    w = None if args["w"] is None else np.array(args["w"])
    ref = ref_layer_norm(xv, args["ns"], w, None, eps=args["eps"])[0]
    y = nf.layer_norm(args["x"], args["ns"], args["w"], args["b"], args["eps"], out=args["out"])
    assert_close_ref(np.asarray(y), ref, dtype=xv.dtype)


def test_fast_path_reads_parameters_under_no_grad():
    """Module parameters require grad; under no_grad the fast path reads them (detached) and gives
    bitwise the general path's result; with grad enabled it declines (autograd takes over)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    w = torch.nn.Parameter(torch.from_numpy(rng.normal(size=64).astype(np.float32)))
    b = torch.nn.Parameter(torch.from_numpy(rng.normal(size=64).astype(np.float32)))
    xt = torch.from_numpy(x)
    assert rows_fast(xt, (64,), w, b, 1e-5, None, False, False) is NotImplemented
    with torch.no_grad():
        y = rows_fast(xt, (64,), w, b, 1e-5, None, False, False)
        assert isinstance(y, torch.Tensor)
        np.testing.assert_array_equal(y.numpy(), GENERAL_LN(x, 64, w.detach().numpy(), b.detach().numpy()))
        import normfast.torch as nft
        m = nft.LayerNorm(64)
        m.weight.copy_(w), m.bias.copy_(b)
        np.testing.assert_array_equal(m(xt).numpy(), y.numpy())


def test_parameter_views_follow_in_place_changes_and_reassignment():
    """Parameters read under no_grad are cached as NumPy views per tensor; an in-place change
    (version bump) or ``p.data = ...`` (new storage) is seen by the next call."""
    torch = pytest.importorskip("torch")
    import normfast.torch as nft
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(3, 32)).astype(np.float32))
    m = nft.LayerNorm(32)

    def ref():
        return torch.nn.functional.layer_norm(x.double(), (32,), m.weight.double(), m.bias.double()).float()
    with torch.no_grad():
        for change in (lambda: None, lambda: m.weight.mul_(3.0), lambda: m.bias.add_(1.0),
                       lambda: setattr(m.weight, "data", torch.from_numpy(rng.normal(size=32).astype(np.float32)))):
            change()
            np.testing.assert_allclose(m(x).numpy(), ref().numpy(), atol=2e-6)
            np.testing.assert_allclose(nf.layer_norm(x, 32, m.weight, m.bias).numpy(), ref().numpy(), atol=2e-6)
