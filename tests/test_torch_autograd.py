"""normfast.torch: autograd adapters give torch's gradients."""
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nft = pytest.importorskip("normfast.torch")


def _grads(fn, x, *params):
    x = x.clone().requires_grad_()
    ps = [p.clone().requires_grad_() if p is not None else None for p in params]
    y = fn(x, *ps)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    leaves = [x] + [p for p in ps if p is not None]
    return y.detach(), torch.autograd.grad(y, leaves, g)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("case", ["layer", "rms", "batch", "batch_eval", "group"])
def test_matches_torch_autograd(case, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = (3 + torch.randn(4, 6, 5, 5, generator=g)).to(dtype)
    w = torch.rand(6, generator=g, dtype=dtype) + 0.5
    b = torch.randn(6, generator=g, dtype=dtype)
    if case == "layer":
        w5, b5 = torch.rand(5, 5, dtype=dtype) + 0.5, torch.randn(5, 5, dtype=dtype)
        ours = _grads(lambda x, w, b: nft.layer_norm(x, (5, 5), w, b), x, w5, b5)
        ref = _grads(lambda x, w, b: F.layer_norm(x, (5, 5), w, b), x, w5, b5)
    elif case == "rms":
        w5 = torch.rand(5, dtype=dtype) + 0.5
        ours = _grads(lambda x, w: nft.rms_norm(x, (5,), w, 1e-6), x, w5)
        ref = _grads(lambda x, w: F.rms_norm(x, (5,), w, 1e-6), x, w5)
    elif case in ("batch", "batch_eval"):
        training = case == "batch"
        rm, rv = torch.randn(6, dtype=dtype), torch.rand(6, dtype=dtype) + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        ours = _grads(lambda x, w, b: nft.batch_norm(x, rm, rv, w, b, training), x, w, b)
        ref = _grads(lambda x, w, b: F.batch_norm(x, rm2, rv2, w, b, training), x, w, b)
        assert torch.allclose(rm, rm2, atol=tol * 10) and torch.allclose(rv, rv2, atol=tol * 10)
    else:
        ours = _grads(lambda x, w, b: nft.group_norm(x, 3, w, b), x, w, b)
        ref = _grads(lambda x, w, b: F.group_norm(x, 3, w, b), x, w, b)
    assert torch.allclose(ours[0], ref[0], atol=tol * 10)
    for a, r in zip(ours[1], ref[1]):
        assert torch.allclose(a, r, atol=tol * (1 + r.abs().max().item()), rtol=tol)


def test_gradcheck_float64():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: nft.layer_norm(x, 5, w, b), (x, w, b))
    wc = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: nft.group_norm(x, 2, w, None), (x, wc))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape,nshape", [((16, 768), [768]), ((3, 4, 5, 6), [5, 6]), ((1, 7), [7])])
def test_eager_row_paths_equal_the_numpy_operators(shape, nshape, affine, rms, dtype):
    """The eager autograd path of layer_norm / rms_norm calls the kernels directly (C-level fast
    forward, direct backward): statistics, y and every gradient are bitwise those of the NumPy
    operators on the same values."""
    import numpy as np
    import normfast as nf
    g = torch.Generator().manual_seed(3)
    x = (100 + torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    w = (torch.rand(nshape, generator=g) + 0.5).to(dtype).requires_grad_() if affine else None
    b = torch.randn(nshape, generator=g).to(dtype).requires_grad_() if affine and not rms else None
    gy = torch.randn(shape, generator=g).to(dtype)
    if rms:
        y = nft.rms_norm(x, nshape, w, 1e-5)
    else:
        y = nft.layer_norm(x, nshape, w, b, 1e-5)
    y.backward(gy)
    xn, gn = x.detach().numpy(), gy.numpy()
    wn = None if w is None else w.detach().numpy()
    if rms:
        yn, rstd = nf.rms_norm(xn, tuple(nshape), wn, 1e-5, return_stats=True)
        gx, gw = nf.rms_norm_backward(gn, xn, rstd, tuple(nshape), wn)
        gb = None
    else:
        yn, mean, rstd = nf.layer_norm(xn, tuple(nshape), wn, None if b is None else b.detach().numpy(), 1e-5,
                                       return_stats=True)
        gx, gw, gb = nf.layer_norm_backward(gn, xn, mean, rstd, tuple(nshape), wn)
    np.testing.assert_array_equal(y.detach().numpy(), yn)
    np.testing.assert_array_equal(x.grad.numpy(), gx)
    if affine:
        np.testing.assert_array_equal(w.grad.numpy(), gw)
    if b is not None:
        np.testing.assert_array_equal(b.grad.numpy(), gb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d"])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_batch_norm_direct_path_equals_the_general_path(layout, affine, dtype):
    """Eval-mode batch_norm on plain tensors goes straight to the kernels (no argument parsing):
    y and the statistics are bitwise those of the general path, in x's memory format."""
    import numpy as np
    from normfast.torch import _impl
    g = torch.Generator().manual_seed(4)
    shape = (3, 5) if layout == "2d" else (3, 5, 4, 6)
    x = (10 + torch.randn(shape, generator=g)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    rm, rv = torch.randn(5, generator=g).to(dtype), (torch.rand(5, generator=g) + 0.5).to(dtype)
    w, b = (torch.randn(5, generator=g).to(dtype), torch.randn(5, generator=g).to(dtype)) if affine else (None, None)
    direct = _impl._batch_norm_eval_direct(x, w, b, rm, rv, 1e-5)
    assert direct is not None
    general = _impl._with_buffers(_impl._batch_norm.batch_norm, x, w, b, rm, rv, False, 0.1, 1e-5)
    for a, c in zip(direct, general):
        np.testing.assert_array_equal(a.numpy(), c.numpy())
    assert direct[0].stride() == x.stride()
    y = nft.batch_norm(x, rm, rv, w, b, training=False)
    np.testing.assert_array_equal(y.numpy(), direct[0].numpy())
