"""Dispatcher: results come back as the caller's array type, zero-copy where possible."""
import subprocess
import sys

import numpy as np
import pytest

import normfast as nf
from normfast import _portable


def test_import_does_not_pull_heavy_backends():
    code = "import sys, normfast; print(sorted(m for m in ('torch','cupy','dask','jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_backends_and_get_backend():
    b = nf.backends()
    assert b[0] == "numpy"
    assert nf.get_backend(np.zeros(3)) == "numpy"
    with pytest.raises(TypeError, match="x must be an array"):
        nf.get_backend(object())


CASES = [
    ("layer_norm", lambda m, x: m.layer_norm(x, (x.shape[-1],))),
    ("rms_norm", lambda m, x: m.rms_norm(x, (x.shape[-1],))),
    ("batch_norm", lambda m, x: m.batch_norm(x, None, None, training=True)),
    ("group_norm", lambda m, x: m.group_norm(x, 2)),
    ("instance_norm", lambda m, x: m.instance_norm(x)),
    ("normalize", lambda m, x: m.normalize(x, axis=(0, 2))),
]


@pytest.mark.parametrize("name,call", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_cpu_round_trip(name, call, dtype):
    torch = pytest.importorskip("torch")
    x_np = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(dtype)
    xt = torch.from_numpy(x_np.copy())
    y = call(nf, xt)
    assert isinstance(y, torch.Tensor) and y.dtype == xt.dtype and y.device == xt.device
    assert np.array_equal(y.numpy(), call(nf, x_np))


def test_torch_zero_copy_in_place_and_requires_grad():
    torch = pytest.importorskip("torch")
    xt = torch.randn(16, 32)
    ref = nf.layer_norm(xt.numpy().copy(), 32)
    ptr = xt.data_ptr()
    y = nf.layer_norm(xt, 32, out=xt)
    assert y is xt and xt.data_ptr() == ptr               # written through the zero-copy view
    assert np.array_equal(xt.numpy(), ref)
    xg = torch.randn(4, 8, requires_grad=True)
    y = nf.layer_norm(xg, 8)
    assert isinstance(y, torch.Tensor)
    assert torch.allclose(y, torch.nn.functional.layer_norm(xg, (8,)).detach(), atol=1e-6)


def test_torch_output_is_zero_copy_of_result():
    torch = pytest.importorskip("torch")
    xt = torch.randn(8, 64)
    out = np.empty((8, 64), np.float32)
    y = nf.layer_norm(xt, 64, out=out)
    assert isinstance(y, np.ndarray) and y is out          # out given as NumPy: the same object comes back
    y2 = nf.layer_norm(xt, 64)
    view = np.from_dlpack(y2)
    assert view.__array_interface__["data"][0] == y2.data_ptr()


def test_torch_running_stats_updated_in_place():
    torch = pytest.importorskip("torch")
    x = torch.randn(8, 3, 5)
    rm, rv = torch.zeros(3), torch.ones(3)
    rmt, rvt = torch.zeros(3), torch.ones(3)
    nf.batch_norm(x, rm, rv, training=True)
    torch.nn.functional.batch_norm(x, rmt, rvt, training=True)
    assert torch.allclose(rm, rmt, atol=1e-6) and torch.allclose(rv, rvt, atol=1e-6)


def test_torch_backward_and_stats_types():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 10, dtype=torch.float64)
    y, mean, rstd = nf.layer_norm(x, 10, return_stats=True)
    assert all(isinstance(t, torch.Tensor) for t in (y, mean, rstd))
    gx, gw, gb = nf.layer_norm_backward(torch.ones_like(x), x, mean, rstd, 10)
    assert isinstance(gx, torch.Tensor) and gw is None and gb is None


def test_mixed_inputs():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 6)
    w = np.linspace(0.5, 1.5, 6).astype(np.float32)
    y = nf.layer_norm(x, 6, weight=w, bias=[0.0] * 6)
    assert isinstance(y, torch.Tensor)
    assert np.allclose(y.numpy(), nf.layer_norm(x.numpy(), 6, w), atol=1e-6)


def test_array_api_strict_round_trip():
    xs = pytest.importorskip("array_api_strict")
    x_np = np.random.default_rng(1).standard_normal((4, 6, 3))
    x = xs.asarray(x_np)
    y = nf.layer_norm(x, 3)
    assert type(y) is type(x)
    assert np.array_equal(np.from_dlpack(y), nf.layer_norm(x_np, 3))
    m, v = nf.moments(x, axis=0)
    assert type(m) is type(x)


PORTABLE = [
    ("layer_norm", (3,), {}),
    ("rms_norm", (3,), {"eps": 1e-6}),
    ("normalize", (), {"axis": (0, 2)}),
    ("batch_norm", (None, None), {"training": True}),
    ("group_norm", (2,), {}),
    ("instance_norm", (), {}),
]


@pytest.mark.parametrize("name,args,kw", PORTABLE)
def test_portable_implementation_matches_kernels(name, args, kw):
    xs = pytest.importorskip("array_api_strict")
    pytest.importorskip("array_api_compat")
    x_np = (100 + np.random.default_rng(2).standard_normal((4, 6, 3)))
    y = getattr(_portable, name)(xs.asarray(x_np), *args, return_stats=True, **kw)
    ref = getattr(nf, name)(x_np, *args, return_stats=True, **kw)
    for a, r in zip(y, ref):
        assert np.allclose(np.from_dlpack(a), r, rtol=1e-10, atol=1e-10)


def test_portable_moments_and_running_update():
    xs = pytest.importorskip("array_api_strict")
    pytest.importorskip("array_api_compat")
    x_np = np.random.default_rng(3).standard_normal((50, 4, 2))
    m, v, n = _portable.moments(xs.asarray(x_np), axis=(0, 2), correction=1, return_count=True)
    rm, rv, rn = nf.moments(x_np, axis=(0, 2), correction=1, return_count=True)
    assert n == rn and np.allclose(np.from_dlpack(m), rm) and np.allclose(np.from_dlpack(v), rv)
    run_m, run_v = xs.zeros(4, dtype=xs.float64), xs.ones(4, dtype=xs.float64)
    _portable.batch_norm(xs.asarray(x_np), run_m, run_v, training=True)
    rm2, rv2 = np.zeros(4), np.ones(4)
    nf.batch_norm(x_np, rm2, rv2, training=True)
    assert np.allclose(np.from_dlpack(run_m), rm2) and np.allclose(np.from_dlpack(run_v), rv2)


def test_portable_rejects_backward():
    from normfast._dispatch import _route_portable
    with pytest.raises(TypeError, match="forward"):
        _route_portable(nf.layer_norm_backward.__wrapped__, (), {})


def test_jax_round_trip_if_installed():
    jnp = pytest.importorskip("jax.numpy")
    x_np = np.random.default_rng(4).standard_normal((5, 7)).astype(np.float32)
    y = nf.layer_norm(jnp.asarray(x_np), 7)
    assert type(y).__module__.startswith("jax")
    assert np.array_equal(np.asarray(y), nf.layer_norm(x_np, 7))


# ---------------------------------------------------------------- Array API devices (reliability issue, class 8)

def test_array_api_results_on_x_device_and_other_device_rejected():
    xs = pytest.importorskip("array_api_strict")
    pytest.importorskip("array_api_compat")
    dev = xs.Device("device1")
    xnp = np.random.default_rng(0).normal(size=(4, 8))
    x = xs.asarray(xnp, device=dev)
    y, mean, rstd = nf.layer_norm(x, 8, return_stats=True)
    for r in (y, mean, rstd):
        assert r.device == dev
    np.testing.assert_allclose(np.asarray(xs.asarray(y, device=xs.Device("CPU_DEVICE"))),
                               (xnp - xnp.mean(1, keepdims=True)) / np.sqrt(xnp.var(1, keepdims=True) + 1e-5),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="device"):
        nf.layer_norm(xs.asarray(xnp), 8, xs.asarray(np.ones(8), device=dev))


def test_array_api_input_without_array_api_compat_is_refused():
    pytest.importorskip("array_api_strict")
    import subprocess
    import sys
    code = ("import sys; sys.modules['array_api_compat'] = None\n"
            "import numpy as np, array_api_strict as xs, normfast as nf\n"
            "rm = np.zeros(3)\n"
            "try:\n    nf.batch_norm(xs.asarray(np.ones((4, 3))), rm, np.ones(3), training=True)\n"
            "except TypeError as e:\n    print('refused', 'array-api-compat' in str(e), float(rm.sum()) == 0.0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "refused True True"


def test_jax_results_are_jax_arrays_and_float64_narrowing_warns():
    """Every result of a JAX call comes back as a JAX array (statistics too, not NumPy), and float64
    statistics stored as float32 by JAX without x64 warn instead of being truncated silently."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("array_api_compat")
    jnp = jax.numpy
    xnp = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    x = jnp.asarray(xnp)
    with pytest.warns(RuntimeWarning, match="float64") if not jax.config.jax_enable_x64 else _no_warning():
        y, mean, rstd = nf.batch_norm(x, None, None, training=True, return_stats=True)
    for r in (y, mean, rstd):
        assert isinstance(r, jax.Array)
    x64 = xnp.astype(np.float64)
    ref_mean = x64.mean(axis=(0, 2))
    np.testing.assert_allclose(np.asarray(mean), ref_mean, rtol=1e-6)
    ref_y = (x64 - ref_mean[None, :, None]) / np.sqrt(x64.var(axis=(0, 2))[None, :, None] + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=2e-6)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
