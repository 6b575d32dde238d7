"""normfast.nn layers: torch checkpoints round-trip, forward/backward match torch modules."""
import numpy as np
import pytest

import normfast.nn as nn

torch = pytest.importorskip("torch")


def _randomize(mod):
    g = torch.Generator().manual_seed(0)
    for p in mod.parameters():
        p.data = torch.rand(p.shape, generator=g) + 0.5
    return mod


LAYERS = [
    (lambda: torch.nn.BatchNorm2d(6), lambda: nn.BatchNorm(6), (4, 6, 5, 5)),
    (lambda: torch.nn.BatchNorm1d(6, momentum=None), lambda: nn.BatchNorm(6, momentum=None), (8, 6, 7)),
    (lambda: torch.nn.LayerNorm((5, 7)), lambda: nn.LayerNorm((5, 7)), (3, 5, 7)),
    (lambda: torch.nn.GroupNorm(3, 6), lambda: nn.GroupNorm(3, 6), (4, 6, 5, 5)),
    (lambda: torch.nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
     lambda: nn.InstanceNorm(6, affine=True, track_running_stats=True), (4, 6, 5, 5)),
    (lambda: torch.nn.RMSNorm(7, eps=1e-6), lambda: nn.RMSNorm(7, eps=1e-6), (3, 5, 7)),
]


@pytest.mark.parametrize("make_t,make_n,shape", LAYERS)
def test_checkpoint_round_trip_and_training_steps(make_t, make_n, shape):
    tm = _randomize(make_t())
    nm = make_n().load_state_dict(tm.state_dict())
    assert sorted(nm.state_dict()) == sorted(tm.state_dict())
    rng = np.random.default_rng(0)
    for step in range(3):
        x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        yt = tm(xt)
        y = nm(x)
        assert np.abs(y - yt.detach().numpy()).max() < 2e-5
        gy = rng.standard_normal(shape).astype(np.float32)
        gx = nm.backward(gy)
        tgx, *tgp = torch.autograd.grad(yt, [xt] + list(tm.parameters()), torch.from_numpy(gy))
        assert np.abs(gx - tgx.numpy()).max() < 1e-4
        names = [n for n, _ in tm.named_parameters()]
        for n, g in zip(names, tgp):
            assert np.abs(nm.grads[n] - g.numpy()).max() < 1e-3 * (1 + np.abs(g.numpy()).max())
    for k, v in tm.state_dict().items():
        assert np.allclose(np.asarray(nm.state_dict()[k]), v.numpy(), rtol=1e-5, atol=1e-6), k
    # eval mode uses the running statistics
    tm.eval()
    nm.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    assert np.abs(nm(x) - tm(torch.from_numpy(x)).detach().numpy()).max() < 2e-5
    # and the state round-trips back into a fresh torch module
    tm2 = make_t()
    tm2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in nm.state_dict().items()})
    for k, v in tm.state_dict().items():
        assert torch.allclose(tm2.state_dict()[k], v)


def test_load_state_dict_errors():
    bn = nn.BatchNorm(4)
    with pytest.raises(KeyError, match="missing"):
        bn.load_state_dict({"weight": np.ones(4)})
    sd = {k: np.asarray(v) for k, v in bn.state_dict().items()}
    sd["weight"] = np.ones(5)
    with pytest.raises(ValueError, match="weight"):
        bn.load_state_dict(sd)

