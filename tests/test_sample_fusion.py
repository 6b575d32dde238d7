"""Channels-last group/instance norm fused per sample (statistics and normalization while the
sample is in cache) equals the two-pass path bitwise and the float64 reference."""
import numpy as np
import pytest

import normfast as nf
from normfast import _core


@pytest.fixture
def no_fusion(monkeypatch):
    def run(f):
        monkeypatch.setattr(_core, "SAMPLE_FUSE_MAX", 0)
        try:
            return f()
        finally:
            monkeypatch.undo()
    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,G", [((8, 5, 7, 12), 3), ((6, 300, 64), 64), ((4, 9, 9, 3), 1), ((5, 700, 40), 8)])
@pytest.mark.parametrize("affine", [False, True])
def test_fused_equals_two_pass_and_reference(no_fusion, dtype, shape, G, affine):
    rng = np.random.default_rng(0)
    x = (50 + rng.standard_normal(shape)).astype(dtype)
    C = shape[-1]
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    fused = nf.group_norm(x, G, w, b, channel_axis=-1, return_stats=True)
    plain = no_fusion(lambda: nf.group_norm(x, G, w, b, channel_axis=-1, return_stats=True))
    for a, p in zip(fused, plain):
        assert np.array_equal(a, p)
    X = x.astype(np.float64).reshape(shape[0], -1, G, C // G)
    ref = (X - X.mean((1, 3), keepdims=True)) / np.sqrt(X.var((1, 3), keepdims=True) + 1e-5)
    ref = ref.reshape(shape) * (1 if w is None else w) + (0 if b is None else b)
    tol = 2e-6 if dtype == np.float32 else 1e-11
    assert np.abs(fused[0] - ref).max() <= tol * (1 + np.abs(ref).max())
    fi = nf.instance_norm(x, weight=w, bias=b, channel_axis=-1, return_stats=True)
    pi = no_fusion(lambda: nf.instance_norm(x, weight=w, bias=b, channel_axis=-1, return_stats=True))
    for a, p in zip(fi, pi):
        assert np.array_equal(a, p)


def test_fused_in_place_and_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 30, 30, 32)).astype(np.float32)
    y = nf.group_norm(x, 4, channel_axis=-1)
    xx = x.copy()
    assert nf.group_norm(xx, 4, channel_axis=-1, out=xx) is xx and np.array_equal(xx, y)
    try:
        nf.set_num_threads(1)
        y1 = nf.group_norm(x, 4, channel_axis=-1)
    finally:
        nf.set_num_threads(None)
    assert np.array_equal(y, y1)
