"""Every public function under hypothesis: random shapes (zero-size and size-1 dims included),
layouts, negative strides, out= aliasing x, weight/bias present or absent.  Results equal the
float64 references of _helpers.py / _reference.py; inputs are never modified (unless out=x)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast as nf
from _helpers import (assert_close_ref, ref_batch_norm_train, ref_group_norm, ref_instance_norm, ref_layer_norm,
                      ref_rms_norm)
from _reference import norm_backward

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def arrays(draw, min_dims=2, max_dims=4, min_side=0, nonempty_axes=()):
    nd = draw(st.integers(min_dims, max_dims))
    shape = [draw(st.integers(min_side, 5)) for _ in range(nd)]
    for a in nonempty_axes:
        shape[a] = max(shape[a], 1)
    dtype = draw(dtypes)
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    x = (draw(st.sampled_from([0.0, 3.0, 1e3])) + rng.standard_normal(shape)).astype(dtype)
    if draw(st.booleans()) and nd:                     # a negative-stride view
        ax = draw(st.integers(0, nd - 1))
        x = np.flip(x, ax)
    return x, rng


def _param(rng, shape, dtype, present):
    return rng.standard_normal(shape).astype(dtype) if present else None


def _check(got, ref, x, what):
    scale = 1 + np.abs(np.asarray(ref, np.float64)).max() if np.size(ref) else 1
    atol = (1e-5 if x.dtype == np.float32 else 1e-10) * scale
    assert_close_ref(got, ref, dtype=got.dtype, ulps=4, what=what, atol=atol)


def _run(fn, x, in_place):
    """Call fn(x, out) with out=None or out=x (in place); check x untouched otherwise."""
    x0 = x.copy()
    if in_place:
        xi = x.copy()
        y = fn(xi, xi)
        assert y is xi
        return y
    y = fn(x, None)
    np.testing.assert_array_equal(x, x0)
    return y


@SETTINGS
@given(arrays(min_dims=1), st.booleans(), st.booleans(), st.booleans())
def test_layer_norm_and_rms_norm(xr, affine, bias, in_place):
    x, rng = xr
    k = 1 if x.ndim == 1 else rng.integers(1, x.ndim + 1)
    shape = x.shape[x.ndim - k:]
    w, b = _param(rng, shape, x.dtype, affine), _param(rng, shape, x.dtype, bias)
    y = _run(lambda a, o: nf.layer_norm(a, shape, w, b, out=o), x, in_place)
    _check(y, ref_layer_norm(x, shape, w, b)[0], x, "layer_norm")
    y = _run(lambda a, o: nf.rms_norm(a, shape, w, 1e-6, out=o), x, in_place)
    _check(y, ref_rms_norm(x, shape, w, 1e-6)[0], x, "rms_norm")


@SETTINGS
@given(arrays(nonempty_axes=(1,)), st.sampled_from([1, -1]), st.booleans(), st.booleans())
def test_batch_norm(xr, ca, affine, in_place):
    x, rng = xr
    C = x.shape[ca]
    w, b = _param(rng, (C,), x.dtype, affine), _param(rng, (C,), x.dtype, affine)
    per_channel = int(np.prod([n for i, n in enumerate(x.shape) if i != ca % x.ndim]))   # torch's rule
    if per_channel == 1:
        with pytest.raises(ValueError, match="more than 1 value"):
            nf.batch_norm(x, None, None, w, b, True, channel_axis=ca)
        return
    y = _run(lambda a, o: nf.batch_norm(a, None, None, w, b, True, channel_axis=ca, out=o), x, in_place)
    if per_channel and C:
        _check(y, ref_batch_norm_train(x, w, b, channel_axis=ca)[0], x, "batch_norm")
    else:
        assert y.shape == x.shape


@SETTINGS
@given(arrays(min_dims=3, nonempty_axes=(0, 1, -1)), st.sampled_from([1, -1]), st.booleans(), st.booleans(),
       st.data())
def test_group_and_instance_norm(xr, ca, affine, in_place, data):
    x, rng = xr
    C = x.shape[ca]
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    w, b = _param(rng, (C,), x.dtype, affine), _param(rng, (C,), x.dtype, affine)
    y = _run(lambda a, o: nf.group_norm(a, G, w, b, channel_axis=ca, out=o), x, in_place)
    _check(y, ref_group_norm(x, G, w, b, channel_axis=ca)[0], x, "group_norm")
    spatial = int(np.prod([n for i, n in enumerate(x.shape) if i not in (0, ca % x.ndim)]))
    if spatial == 1:
        with pytest.raises(ValueError, match="spatial"):
            nf.instance_norm(x, weight=w, bias=b, channel_axis=ca)
        return
    y = _run(lambda a, o: nf.instance_norm(a, None, None, w, b, channel_axis=ca, out=o), x, in_place)
    if spatial and C:
        _check(y, ref_instance_norm(x, w, b, channel_axis=ca)[0], x, "instance_norm")


@SETTINGS
@given(arrays(min_dims=2, max_dims=3, min_side=1), st.sampled_from(["layer", "rms", "batch", "group", "instance"]),
       st.sampled_from([1, -1]), st.booleans())
def test_backward_matches_reference(xr, kind, ca, affine):
    x, rng = xr
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    x0, dy0 = x.copy(), dy.copy()
    if kind in ("layer", "rms"):
        shape = x.shape[-1:]
        w = _param(rng, shape, x.dtype, affine)
        if kind == "layer":
            _, m, r = nf.layer_norm(x, shape, w, return_stats=True)
            got = nf.layer_norm_backward(dy, x, m, r, shape, w)
            ref = norm_backward("layer", dy, x, w, normalized_shape=shape)
        else:
            _, r = nf.rms_norm(x, shape, w, 1e-6, return_stats=True)
            got = nf.rms_norm_backward(dy, x, r, shape, w) + (None,)
            ref = norm_backward("rms", dy, x, w, eps=1e-6, normalized_shape=shape)
    else:
        C = x.shape[ca]
        w = _param(rng, (C,), x.dtype, affine)
        if kind == "batch":
            if x.size // C < 2:
                return
            _, m, r = nf.batch_norm(x, None, None, w, None, True, channel_axis=ca, return_stats=True)
            got = nf.batch_norm_backward(dy, x, m, r, w, channel_axis=ca)
            ref = norm_backward("batch", dy, x, w, channel_axis=ca)
        elif kind == "group":
            if x.ndim < 2:
                return
            _, m, r = nf.group_norm(x, 1, w, None, channel_axis=ca, return_stats=True)
            got = nf.group_norm_backward(dy, x, m, r, 1, w, channel_axis=ca)
            ref = norm_backward("group", dy, x, w, channel_axis=ca, groups=1)
        else:
            if x.ndim < 3 or x.size // (x.shape[0] * C) < 2:
                return
            _, m, r = nf.instance_norm(x, weight=w, channel_axis=ca, return_stats=True)
            got = nf.instance_norm_backward(dy, x, m, r, w, channel_axis=ca)
            ref = norm_backward("instance", dy, x, w, channel_axis=ca)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    for g, r_, name in zip(got, ref, ("grad_x", "grad_weight", "grad_bias")):
        if r_ is None or g is None:
            assert (g is None) == (r_ is None) or not affine, name
            continue
        _check(g, r_, x, name)


@SETTINGS
@given(arrays(min_dims=2, max_dims=3, min_side=1), st.booleans(), st.booleans())
def test_add_norms(xr, affine, in_place):
    x, rng = xr
    r = rng.standard_normal(x.shape).astype(x.dtype)
    N = x.shape[-1]
    w, b = _param(rng, (N,), x.dtype, affine), _param(rng, (N,), x.dtype, affine)
    h_ref = x + r
    if in_place:
        xx, rr = x.copy(), r.copy()
        y, h = nf.add_layer_norm(xx, rr, N, w, b, out=xx, residual_out=rr)
        assert y is xx and h is rr
    else:
        x0, r0 = x.copy(), r.copy()
        y, h = nf.add_layer_norm(x, r, N, w, b)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(r, r0)
    np.testing.assert_array_equal(h, h_ref)
    _check(y, ref_layer_norm(h_ref, (N,), w, b)[0], x, "add_layer_norm")
    y, h = nf.add_rms_norm(x, r, N, w, 1e-6)
    np.testing.assert_array_equal(h, h_ref)
    _check(y, ref_rms_norm(h_ref, (N,), w, 1e-6)[0], x, "add_rms_norm")
