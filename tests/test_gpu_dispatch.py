"""Public API on CuPy arrays (GPU route of the dispatcher): CuPy in, CuPy out, values equal to
the CPU path.  Marked gpu: skipped without a usable CUDA device."""
import numpy as np
import pytest

import normfast as nf

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no usable CUDA device: {e}")
    return cupy


CALLS = [
    ("layer_norm", lambda m, x, w: m.layer_norm(x, x.shape[-1], w[: x.shape[-1]], w[: x.shape[-1]], return_stats=True)),
    ("rms_norm", lambda m, x, w: m.rms_norm(x, x.shape[-1], w[: x.shape[-1]], eps=1e-6, return_stats=True)),
    ("batch_norm", lambda m, x, w: m.batch_norm(x, None, None, w[:6], w[:6], True, return_stats=True)),
    ("batch_norm_nhwc", lambda m, x, w: m.batch_norm(x, None, None, None, None, True, channel_axis=-1,
                                                       return_stats=True)),
    ("group_norm", lambda m, x, w: m.group_norm(x, 3, w[:6], w[:6], return_stats=True)),
    ("instance_norm", lambda m, x, w: m.instance_norm(x, return_stats=True)),
    ("normalize", lambda m, x, w: m.normalize(x, axis=(0, 2), return_stats=True)),
    ("moments", lambda m, x, w: m.moments(x, axis=(0, 2))),
    ("add_layer_norm", lambda m, x, w: m.add_layer_norm(x, x, x.shape[-1])),
]


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-10)])
def test_cupy_round_trip(cp, name, call, dtype, tol):
    rng = np.random.default_rng(0)
    x = (3 + rng.standard_normal((4, 6, 5, 7))).astype(dtype)
    w = rng.standard_normal(16).astype(dtype)
    ref = call(nf, x, w)
    got = call(nf, cp.asarray(x), cp.asarray(w))
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got):
        assert isinstance(g, cp.ndarray)
        assert np.abs(cp.asnumpy(g).astype(np.float64) - np.asarray(r, np.float64)).max() <= tol * (1 + np.abs(r).max())


def test_cupy_running_stats_and_backward(cp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6, 9)).astype(np.float32)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rmd, rvd = cp.asarray(rm), cp.asarray(rv)
    y, m, r = nf.batch_norm(x, rm, rv, training=True, return_stats=True)
    yd, md, rd = nf.batch_norm(cp.asarray(x), rmd, rvd, training=True, return_stats=True)
    assert np.allclose(cp.asnumpy(rmd), rm, atol=1e-6) and np.allclose(cp.asnumpy(rvd), rv, atol=1e-6)
    g = nf.batch_norm_backward(x, x, m, r, np.ones(6, np.float32))
    gd = nf.batch_norm_backward(cp.asarray(x), cp.asarray(x), md, rd, cp.ones(6, cp.float32))
    for a, b in zip(g, gd):
        assert np.allclose(cp.asnumpy(b), a, atol=1e-4)


def test_torch_cuda_tensor_zero_copy(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    t = torch.randn(16, 64, device="cuda")
    y = nf.layer_norm(t, 64)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    assert torch.allclose(y, torch.nn.functional.layer_norm(t, (64,)), atol=1e-5)
