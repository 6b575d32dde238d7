"""One test body per operator, run on every backend (CuPy's numpy_cupy_allclose idea): NumPy,
torch CPU tensors and array-api-strict arrays (both zero-copy through DLPack), CuPy on the CUDA
emulator, and CuPy on a real device (marked ``gpu``).  Each result comes back
as the caller's array type and matches the float64 / long-double NumPy reference."""
import numpy as np
import pytest

import normfast as nf
from _helpers import (assert_close_ref, ref_batch_norm_train, ref_group_norm, ref_instance_norm, ref_layer_norm,
                      ref_moments, ref_normalize, ref_rms_norm)
from _reference import norm_backward


class Backend:
    def __init__(self, name, asarray, to_numpy, is_own, ulps=1.0):
        self.name, self.asarray, self.to_numpy, self.is_own = name, asarray, to_numpy, is_own
        self.ulps = ulps


def _numpy(monkeypatch):
    return Backend("numpy", np.asarray, np.asarray, lambda a: isinstance(a, np.ndarray))


def _torch(monkeypatch):
    torch = pytest.importorskip("torch")
    return Backend("torch", torch.from_numpy, lambda t: t.numpy(), lambda a: isinstance(a, torch.Tensor))


def _strict(monkeypatch):
    xs = pytest.importorskip("array_api_strict")
    pytest.importorskip("array_api_compat")
    return Backend("array-api-strict", xs.asarray, np.asarray,
                   lambda a: type(a).__module__.startswith("array_api_strict"))


def _cupy(kind):
    def make(monkeypatch):
        from cuda_emu import backend
        cp = backend(kind, monkeypatch)
        # the GPU normalizes in float32 arithmetic (float64 statistics): a few ulps, see README
        return Backend(f"cupy-{kind}", cp.asarray, cp.asnumpy, lambda a: type(a).__module__.split(".")[0]
                       in ("cupy", "fakecupy") or type(a).__name__ == "ndarray" and not isinstance(a, np.ndarray),
                       ulps=8.0)
    return make


@pytest.fixture(params=[pytest.param(_numpy, id="numpy"), pytest.param(_torch, id="torch"),
                        pytest.param(_strict, id="array-api-strict"), pytest.param(_cupy("emu"), id="cupy-emu"),
                        pytest.param(_cupy("cuda"), id="cupy-cuda", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    return request.param(monkeypatch)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


def _data(dtype, *shape, loc=3.0):
    rng = np.random.default_rng(sum(shape))
    return (loc + rng.normal(size=shape)).astype(dtype)


def _check(be, got, ref, dtype, what):
    assert be.is_own(got), f"{what}: result is a {type(got).__name__}, not the caller's type"
    assert_close_ref(be.to_numpy(got), ref, dtype=dtype, ulps=be.ulps, what=f"{be.name} {what}",
                     atol=(2e-6 if dtype == np.float32 else 1e-12) if be.ulps > 1 else 0.0)


def test_layer_and_rms_norm(backend, dtype):
    x, w, b = _data(dtype, 6, 48), _data(dtype, 48, loc=1.0), _data(dtype, 48, loc=0.0)
    X, W, B = (backend.asarray(a) for a in (x, w, b))
    _check(backend, nf.layer_norm(X, 48, W, B), ref_layer_norm(x, 48, w, b)[0], dtype, "layer_norm")
    _check(backend, nf.rms_norm(X, 48, W, 1e-6), ref_rms_norm(x, 48, w, 1e-6)[0], dtype, "rms_norm")


def test_batch_group_instance_norm(backend, dtype):
    x, w, b = _data(dtype, 4, 6, 5), _data(dtype, 6, loc=1.0), _data(dtype, 6, loc=0.0)
    X, W, B = (backend.asarray(a) for a in (x, w, b))
    _check(backend, nf.batch_norm(X, None, None, W, B, training=True), ref_batch_norm_train(x, w, b)[0], dtype,
           "batch_norm")
    _check(backend, nf.group_norm(X, 3, W, B), ref_group_norm(x, 3, w, b)[0], dtype, "group_norm")
    _check(backend, nf.instance_norm(X, weight=W, bias=B), ref_instance_norm(x, w, b)[0], dtype, "instance_norm")
    _check(backend, nf.normalize(X, axis=(0, 2)), ref_normalize(x, (0, 2))[0], dtype, "normalize")


def test_moments(backend, dtype):
    x = _data(dtype, 7, 5)
    mean, var = nf.moments(backend.asarray(x), axis=0)
    rm, rv, _ = ref_moments(x, axis=0)
    for got, ref, what in ((mean, rm, "mean"), (var, rv, "var")):
        assert backend.is_own(got)
        np.testing.assert_allclose(backend.to_numpy(got).astype(np.float64), ref,
                                   rtol=1e-6 if dtype == np.float32 else 1e-12, err_msg=what)


@pytest.mark.parametrize("kind", ["layer", "batch", "group"])
def test_backward(backend, dtype, kind):
    x, dy, w = _data(dtype, 4, 6, 5), _data(dtype, 4, 6, 5, loc=0.0), _data(dtype, 6, loc=1.0)
    if kind == "layer":
        x, dy, w = x.reshape(4, 30), dy.reshape(4, 30), np.resize(w, 30)
        _, mean, rstd = nf.layer_norm(x, 30, w, return_stats=True)
        got = nf.layer_norm_backward(*(backend.asarray(a) for a in (dy, x, mean, rstd)), 30, backend.asarray(w))
        ref = norm_backward("layer", dy, x, w, normalized_shape=(30,))
    elif kind == "batch":
        _, mean, rstd = nf.batch_norm(x, None, None, w, None, training=True, return_stats=True)
        got = nf.batch_norm_backward(*(backend.asarray(a) for a in (dy, x, mean, rstd, w)))
        ref = norm_backward("batch", dy, x, w)
    else:
        _, mean, rstd = nf.group_norm(x, 3, w, return_stats=True)
        got = nf.group_norm_backward(*(backend.asarray(a) for a in (dy, x, mean, rstd)), 3, backend.asarray(w))
        ref = norm_backward("group", dy, x, w, groups=3)
    scale = 1e-5 if dtype == np.float32 else 1e-11
    for g, r, what in zip(got, ref, ("grad_x", "grad_weight", "grad_bias")):
        assert backend.is_own(g), what
        gn = backend.to_numpy(g).astype(np.float64)
        np.testing.assert_allclose(gn, r, rtol=scale, atol=scale * (1 + np.abs(r).max()), err_msg=f"{kind} {what}")
