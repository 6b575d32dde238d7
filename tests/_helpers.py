"""Shared test helpers (an importable module: ``from _helpers import ...``): the float64 / long-double NumPy
references, input builders (dtypes, layouts, non-contiguous views), the ``out=``
driver and tolerance checks.  Nothing in the references calls normfast.

Tolerances (see ``assert_close_ref``):
  float64 output : |got - ref| <= 1e-12 + 1e-12 * |ref|
  float32 output : |got - ref| <= 1 ulp_f32(ref) + 1e-9   (the kernels evaluate in
                   float64 and round once, so the true bound is ~0.5 ulp)
  float16 output : |got - ref| <= 1 ulp_f16(ref) + 1e-7   (float16 is computed in
                   float32 and rounded: at most one extra rounding)
The reference is always computed in long double from the *same* (rounded)
input values the kernel sees.  For float64 data whose spread is tiny next to its
magnitude, ``mean_rounding_atol`` adds the floor set by a float64 mean.
"""
import math
import warnings

import numpy as np

DTYPES = (np.float16, np.float32, np.float64)
DTYPE_IDS = ("f16", "f32", "f64")
LAYOUTS = ("contig", "strided", "transposed", "reversed")
OUT_MODES = (None, "inplace", "separate", "separate_strided")
AFFINES = ("none", "weight", "bias", "both")

LD = np.longdouble


# --------------------------------------------------------------------------- inputs


def make_x(rng, shape, dtype, layout="contig", loc=0.5, scale=2.0):
    """Random array of `shape`/`dtype` in one of several memory layouts.

    contig     : C-contiguous
    strided    : every other element along axis 1 (axis 0 for 1-d), like x[:, ::2]
    transposed : the transpose of a C-contiguous array (Fortran order)
    reversed   : negative stride on axis 0
    """
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if layout == "contig":
        return rng.normal(loc, scale, shape).astype(dtype)
    if layout == "strided":
        ax = 1 if len(shape) >= 2 else 0
        bshape = list(shape)
        bshape[ax] *= 2
        base = rng.normal(loc, scale, bshape).astype(dtype)
        idx = [slice(None)] * len(shape)
        idx[ax] = slice(None, None, 2)
        return base[tuple(idx)]
    if layout == "transposed":
        return rng.normal(loc, scale, shape[::-1]).astype(dtype).T
    if layout == "reversed":
        return rng.normal(loc, scale, shape).astype(dtype)[::-1]
    raise ValueError(layout)


def unaligned_copy(x):
    """A C-contiguous copy of x whose data pointer is not aligned to its itemsize."""
    buf = np.zeros(x.nbytes + x.itemsize + 1, np.uint8)
    u = buf[1:1 + x.nbytes].view(x.dtype).reshape(x.shape)
    u[...] = x
    assert not u.flags.aligned or x.itemsize == 1
    return u


def odd_out(shape, dtype, kind):
    """An empty C-contiguous output whose data pointer is misaligned on purpose:
    'elem' -> offset by one element (itemsize-aligned, not 16-byte aligned),
    'byte' -> offset by one byte (not even itemsize-aligned).  Filled with NaN."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if kind == "elem":
        base = np.full(n + 2, np.nan, dtype)
        off = 1 if (base.ctypes.data + dtype.itemsize) % 16 else 2
        out = base[off:off + n].reshape(shape)
        assert out.ctypes.data % 16 != 0
        return out
    if kind == "byte":
        raw = np.zeros(n * dtype.itemsize + 1, np.uint8)
        out = raw[1:].view(dtype).reshape(shape)
        out[...] = np.nan
        return out
    raise ValueError(kind)


def byteswapped_copy(x):
    """A copy of x in the non-native byte order (same values)."""
    return x.astype(x.dtype.newbyteorder())


def make_params(rng, shape, dtype, affine):
    """(weight, bias) for affine in AFFINES, in x's dtype (values exactly representable)."""
    dtype = np.dtype(dtype)
    w = rng.normal(1.0, 0.5, shape).astype(dtype) if affine in ("weight", "both") else None
    b = rng.normal(0.0, 1.0, shape).astype(dtype) if affine in ("bias", "both") else None
    return w, b


def channel_shape(N, C, spatial, channel_axis):
    spatial = tuple(spatial)
    if channel_axis in (1,):
        return (N, C) + spatial
    if channel_axis in (-1,):
        return (N,) + spatial + (C,)
    raise ValueError(channel_axis)


SPATIAL = {0: (), 1: (5,), 2: (4, 5), 3: (3, 4, 5)}


# --------------------------------------------------------------------------- references

def _expand(p, ndim, axes):
    """p has the shape of x's `axes` (sorted); give it singleton dims elsewhere."""
    p = np.asarray(p, dtype=LD)
    shape = [1] * ndim
    for a, n in zip(axes, p.shape):
        shape[a] = n
    return p.reshape(shape)


def ref_normalize(x, axes, weight=None, bias=None, eps=1e-5, rms=False):
    """Long-double reference: y = (x - mean) / sqrt(var + eps) * weight + bias over `axes`.

    weight/bias have the shape of x's normalized axes (in sorted axis order).
    Returns (y float64 of x's shape, mean float64, rstd float64) with mean/rstd
    shaped as the kept axes (mean is 0 for rms)."""
    x = np.asarray(x)
    nd = x.ndim
    if isinstance(axes, int):
        axes = (axes,)
    axes = tuple(sorted(a % nd for a in axes))
    kept = tuple(i for i in range(nd) if i not in axes)
    xl = x.astype(LD)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if rms:
            mean = np.zeros_like(xl.sum(axis=axes, keepdims=True))
            var = np.mean(xl * xl, axis=axes, keepdims=True)
            dev = xl
        else:
            # two-pass with a correction pass: deviations from a first mean, then their mean
            m0 = np.mean(xl, axis=axes, keepdims=True)
            d = xl - m0
            m1 = np.mean(d, axis=axes, keepdims=True)
            dev = d - m1
            mean = m0 + m1
            var = np.mean(dev ** 2, axis=axes, keepdims=True)
        rstd = 1 / np.sqrt(var + LD(eps))
        y = dev * rstd
        if weight is not None:
            y = y * _expand(weight, nd, axes)
        if bias is not None:
            y = y + _expand(bias, nd, axes)
    stat_shape = tuple(x.shape[i] for i in kept)
    return (y.astype(np.float64), mean.reshape(stat_shape).astype(np.float64),
            rstd.reshape(stat_shape).astype(np.float64))


def ref_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return ref_normalize(x, tuple(range(x.ndim - k, x.ndim)), weight, bias, eps)


def ref_rms_norm(x, normalized_shape, weight=None, eps=None):
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    y, _, rstd = ref_normalize(x, tuple(range(x.ndim - k, x.ndim)), weight, None, eps, rms=True)
    return y, rstd


def _channel_affine(y, weight, bias, ca):
    """y (float64 or long double, x's shape) * weight[c] + bias[c] along axis ca."""
    nd = y.ndim
    y = y.astype(LD)
    if weight is not None:
        y = y * _expand(weight, nd, (ca,))
    if bias is not None:
        y = y + _expand(bias, nd, (ca,))
    return y.astype(np.float64)


def ref_batch_norm_train(x, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """Returns (y, mean (C,), rstd (C,), unbiased var (C,))."""
    ca = channel_axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != ca)
    y, mean, rstd = ref_normalize(x, axes, None, None, eps)
    n = x.size // x.shape[ca]
    xl = x.astype(LD)
    var_u = (np.sum((xl - _expand(mean, x.ndim, (ca,))) ** 2, axis=axes) / LD(n - 1)).astype(np.float64)
    return _channel_affine(y, weight, bias, ca), mean, rstd, var_u


def ref_batch_norm_eval(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, channel_axis=1):
    ca = channel_axis % x.ndim
    rm = _expand(np.asarray(running_mean, np.float64), x.ndim, (ca,))
    rs = 1 / np.sqrt(_expand(np.asarray(running_var, np.float64), x.ndim, (ca,)) + LD(eps))
    y = (x.astype(LD) - rm) * rs
    return _channel_affine(y, weight, bias, ca)


def ref_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """Returns (y, mean (N, G), rstd (N, G))."""
    ca = channel_axis % x.ndim
    xc = np.moveaxis(x, ca, 1)
    N, C = xc.shape[:2]
    G = num_groups
    xg = xc.reshape((N, G, C // G) + xc.shape[2:])
    y, mean, rstd = ref_normalize(xg, tuple(range(2, xg.ndim)), None, None, eps)
    y = np.moveaxis(y.reshape(xc.shape), 1, ca)
    return _channel_affine(y, weight, bias, ca), mean, rstd


def ref_instance_norm(x, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """Returns (y, mean (N, C), rstd (N, C), unbiased var (N, C))."""
    ca = channel_axis % x.ndim
    axes = tuple(i for i in range(1, x.ndim) if i != ca)
    y, mean, rstd = ref_normalize(x, axes, None, None, eps)
    n = math.prod(x.shape[i] for i in axes)
    xc = np.moveaxis(x, ca, 1).astype(LD)
    var_u = (np.sum((xc - mean.reshape(mean.shape + (1,) * (xc.ndim - 2))) ** 2,
                    axis=tuple(range(2, xc.ndim))) / LD(n - 1)).astype(np.float64)
    return _channel_affine(y, weight, bias, ca), mean, rstd, var_u


def ref_moments(x, axis=None, correction=0):
    """(mean, var, count) in float64 via long double (NaN for empty reductions)."""
    xl = np.asarray(x).astype(LD)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        m0 = np.mean(xl, axis=axis, keepdims=True)
        d = xl - m0                       # variance is shift-invariant: work on deviations
        mean = (m0 + np.mean(d, axis=axis, keepdims=True))
        mean = mean.reshape(np.mean(d, axis=axis).shape)
        var = np.var(d, axis=axis, ddof=correction)
    if axis is None:
        count = x.size
    else:
        axs = (axis,) if isinstance(axis, int) else axis
        count = math.prod(x.shape[a] for a in axs)
    if count - correction <= 0:
        var = np.full_like(var, np.nan)
    return np.asarray(mean, np.float64), np.asarray(var, np.float64), count


# --------------------------------------------------------------------------- tolerances

def tolerance(ref, dtype, ulps=1.0):
    """Elementwise bound for an output of `dtype` against the float64 reference."""
    dtype = np.dtype(dtype).newbyteorder("=")        # byte order does not change the precision
    r = np.abs(np.asarray(ref, dtype=np.float64))
    if dtype == np.float64:
        return 1e-12 + 1e-12 * r
    with np.errstate(over="ignore"):
        sp = np.spacing(r.astype(dtype)).astype(np.float64)
    return ulps * sp + (1e-9 if dtype == np.float32 else 1e-7)


def assert_close_ref(got, ref, dtype=None, ulps=1.0, what="output", atol=0.0):
    """got (any float dtype) vs a float64 reference; NaN positions must agree.
    `atol` is added to the bound (for ill-conditioned inputs, see mean_rounding_atol)."""
    got = np.asarray(got)
    dtype = got.dtype if dtype is None else np.dtype(dtype)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    g = got.astype(np.float64)
    gn, rn = np.isnan(g), np.isnan(ref)
    assert np.array_equal(gn, rn), f"{what}: NaN pattern differs ({gn.sum()} NaN in result, {rn.sum()} in reference)"
    if g.size == 0:
        return
    err = np.where(rn, 0.0, np.abs(g - np.where(rn, 0.0, ref)))
    tol = np.where(rn, 1.0, tolerance(np.where(rn, 0.0, ref), dtype, ulps) + atol)
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())}/{bad.size} elements off the reference; worst at {i}: "
            f"got {g[i]!r}, expected {ref[i]!r}, |err| = {err[i]:.3e} > tol {tol[i]:.3e} "
            f"(max |err| = {err.max():.3e})")


def mean_rounding_atol(x, rstd, weight=None):
    """Error floor of a normalized float64 output: the float64 mean itself is only known to
    ~1 ulp of the data's magnitude, which the normalization multiplies by rstd * |w|.
    Negligible for well-conditioned data; dominant when the spread is tiny next to the offset."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0
    mag = float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0
    r = np.asarray(rstd, dtype=np.float64)
    rmax = float(np.nanmax(r)) if r.size and np.isfinite(r).any() else 0.0
    wmax = 1.0 if weight is None else max(1.0, float(np.max(np.abs(weight))))
    return 4.0 * float(np.spacing(mag)) * rmax * wmax


def assert_stats_close(got, ref, what="stats", rtol=1e-10, atol=1e-12):
    """Saved statistics are float64 for every input dtype (float64 accumulation)."""
    got = np.asarray(got)
    assert got.dtype == np.float64, f"{what}: dtype {got.dtype}, expected float64"
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


# --------------------------------------------------------------------------- out= driver

def call_with_out(fn, x, out_mode):
    """Run ``fn(x, out=...)`` in one of OUT_MODES and check the output contract.

    None             : fresh array, x untouched
    inplace          : out=x, the result is x
    separate         : out = a separate C-contiguous array (prefilled with NaN)
    separate_strided : out = a strided view into a NaN-filled buffer whose other
                       elements must stay NaN (no writes outside the view)
    Returns y."""
    x_before = x.copy()
    guard = None
    if out_mode is None:
        y = fn(x)
        assert isinstance(y, np.ndarray)
        assert y is not x
        assert not np.shares_memory(y, x)
    elif out_mode == "inplace":
        y = fn(x, out=x)
        assert y is x
    elif out_mode == "separate":
        out = np.full(x.shape, np.nan, dtype=x.dtype)
        y = fn(x, out=out)
        assert y is out
    elif out_mode == "separate_strided":
        shape = x.shape[:-1] + (2 * x.shape[-1],) if x.ndim else ()
        guard = np.full(shape, np.nan, dtype=x.dtype)
        out = guard[..., ::2] if x.ndim else guard
        y = fn(x, out=out)
        assert y is out
        if x.ndim:
            assert np.isnan(guard[..., 1::2]).all(), "wrote outside the out= view"
    else:
        raise ValueError(out_mode)
    assert y.shape == x.shape, (y.shape, x.shape)
    assert y.dtype == x.dtype, (y.dtype, x.dtype)
    if out_mode != "inplace":
        assert np.array_equal(x, x_before, equal_nan=True), "input was modified"
    return y
