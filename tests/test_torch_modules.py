"""normfast.torch's modules against torch's: every constructor option, forward, backward,
running statistics, state_dict both ways, train and eval; patch() on a small transformer and a
small CNN built from torch modules."""
import copy

import pytest

torch = pytest.importorskip("torch")
nft = pytest.importorskip("normfast.torch")
nn = torch.nn

CONFIGS = [
    # (torch class, ours, constructor kwargs, input shape)
    (nn.LayerNorm, nft.LayerNorm, dict(normalized_shape=6), (3, 4, 6)),
    (nn.LayerNorm, nft.LayerNorm, dict(normalized_shape=(4, 6), eps=1e-3), (3, 4, 6)),
    (nn.LayerNorm, nft.LayerNorm, dict(normalized_shape=6, bias=False), (5, 6)),
    (nn.LayerNorm, nft.LayerNorm, dict(normalized_shape=6, elementwise_affine=False), (5, 6)),
    (nn.RMSNorm, nft.RMSNorm, dict(normalized_shape=6), (3, 4, 6)),
    (nn.RMSNorm, nft.RMSNorm, dict(normalized_shape=(4, 6), eps=1e-6), (3, 4, 6)),
    (nn.RMSNorm, nft.RMSNorm, dict(normalized_shape=6, elementwise_affine=False), (5, 6)),
    (nn.GroupNorm, nft.GroupNorm, dict(num_groups=2, num_channels=6), (3, 6, 5)),
    (nn.GroupNorm, nft.GroupNorm, dict(num_groups=3, num_channels=6, eps=1e-3, affine=False), (3, 6, 2, 3)),
    (nn.BatchNorm1d, nft.BatchNorm1d, dict(num_features=6), (8, 6)),
    (nn.BatchNorm1d, nft.BatchNorm1d, dict(num_features=6, momentum=None), (4, 6, 5)),
    (nn.BatchNorm2d, nft.BatchNorm2d, dict(num_features=6, affine=False, momentum=0.3), (4, 6, 3, 2)),
    (nn.BatchNorm2d, nft.BatchNorm2d, dict(num_features=6, track_running_stats=False), (4, 6, 3, 2)),
    (nn.BatchNorm3d, nft.BatchNorm3d, dict(num_features=6, eps=1e-3), (2, 6, 2, 3, 2)),
    (nn.InstanceNorm1d, nft.InstanceNorm1d, dict(num_features=6), (3, 6, 5)),
    (nn.InstanceNorm1d, nft.InstanceNorm1d, dict(num_features=6, affine=True), (6, 5)),      # unbatched
    (nn.InstanceNorm2d, nft.InstanceNorm2d, dict(num_features=6, affine=True, track_running_stats=True),
     (3, 6, 4, 2)),
    (nn.InstanceNorm2d, nft.InstanceNorm2d, dict(num_features=6, track_running_stats=True, momentum=None),
     (3, 6, 4, 2)),
    (nn.InstanceNorm3d, nft.InstanceNorm3d, dict(num_features=6, affine=True), (2, 6, 2, 3, 2)),
]


def _randomize(m, seed):
    """Non-trivial parameters and running statistics, so a swapped weight or bias would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5 if "var" in name or "weight" in name
                        else torch.randn(t.shape, generator=g, dtype=t.dtype))


def _step(m, x, g):
    x = x.clone().requires_grad_()
    y = m(x)
    grads = torch.autograd.grad(y, [x] + list(m.parameters()), g)
    return y.detach(), grads


def _close(a, b, tol):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.allclose(a, b, atol=tol * (1 + b.abs().max().item()), rtol=tol), (a - b).abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 3e-5)])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_module_matches_torch(cfg, dtype, tol):
    tcls, ncls, kw, shape = CONFIGS[cfg]
    ref = tcls(**kw).to(dtype)
    _randomize(ref, cfg)
    ours = ncls(**kw).to(dtype)
    assert isinstance(ours, tcls)
    assert ours.load_state_dict(ref.state_dict()) is not None          # torch checkpoint -> ours, strict
    assert list(ours.state_dict()) == list(ref.state_dict())
    gen = torch.Generator().manual_seed(100 + cfg)
    for mode in ("train", "train", "eval"):                             # twice: momentum=None averages
        ref.train(mode == "train")
        ours.train(mode == "train")
        x = (2 + 3 * torch.randn(shape, generator=gen)).to(dtype)
        g = torch.randn(shape, generator=gen).to(dtype)
        yr, gr = _step(ref, x, g)
        yo, go = _step(ours, x, g)
        _close(yo, yr, tol)
        for a, b in zip(go, gr):
            _close(a, b, tol)
        for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
            if a.dtype.is_floating_point:
                _close(a, b, tol)
            else:
                assert torch.equal(a, b), k
    back = tcls(**kw).to(dtype)
    back.load_state_dict(ours.state_dict())                             # ours -> torch checkpoint
    for k, v in back.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])


@pytest.mark.parametrize("rms", [False, True])
def test_fused_add_norm_module(rms):
    tcls, ncls = (nn.RMSNorm, nft.AddRMSNorm) if rms else (nn.LayerNorm, nft.AddLayerNorm)
    ref, ours = tcls(8).double(), ncls(8).double()
    _randomize(ref, 3)
    ours.load_state_dict(ref.state_dict())
    x, r = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    xr, rr, xo, ro = (t.clone().requires_grad_() for t in (x, r, x, r))
    hr = xr + rr
    yr = ref(hr)
    yo, ho = ours(xo, ro)
    _close(ho.detach(), hr.detach(), 1e-12)
    _close(yo.detach(), yr.detach(), 1e-10)
    gy, gh = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    leaves_r, leaves_o = [xr, rr, *ref.parameters()], [xo, ro, *ours.parameters()]
    for a, b in zip(torch.autograd.grad((yo, ho), leaves_o, (gy, gh)), torch.autograd.grad((yr, hr), leaves_r, (gy, gh))):
        _close(a, b, 1e-10)


def test_patch_keeps_objects_and_skips_subclasses():
    class MyLN(nn.LayerNorm):
        pass

    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), MyLN(4), nn.BatchNorm1d(4))
    params = [id(p) for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert nft.patch(m) is m
    assert type(m[1]) is nft.LayerNorm and type(m[2]) is MyLN and type(m[3]) is nft.BatchNorm1d
    assert [id(p) for p in m.parameters()] == params
    (m(torch.randn(5, 4)) * torch.randn(5, 4)).sum().backward()   # a plain sum of BN output has no gradient
    before = m[1].weight.detach().clone()
    opt.step()                                     # the optimizer built before patching still works
    assert not torch.equal(before, m[1].weight)
    nft.unpatch(m)
    assert type(m[1]) is nn.LayerNorm
    with pytest.raises(TypeError):
        nft.patch("model")


class _Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


def small_transformer(d=32, layers=2, vocab=50):
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(vocab, d), *[_Block(d, 4) for _ in range(layers)], nn.RMSNorm(d),
                         nn.Linear(d, vocab))


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.GroupNorm(2, 8), nn.ReLU(), nn.InstanceNorm2d(8, affine=True), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))


def _train_and_eval(model, x, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        out = model(x)
    return losses, out, model.state_dict()


@pytest.mark.parametrize("kind", ["transformer", "cnn", "cnn_channels_last"])
def test_patched_models_match_torch(kind):
    if kind == "transformer":
        ref = small_transformer()
        x = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    else:
        ref = small_cnn()
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        if kind == "cnn_channels_last":
            ref = ref.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    ours = nft.patch(copy.deepcopy(ref))
    n_swapped = sum(type(m).__module__.startswith("normfast") for m in ours.modules())
    assert n_swapped == (5 if kind == "transformer" else 4)
    lr, outr, sdr = _train_and_eval(ref, x)
    lo, outo, sdo = _train_and_eval(ours, x)
    assert lo == pytest.approx(lr, rel=1e-5)
    _close(outo, outr, 1e-4)
    for k, v in sdr.items():
        if v.dtype.is_floating_point:
            _close(sdo[k], v, 1e-4)
        else:
            assert torch.equal(sdo[k], v), k
