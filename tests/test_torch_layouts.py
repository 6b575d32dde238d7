"""normfast.torch: channels_last without copies, bfloat16/float16 (mixed-precision parameters),
and the plain ``normfast.*`` functions on torch tensors (autograd routing, neg/conj bits,
meta/sparse errors)."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nft = pytest.importorskip("normfast.torch")
import normfast as nf  # noqa: E402
from normfast import _batch_norm, _group_norm, _instance_norm  # noqa: E402
from normfast.torch import _route  # noqa: E402
nn = torch.nn


def _spy(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def spy(x, *args, **kwargs):
        seen.append((x.__array_interface__["data"][0], kwargs.get("channel_axis", 1)))
        return real(x, *args, **kwargs)
    monkeypatch.setattr(module, name, spy)


CHANNEL_MODULES = [
    (nn.BatchNorm2d, nft.BatchNorm2d, (6,), _batch_norm, "batch_norm", torch.channels_last, (4, 6, 5, 3)),
    (nn.GroupNorm, nft.GroupNorm, (3, 6), _group_norm, "group_norm", torch.channels_last, (4, 6, 5, 3)),
    (nn.InstanceNorm2d, nft.InstanceNorm2d, (6,), _instance_norm, "instance_norm", torch.channels_last,
     (4, 6, 5, 3)),
    (nn.BatchNorm3d, nft.BatchNorm3d, (6,), _batch_norm, "batch_norm", torch.channels_last_3d, (2, 6, 3, 4, 2)),
]


@pytest.mark.parametrize("case", range(len(CHANNEL_MODULES)))
def test_channels_last_no_copy_same_format(case, monkeypatch):
    tcls, ncls, args, module, fname, fmt, shape = CHANNEL_MODULES[case]
    ref, ours = tcls(*args, affine=True).double(), ncls(*args, affine=True).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = (1 + 2 * torch.randn(shape, dtype=torch.float64)).contiguous(memory_format=fmt)
    seen = []
    _spy(monkeypatch, module, fname, seen)
    with torch.no_grad():
        y = ours(x)
    assert seen == [(x.data_ptr(), -1)]                   # the kernel read x's own memory, channels last
    assert y.is_contiguous(memory_format=fmt) and y.stride() == x.stride()
    assert torch.allclose(y, ref(x), atol=1e-12)
    xg = x.clone().requires_grad_()
    g = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    gx = torch.autograd.grad(ours(xg), xg, g)[0]
    assert gx.is_contiguous(memory_format=fmt)
    assert torch.allclose(gx, torch.autograd.grad(ref(xg), xg, g)[0], atol=1e-10)


def test_channels_last_1d_transposed_input_no_copy(monkeypatch):
    """An (N, L, C) tensor seen as (N, C, L) (a transformer's conv/batch-norm) is read as is."""
    x = torch.randn(4, 7, 6).transpose(1, 2)
    seen = []
    _spy(monkeypatch, _batch_norm, "batch_norm", seen)
    with torch.no_grad():
        y = nft.BatchNorm1d(6)(x)
    assert seen == [(x.data_ptr(), -1)] and y.stride() == x.stride()
    assert torch.allclose(y, nn.BatchNorm1d(6)(x), atol=1e-6)


def _ref64(tcls, args, ours, x, eps):
    """float64 reference: the same (rounded) input and parameters, computed by torch in float64."""
    ref = tcls(*args, eps=eps).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in ours.state_dict().items()})
    with torch.no_grad():
        return ref(x.double())


LOW = [
    (nn.LayerNorm, nft.LayerNorm, (64,), (8, 5, 64), torch.contiguous_format),
    (nn.RMSNorm, nft.RMSNorm, (64,), (8, 5, 64), torch.contiguous_format),
    (nn.BatchNorm2d, nft.BatchNorm2d, (8,), (4, 8, 5, 5), torch.channels_last),
    (nn.GroupNorm, nft.GroupNorm, (2, 8), (4, 8, 5, 5), torch.channels_last),
    (nn.InstanceNorm2d, nft.InstanceNorm2d, (8,), (4, 8, 5, 5), torch.contiguous_format),
]


@pytest.mark.parametrize("param_dtype", ["float32", "same"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(LOW)))
def test_low_precision_rounded_once(case, dtype, param_dtype):
    """bfloat16/float16 input (float32 or low-precision parameters): results in the input dtype and
    format, within half an ulp (+ the float32 intermediate) of the float64 result on the same input."""
    tcls, ncls, args, shape, fmt = LOW[case]
    eps = 1e-5
    ours = ncls(*args, eps=eps)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    if param_dtype == "same":
        ours = ours.to(dtype)
    x = (1 + 3 * torch.randn(shape)).to(dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        y = ours(x)
    ref = _ref64(tcls, args, ours, x, eps)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11        # unit roundoff (half an ulp, relative)
    err = (y.double() - ref).abs()
    assert (err <= 1.001 * u * ref.abs() + 1e-6).all(), err.max()


def test_bfloat16_backward_mixed_precision():
    ln = nft.LayerNorm(16)
    x = torch.randn(4, 16).bfloat16().requires_grad_()
    y = ln(x)
    g = torch.randn(4, 16).bfloat16()
    gx, gw, gb = torch.autograd.grad(y, (x, ln.weight, ln.bias), g)
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32 and gb.dtype == torch.float32
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (ln.weight, ln.bias))
    rx, rw, rb = torch.autograd.grad(nn.functional.layer_norm(x64, (16,), w64, b64), (x64, w64, b64), g.double())
    assert torch.allclose(gx.double(), rx, atol=2e-2 * rx.abs().max().item())
    assert torch.allclose(gw.double(), rw, atol=1e-5) and torch.allclose(gb.double(), rb, atol=1e-5)


# ---------------------------------------------------- plain normfast.* on torch tensors
def test_plain_function_routes_requires_grad_through_registered_op():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    y = nf.layer_norm(x, 8, w)
    assert y.grad_fn is not None
    g = torch.randn(3, 8, dtype=torch.float64)
    ours = torch.autograd.grad(y, (x, w), g)
    ref = torch.autograd.grad(nn.functional.layer_norm(x, (8,), w), (x, w), g)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-12)
    with torch.no_grad():
        assert nf.layer_norm(x, 8, w).grad_fn is None


@pytest.mark.parametrize("fname", ["batch_norm", "group_norm", "instance_norm"])
def test_plain_channel_axis_with_grad(fname):
    """normfast's channel_axis=-1 on an NHWC tensor that requires grad: gradients as torch's on NCHW."""
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)        # NHWC, C=6
    args = {"batch_norm": (None, None, None, None, True), "group_norm": (3,), "instance_norm": ()}[fname]
    y = getattr(nf, fname)(x, *args, channel_axis=-1)
    ref = getattr(nn.functional, fname)(x.permute(0, 3, 1, 2), *args).permute(0, 2, 3, 1)
    g = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    assert torch.allclose(y, ref, atol=1e-12)
    assert torch.allclose(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0], atol=1e-10)


def test_plain_add_norms_and_normalize_with_grad():
    x, r = (torch.randn(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y, h = nf.add_rms_norm(x, r, 8, None, 1e-6)
    gy, gh = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    hr = x + r
    yr = nn.functional.rms_norm(hr, (8,), eps=1e-6)
    for a, b in zip(torch.autograd.grad((y, h), (x, r), (gy, gh)), torch.autograd.grad((yr, hr), (x, r), (gy, gh))):
        assert torch.allclose(a, b, atol=1e-12)
    z = nf.normalize(x, 0)
    zr = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(torch.autograd.grad(z, x, gy)[0], torch.autograd.grad(zr, x, gy)[0], atol=1e-10)


def test_plain_function_without_autograd_formula_warns_once():
    _route._warned.discard("layer_norm_backward")
    x = torch.randn(3, 8, requires_grad=True)
    _, mean, rstd = nf.layer_norm(x.detach(), 8, return_stats=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(2):
            gx, _, _ = nf.layer_norm_backward(torch.ones(3, 8), x, mean, rstd, 8)
    assert [r.category for r in rec] == [RuntimeWarning]
    assert "layer_norm_backward" in str(rec[0].message)
    assert isinstance(gx, torch.Tensor) and torch.allclose(gx, torch.zeros(3, 8), atol=1e-5)


def test_plain_bfloat16():
    x = torch.randn(3, 8).bfloat16()
    y = nf.layer_norm(x, 8)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), nn.functional.layer_norm(x.float(), (8,)), atol=1e-2)
    with pytest.raises(TypeError, match="bfloat16"):
        nf.moments(x)


def test_negative_and_conjugate_bits_are_read():
    base = torch.randn(5, 8, dtype=torch.float64)
    neg = torch._neg_view(base)
    assert neg.is_neg()
    expected = nf.layer_norm(-base.numpy(), 8)
    assert np.array_equal(nf.layer_norm(neg, 8).numpy(), expected)
    assert np.array_equal(nf.layer_norm(base, 8, weight=torch._neg_view(torch.ones(8, dtype=torch.float64))).numpy(),
                          -nf.layer_norm(base.numpy(), 8))
    c = torch.randn(4, 3, dtype=torch.complex128).conj()
    assert c.is_conj()
    with pytest.raises(TypeError, match="floating dtype"):      # complex: rejected, never misread
        nf.layer_norm(c, 3)
    mean, _ = nf.moments(neg, axis=0)
    assert np.allclose(np.asarray(mean), -base.numpy().mean(0))


def test_meta_and_sparse_tensors_rejected_clearly():
    with pytest.raises(TypeError, match="meta tensor"):
        nf.layer_norm(torch.empty(3, 8, device="meta"), 8)
    with pytest.raises(TypeError, match="sparse"):
        nf.layer_norm(torch.randn(3, 8).to_sparse(), 8)
    with pytest.raises(TypeError, match="sparse"):
        nf.layer_norm(torch.randn(3, 8), 8, weight=torch.ones(8).to_sparse())


def test_modules_on_meta_device_use_fake_kernels():
    m = nft.BatchNorm2d(4, device="meta")
    y = m(torch.empty(2, 4, 3, 3, device="meta").contiguous(memory_format=torch.channels_last))
    assert y.is_meta and y.shape == (2, 4, 3, 3) and y.is_contiguous(memory_format=torch.channels_last)


def test_plain_functions_compile_and_export():
    """normfast.* on torch tensors inside torch.compile / torch.export: the registered ops."""
    x, r = torch.randn(4, 6), torch.randn(4, 6)
    f = torch.compile(lambda x, r: (nf.batch_norm(x, None, None, training=True, channel_axis=-1),
                                    nf.add_rms_norm(x, r, 6, eps=1e-6)[0]), fullgraph=True, backend="aot_eager")
    bn, rms = f(x, r)
    assert torch.allclose(bn, nn.functional.batch_norm(x, None, None, training=True), atol=1e-6)
    assert torch.allclose(rms, nn.functional.rms_norm(x + r, (6,), eps=1e-6), atol=1e-6)

    class M(nn.Module):
        def forward(self, x):
            return nf.group_norm(x, 2, eps=1e-5)
    xe = torch.randn(2, 4, 3)
    ep = torch.export.export(M(), (xe,))
    assert "normfast.group_norm.default" in {str(n.target) for n in ep.graph.nodes}
    assert torch.allclose(ep.module()(xe), nn.functional.group_norm(xe, 2), atol=1e-6)
