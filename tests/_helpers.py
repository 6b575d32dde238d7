"""Shared test helpers (an importable module: ``from _helpers import ...``): the float64 / long-double NumPy
references, input builders (dtypes, layouts, non-contiguous views), the ``out=``
driver and tolerance checks.  Nothing in the references calls normfast.  Last, the
backward tests the five norms share (``BackwardTests``; each operator's test file
collects them on its own cases) and the ``BackwardCase`` driver they run on.

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
import itertools
import math
import os
import warnings

import _reference as bref
import numpy as np
import pytest

import normfast

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


def unusual_copies(x):
    """x's values in unusual memory: an unaligned copy and a byte-swapped copy."""
    return unaligned_copy(x), byteswapped_copy(x)


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
N, C = 3, 6                  # batch and channels of the channel norms' test shapes
CAS = (1, -1)                # channel axes: channels first, channels last
CA_IDS = ("cfirst", "clast")

# (shape, normalized_shape) of the row norms' tests (layer_norm, rms_norm)
ROW_NORM_CASES = [
    ((3, 4, 5, 6), 6),
    ((3, 4, 5, 6), (5, 6)),
    ((3, 4, 5, 6), [4, 5, 6]),
    ((3, 4, 5, 6), (3, 4, 5, 6)),
    ((7,), (7,)),
    ((5, 33), (33,)),
    ((2, 3, 40), 40),
]
ROW_NORM_CASE_IDS = [f"{'x'.join(map(str, s))}-ns{ns}" for s, ns in ROW_NORM_CASES]


def shape_tuple(ns):
    """A normalized_shape (int or sequence) as a tuple."""
    return (ns,) if isinstance(ns, int) else tuple(ns)


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


def assert_offset_accuracy(y, ref, mean, rmean, rstd, rrstd):
    """Data with a large offset (float32 output of unit scale): within 2e-6 of the reference and
    its tolerance; the statistics to float64 accuracy."""
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= 2e-6, f"max abs error {err:.3e} > 2e-6"
    assert_close_ref(y, ref)
    assert_stats_close(mean, rmean, "mean", rtol=1e-13)
    assert_stats_close(rstd, rrstd, "rstd", rtol=1e-9)


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


def assert_out_alignments(fn, x0, ref, out_kinds=(None, "elem", "byte", "inplace")):
    """``fn(x)`` / ``fn(x, out=...)`` on a fresh copy x of x0 for each out kind: None (allocated),
    'fresh' (a NaN-filled array), 'elem' / 'byte' (misaligned, see odd_out) or 'inplace' (out=x):
    the result is the out given and matches ref."""
    for out_kind in out_kinds:
        x = x0.copy()
        if out_kind is None:
            y = fn(x)
        elif out_kind == "inplace":
            y = fn(x, out=x)
            assert y is x
        else:
            out = np.full(x.shape, np.nan, x.dtype) if out_kind == "fresh" else odd_out(x.shape, x.dtype, out_kind)
            y = fn(x, out=out)
            assert y is out
        assert_close_ref(y, ref, what=f"out={out_kind}")


# --------------------------------------------------------------------------- subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env():
    """This process's environment with the checkout first on PYTHONPATH (for ``python -m normfast ...``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def have_module(name):
    """Whether `name` imports (any failure, not only ImportError, counts as missing)."""
    try:
        __import__(name)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- backward
# References: central finite differences of normfast's own forward (float64), torch.autograd
# (float32 / float64) and the float64 NumPy formulas of tests/_reference.py.

EPS = 1e-5


class BackwardCase:
    """One operator ('layer', 'rms', 'batch', 'batch_eval', 'group', 'instance') on one shape /
    layout, with uniform forward / backward / reference / torch calls."""

    def __init__(self, kind, shape, *, channel_axis=1, nshape=None, groups=None, eps=EPS):
        self.kind, self.shape, self.channel_axis = kind, tuple(shape), channel_axis
        self.nshape = None if nshape is None else tuple(nshape)
        self.groups, self.eps = groups, eps
        if kind in bref.ROW_KINDS:
            self.pshape = self.nshape
        else:
            self.pshape = (self.shape[channel_axis],)
        rng = np.random.default_rng(1234)
        C = self.pshape[0]
        # fixed running statistics for eval-mode batch norm (constants of the function)
        self.rm = rng.normal(0.3, 0.5, C)
        self.rv = rng.uniform(0.5, 2.0, C)

    @property
    def has_bias(self):
        return self.kind != "rms"

    @property
    def n_grads(self):
        return 2 if self.kind == "rms" else 3

    def __repr__(self):
        extra = ""
        if self.kind in bref.ROW_KINDS:
            extra = f"ns{self.nshape}" + ("" if self.eps == EPS else f"-eps{self.eps}")
        else:
            extra = f"ca{self.channel_axis}" + (f"g{self.groups}" if self.groups else "")
        return f"{self.kind}-{'x'.join(map(str, self.shape))}-{extra}".replace(" ", "")

    def values_per_stat(self):
        n = int(np.prod(self.shape))
        if self.kind in bref.ROW_KINDS:
            return int(np.prod(self.nshape))
        C = self.pshape[0]
        if self.kind in ("batch", "batch_eval"):
            return n // C
        N = self.shape[0]
        return n // (N * (self.groups if self.kind == "group" else C))

    # -- data -----------------------------------------------------------------------------------
    def data(self, dtype=np.float64, affine=True, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.normal(0.5, 1.5, self.shape).astype(dtype)
        dy = rng.normal(0.0, 1.0, self.shape).astype(dtype)
        w = b = None
        if affine:
            w = (1.0 + 0.3 * rng.normal(size=self.pshape)).astype(dtype)
            if self.has_bias:
                b = (0.2 * rng.normal(size=self.pshape)).astype(dtype)
        return x, dy, w, b

    # -- normfast -------------------------------------------------------------------------------
    def forward(self, x, w=None, b=None, stats=False, rm=None, rv=None):
        k = self.kind
        if k == "layer":
            return normfast.layer_norm(x, self.nshape, w, b, eps=self.eps, return_stats=stats)
        if k == "rms":
            return normfast.rms_norm(x, self.nshape, w, eps=self.eps, return_stats=stats)
        if k == "batch":
            return normfast.batch_norm(x, rm, rv, w, b, training=True, eps=self.eps,
                                       channel_axis=self.channel_axis, return_stats=stats)
        if k == "batch_eval":
            return normfast.batch_norm(x, self.rm.copy(), self.rv.copy(), w, b, training=False, eps=self.eps,
                                       channel_axis=self.channel_axis, return_stats=stats)
        if k == "group":
            return normfast.group_norm(x, self.groups, w, b, eps=self.eps, channel_axis=self.channel_axis,
                                       return_stats=stats)
        if k == "instance":
            return normfast.instance_norm(x, None, None, w, b, use_input_stats=True, eps=self.eps,
                                          channel_axis=self.channel_axis, return_stats=stats)
        raise ValueError(k)

    def stats(self, x, w=None, b=None):
        out = self.forward(x, w, b, stats=True)
        return out[1:]

    def backward(self, dy, x, stats, w=None, needs=None, out=None):
        k = self.kind
        kw = {} if needs is None else {"needs_input_grad": needs}
        if out is not None:
            kw["out"] = out
        if k == "layer":
            mean, rstd = stats
            return normfast.layer_norm_backward(dy, x, mean, rstd, self.nshape, w, **kw)
        if k == "rms":
            (rstd,) = stats
            return normfast.rms_norm_backward(dy, x, rstd, self.nshape, w, **kw)
        mean, rstd = stats
        if k in ("batch", "batch_eval"):
            return normfast.batch_norm_backward(dy, x, mean, rstd, w, training=(k == "batch"),
                                                channel_axis=self.channel_axis, **kw)
        if k == "group":
            return normfast.group_norm_backward(dy, x, mean, rstd, self.groups, w,
                                                channel_axis=self.channel_axis, **kw)
        if k == "instance":
            return normfast.instance_norm_backward(dy, x, mean, rstd, w, channel_axis=self.channel_axis, **kw)
        raise ValueError(k)

    def grads(self, dy, x, w=None, b=None, needs=None):
        """Forward (for the stats) then backward."""
        return self.backward(dy, x, self.stats(x, w, b), w, needs)

    def reference(self, dy, x, w=None, stats=None):
        kw = {}
        if stats is not None:
            if self.kind == "rms":
                kw["rstd"] = stats[0]
            else:
                kw["mean"], kw["rstd"] = stats
        r = bref.norm_backward(self.kind, dy, x, w, eps=self.eps, channel_axis=self.channel_axis,
                               normalized_shape=self.nshape, groups=self.groups,
                               running_mean=self.rm, running_var=self.rv, **kw)
        return r[:self.n_grads]

    # -- torch ----------------------------------------------------------------------------------
    def channels_first(self, a):
        if self.kind in bref.ROW_KINDS or self.channel_axis % len(self.shape) == 1:
            return np.ascontiguousarray(a)
        return np.ascontiguousarray(np.moveaxis(a, self.channel_axis, 1))

    def from_channels_first(self, a):
        if self.kind in bref.ROW_KINDS or self.channel_axis % len(self.shape) == 1:
            return a
        return np.moveaxis(a, 1, self.channel_axis)

    def torch_forward(self, F, torch, xt, wt, bt, rm=None, rv=None):
        k = self.kind
        if k == "layer":
            return F.layer_norm(xt, self.nshape, wt, bt, eps=self.eps)
        if k == "rms":
            return F.rms_norm(xt, self.nshape, wt, eps=self.eps)
        if k == "batch":
            return F.batch_norm(xt, rm, rv, wt, bt, training=True, eps=self.eps)
        if k == "batch_eval":
            return F.batch_norm(xt, torch.tensor(self.rm, dtype=xt.dtype), torch.tensor(self.rv, dtype=xt.dtype),
                                wt, bt, training=False, eps=self.eps)
        if k == "group":
            return F.group_norm(xt, self.groups, wt, bt, eps=self.eps)
        if k == "instance":
            return F.instance_norm(xt, weight=wt, bias=bt, use_input_stats=True, eps=self.eps)
        raise ValueError(k)

    def torch_grads(self, torch, x, dy, w, b, rm=None, rv=None):
        """torch.autograd's (grad_x, grad_weight[, grad_bias]) in this case's layout (None where not asked)."""
        F = torch.nn.functional
        xt = torch.from_numpy(self.channels_first(x)).requires_grad_(True)
        dyt = torch.from_numpy(self.channels_first(dy))
        inputs = [xt]
        wt = bt = None
        if w is not None:
            wt = torch.from_numpy(w.copy()).requires_grad_(True)
            inputs.append(wt)
            if b is not None:
                bt = torch.from_numpy(b.copy()).requires_grad_(True)
                inputs.append(bt)
        y = self.torch_forward(F, torch, xt, wt, bt, rm, rv)
        gs = torch.autograd.grad(y, inputs, dyt)
        out = [self.from_channels_first(gs[0].numpy())] + [g.numpy() for g in gs[1:]]
        out += [None] * (self.n_grads - len(out))
        return out


def channels_last(shape_cf):
    """channels-first shape (N, C, *spatial) -> channels-last (N, *spatial, C)."""
    return (shape_cf[0],) + tuple(shape_cf[2:]) + (shape_cf[1],)


GRAD_NAMES = ("grad_x", "grad_weight", "grad_bias")
TORCH_GRAD_TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def assert_grads_close(got, exp, rtol, atol=None):
    """Each gradient within rtol and atol (default rtol) times max(1, max |expected|)."""
    atol = rtol if atol is None else atol
    for name, g, e in zip(GRAD_NAMES, got, exp):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale, err_msg=name)


ROW_SHAPES = [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((5,), (5,)), ((2, 2, 3), (2, 2, 3)), ((4, 1), (1,))]
# channels-first shapes by spatial rank
CF_SHAPES = {0: (4, 6), 1: (2, 6, 5), 2: (2, 4, 3, 3), 3: (2, 6, 2, 3, 2)}


def _groups_for(C):
    return [g for g in (1, 2, 3, C) if C % g == 0]


def row_cases(kinds=("layer", "rms"), eps_rms=(EPS, None)):
    out = []
    for kind in kinds:
        for shape, ns in ROW_SHAPES:
            for eps in ((EPS,) if kind == "layer" else eps_rms):
                out.append(BackwardCase(kind, shape, nshape=ns, eps=eps))
    return out


def channel_cases(kinds=("batch", "batch_eval", "group", "instance"), ranks=(0, 1, 2, 3), all_groups=False):
    out = []
    for kind in kinds:
        for rank in ranks:
            if kind == "instance" and rank == 0:
                continue   # no spatial positions: instance statistics undefined
            cf = CF_SHAPES[rank]
            C = cf[1]
            groups = [None]
            if kind == "group":
                groups = _groups_for(C) if all_groups else [2 if C % 2 == 0 else 1]
            for g in groups:
                out.append(BackwardCase(kind, cf, channel_axis=1, groups=g))
                out.append(BackwardCase(kind, channels_last(cf), channel_axis=-1, groups=g))
    return out


Case = BackwardCase     # the case lists below, one a line
ALL_CASES = row_cases() + channel_cases(all_groups=True)
TORCH_CASES = (row_cases() + channel_cases(kinds=("batch", "batch_eval", "instance"))
               + channel_cases(kinds=("group",), all_groups=True))
NEEDS_CASES = [Case("layer", (3, 4, 5), nshape=(4, 5)), Case("rms", (6, 7), nshape=(7,)),
               Case("batch", (3, 4, 5)), Case("batch", (3, 5, 4), channel_axis=-1),
               Case("batch_eval", (3, 4, 5)), Case("group", (2, 6, 5), groups=3),
               Case("group", (2, 5, 6), groups=2, channel_axis=-1), Case("instance", (2, 4, 5)),
               Case("instance", (2, 3, 5, 4), channel_axis=-1)]
BAD_CASES = NEEDS_CASES
OFFSET_CASES = [Case("layer", (8, 4096), nshape=(4096,)), Case("layer", (2, 4, 1024), nshape=(4, 1024)),
                Case("rms", (8, 4096), nshape=(4096,)),
                Case("batch", (4096, 3)), Case("batch", (16, 3, 256)), Case("batch", (16, 256, 3), channel_axis=-1),
                Case("group", (2, 4, 4096), groups=2), Case("group", (2, 2048, 4), groups=2, channel_axis=-1),
                Case("instance", (2, 3, 4096)), Case("instance", (2, 4096, 3), channel_axis=-1)]
CONST_CASES = [Case("layer", (4, 33), nshape=(33,)), Case("rms", (4, 33), nshape=(33,)),
               Case("batch", (5, 3, 7)), Case("batch", (5, 7, 3), channel_axis=-1),
               Case("group", (2, 4, 9), groups=2), Case("instance", (2, 3, 9)),
               Case("instance", (2, 9, 3), channel_axis=-1)]
F16_CASES = [Case("layer", (4, 1025), nshape=(1025,)), Case("rms", (4, 1025), nshape=(1025,)),
             Case("rms", (4, 64), nshape=(64,), eps=None),
             Case("batch", (8, 3, 33)), Case("batch", (8, 33, 3), channel_axis=-1), Case("batch_eval", (8, 3, 33)),
             Case("group", (2, 6, 33), groups=3), Case("group", (2, 33, 6), groups=2, channel_axis=-1),
             Case("instance", (2, 3, 33)), Case("instance", (2, 33, 3), channel_axis=-1)]
NONCONTIG_CASES = [Case("layer", (6, 10), nshape=(10,)), Case("rms", (6, 10), nshape=(10,)),
                   Case("batch", (4, 3, 5)), Case("group", (2, 4, 5), groups=2),
                   Case("instance", (2, 4, 5), channel_axis=-1)]
# kernel paths: row blocks not dividing M, partial-buffer cap for wide rows, column mode with a
# partial last block, row mode with segments longer than one statistics chunk (8192)
PATH_CASES = [Case("layer", (33, 5), nshape=(5,)), Case("layer", (1000, 7), nshape=(7,)),
              Case("rms", (1000, 7), nshape=(7,)), Case("layer", (37, 131075), nshape=(131075,)),
              Case("batch", (10007, 3)), Case("batch", (3, 10007, 2), channel_axis=-1),
              Case("batch", (2, 3, 16389)), Case("batch", (129, 2, 5)),
              Case("group", (3, 100, 70), groups=10, channel_axis=-1), Case("group", (2, 4, 16389), groups=2),
              Case("instance", (2, 3, 16389)), Case("instance", (2, 700, 3), channel_axis=-1)]
EMPTY_CASES = [Case("layer", (0, 5), nshape=(5,)), Case("rms", (0, 3, 5), nshape=(3, 5)),
               Case("group", (0, 4, 3), groups=2), Case("instance", (0, 4, 3)),
               Case("instance", (0, 3, 4), channel_axis=-1)]
OUT_CASES = (row_cases(eps_rms=(EPS,)) + channel_cases(ranks=(0, 2))
             + [Case("layer", (300, 1000), nshape=(1000,)), Case("batch", (8, 9, 9, 33), channel_axis=-1),
                Case("group", (4, 32, 300), groups=8), Case("instance", (4, 300, 32), channel_axis=-1)])
OUT_F16_CASES = [Case("layer", (6, 10), nshape=(10,)), Case("batch", (4, 3, 5)), Case("group", (2, 4, 5), groups=2)]
OUT_REJECTED_CASES = [Case("layer", (6, 10), nshape=(10,)), Case("rms", (6, 10), nshape=(10,)),
                      Case("batch", (4, 3, 5)), Case("instance", (2, 4, 5), channel_axis=-1)]
del Case


def _fd(f, a, h):
    """Central differences of the scalar f() w.r.t. every entry of `a` (modified in place, restored)."""
    g = np.empty(a.shape, dtype=np.float64)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + h
        fp = f()
        a[idx] = orig - h
        fm = f()
        a[idx] = orig
        g[idx] = (fp - fm) / (2 * h)
    return g


FD_H = 1e-6
FD_TOL = dict(rtol=1e-6, atol=1e-7)


def for_kinds(argnames, values, ids=None):
    """Parametrize a BackwardTests test over those of `values` that belong to the collecting
    class's KINDS (a value is a BackwardCase, or a tuple whose first item is the kind, or the kind)."""
    def mark(f):
        f.kind_params = (argnames, list(values), ids)
        return f
    return mark


def _kind_of(v):
    return v.kind if isinstance(v, BackwardCase) else v[0] if isinstance(v, tuple) else v


class BackwardTests:
    """The backward tests the five norms share.  An operator's test file collects them on its own
    cases with ``class TestBackward(BackwardTests): KINDS = ("layer",)`` (and adds its own tests
    to that class); a test none of whose cases is of those kinds is left out of the subclass."""
    KINDS = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, f in vars(BackwardTests).items():
            if hasattr(f, "kind_params") and not cls._of_kinds(f.kind_params[1]):
                setattr(cls, name, None)             # not a test of this class

    @classmethod
    def _of_kinds(cls, values):
        return [v for v in values if _kind_of(v) in cls.KINDS]

    def pytest_generate_tests(self, metafunc):
        spec = getattr(metafunc.function, "kind_params", None)
        if spec is not None:
            argnames, values, ids = spec
            metafunc.parametrize(argnames, self._of_kinds(values), ids=ids)

    # -- float64 gradient check against central finite differences of normfast's forward ---------
    @pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
    @for_kinds("case", ALL_CASES, ids=repr)
    def test_finite_differences_float64(self, case, affine):
        x, dy, w, b = case.data(np.float64, affine)
        x0, dy0 = x.copy(), dy.copy()
        grads = case.grads(dy, x, w, b)
        assert len(grads) == case.n_grads
        np.testing.assert_array_equal(x, x0)       # backward does not modify its inputs
        np.testing.assert_array_equal(dy, dy0)

        def loss():
            return float(np.sum(case.forward(x, w, b) * dy))

        gx = _fd(loss, x, FD_H)
        assert grads[0].shape == x.shape and grads[0].dtype == np.float64
        np.testing.assert_allclose(grads[0], gx, **FD_TOL, err_msg="grad_x")
        if not affine:
            assert all(g is None for g in grads[1:])
            return
        gw = _fd(loss, w, FD_H)
        assert grads[1].shape == case.pshape and grads[1].dtype == np.float64
        np.testing.assert_allclose(grads[1], gw, **FD_TOL, err_msg="grad_weight")
        if case.has_bias:
            gb = _fd(loss, b, FD_H)
            assert grads[2].shape == case.pshape and grads[2].dtype == np.float64
            np.testing.assert_allclose(grads[2], gb, **FD_TOL, err_msg="grad_bias")

    @for_kinds("case", ALL_CASES, ids=repr)
    def test_matches_float64_reference(self, case):
        """Backward (fed with the forward's statistics) against the float64 formula with its own statistics."""
        x, dy, w, b = case.data(np.float64, True, seed=5)
        st = case.stats(x, w, b)
        got = case.backward(dy, x, st, w)
        exp = case.reference(dy, x, w)       # statistics computed by the reference itself
        for name, g, e in zip(GRAD_NAMES, got, exp):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12, err_msg=name)

    # -- against torch.autograd --------------------------------------------------------------------
    @pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @for_kinds("case", TORCH_CASES, ids=repr)
    def test_against_torch(self, case, dtype, affine):
        torch = pytest.importorskip("torch")
        if dtype == np.float32 and case.values_per_stat() == 1:
            # one value per statistic: the exact grad_x is 0; torch's float32 result is rounding
            # noise amplified by rstd = 1/sqrt(eps) (covered against float64 references elsewhere)
            pytest.skip("degenerate statistics, torch float32 is noise")
        x, dy, w, b = case.data(dtype, affine, seed=11)
        got = case.grads(dy, x, w, b)
        exp = case.torch_grads(torch, x, dy, w, b)
        tol = TORCH_GRAD_TOL[dtype]
        for name, g, e in zip(GRAD_NAMES, got, exp):
            if e is None:
                assert g is None, name
                continue
            assert g.dtype == dtype and g.shape == e.shape, name
            scale = max(1.0, float(np.max(np.abs(e))))
            np.testing.assert_allclose(g, e, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)

    # -- needs_input_grad and weight=None ----------------------------------------------------------
    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @for_kinds("case", NEEDS_CASES, ids=repr)
    def test_needs_input_grad(self, case, dtype):
        x, dy, w, b = case.data(dtype, True, seed=2)
        st = case.stats(x, w, b)
        full = case.backward(dy, x, st, w)
        assert all(g is not None for g in full)
        for needs in itertools.product([False, True], repeat=case.n_grads):
            got = case.backward(dy, x, st, w, needs=needs)
            assert isinstance(got, tuple) and len(got) == case.n_grads
            for i, (want, g, f) in enumerate(zip(needs, got, full)):
                if not want:
                    assert g is None, (needs, i)
                else:
                    assert g is not None, (needs, i)
                    np.testing.assert_array_equal(g, f, err_msg=f"needs={needs} slot {i}")
        # a list and other truthy values are accepted as well
        got = case.backward(dy, x, st, w, needs=[1] + [0] * (case.n_grads - 1))
        np.testing.assert_array_equal(got[0], full[0])
        assert all(g is None for g in got[1:])

    @for_kinds("case", NEEDS_CASES, ids=repr)
    def test_weight_none_gives_no_param_grads(self, case):
        x, dy, _, _ = case.data(np.float64, False, seed=4)
        st = case.stats(x)
        for needs in itertools.product([False, True], repeat=case.n_grads):
            got = case.backward(dy, x, st, None, needs=needs)
            assert len(got) == case.n_grads
            assert all(g is None for g in got[1:]), needs
            assert (got[0] is None) == (not needs[0]), needs
        gx = case.backward(dy, x, st, None)[0]
        gx_ones = case.backward(dy, x, st, np.ones(case.pshape))[0]
        np.testing.assert_allclose(gx, gx_ones, rtol=1e-14, atol=1e-15)

    # -- adversarial inputs ------------------------------------------------------------------------
    @for_kinds("case", OFFSET_CASES, ids=repr)
    def test_large_offset_float32(self, case):
        """mean 1e4, std 0.1 in float32: x - mean must not be formed in float32."""
        rng = np.random.default_rng(7)
        x = (1e4 + 0.1 * rng.standard_normal(case.shape)).astype(np.float32)
        dy = rng.standard_normal(case.shape).astype(np.float32)
        w = (1.0 + 0.3 * rng.standard_normal(case.pshape)).astype(np.float32)
        b = (0.1 * rng.standard_normal(case.pshape)).astype(np.float32) if case.has_bias else None
        got = case.grads(dy, x, w, b)
        exp = case.reference(dy, x, w)            # float64 from the same float32 inputs
        assert got[0].dtype == np.float32
        for name, g, e in zip(GRAD_NAMES, got, exp):
            assert np.all(np.isfinite(g)), name
            scale = float(np.max(np.abs(e)))
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale, err_msg=name)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @for_kinds("case", CONST_CASES, ids=repr)
    def test_constant_input_finite(self, case, dtype):
        """Zero variance: rstd = 1/sqrt(eps), gradients finite and equal to the reference."""
        rng = np.random.default_rng(9)
        x = np.full(case.shape, 3.25, dtype=dtype)
        if case.kind == "rms":
            x[:] = 0.0
        dy = rng.standard_normal(case.shape).astype(dtype)
        w = (1.0 + 0.3 * rng.standard_normal(case.pshape)).astype(dtype)
        b = np.zeros(case.pshape, dtype) if case.has_bias else None
        st = case.stats(x, w, b)
        got = case.backward(dy, x, st, w)
        exp = case.reference(dy, x, w)
        for name, g, e in zip(GRAD_NAMES, got, exp):
            assert np.all(np.isfinite(g)), name
            scale = max(1.0, float(np.max(np.abs(e))))
            rtol = 1e-5 if dtype == np.float32 else 1e-10
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=name)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("width", [1, 3, 17, 1025])
    @for_kinds("kind", ["layer", "rms"])
    def test_odd_widths_rows(self, kind, width, dtype):
        case = BackwardCase(kind, (5, width), nshape=(width,))
        x, dy, w, b = case.data(dtype, True, seed=width)
        got = case.grads(dy, x, w, b)
        exp = case.reference(dy, x, w)
        assert_grads_close(got, exp, 2e-5 if dtype == np.float32 else 1e-10)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @pytest.mark.parametrize("C,S", [(1, 3), (3, 1), (3, 1025), (1025, 3)])
    @for_kinds("kind,channel_axis", [("batch", 1), ("batch", -1), ("instance", 1), ("instance", -1),
                                     ("group", 1), ("group", -1)])
    def test_odd_widths_channels(self, kind, channel_axis, C, S, dtype):
        if kind == "instance" and S == 1:
            pytest.skip("instance norm needs more than one spatial value")
        shape = (3, C, S) if channel_axis == 1 else (3, S, C)
        case = BackwardCase(kind, shape, channel_axis=channel_axis,
                            groups={1: 1, 3: 3, 1025: 5}[C] if kind == "group" else None)
        x, dy, w, b = case.data(dtype, True, seed=C + S)
        got = case.grads(dy, x, w, b)
        exp = case.reference(dy, x, w)
        assert_grads_close(got, exp, 2e-5 if dtype == np.float32 else 1e-10)

    @for_kinds("case", F16_CASES, ids=repr)
    def test_float16(self, case):
        x, dy, w, b = case.data(np.float16, True, seed=13)
        got = case.grads(dy, x, w, b)
        assert got[0].dtype == np.float16 and got[0].shape == x.shape
        # parameter gradients come back in the weight's dtype
        assert all(g.dtype == np.float16 for g in got[1:])
        exp = case.reference(dy, x, w)            # float64 from the same float16 inputs
        for name, g, e in zip(GRAD_NAMES, got, exp):
            assert np.all(np.isfinite(g)), name
            scale = max(1.0, float(np.max(np.abs(e))))
            np.testing.assert_allclose(g.astype(np.float64), e, rtol=5e-3, atol=5e-3 * scale, err_msg=name)
        # with a float32 weight the parameter gradients are float32 and (computed in float32+) accurate
        w32 = w.astype(np.float32)
        got32 = case.grads(dy, x, w32, None if b is None else b.astype(np.float32))
        for name, g, e in zip(GRAD_NAMES[1:], got32[1:], exp[1:]):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(e)))),
                                       err_msg=name)

    @for_kinds("case", NONCONTIG_CASES, ids=repr)
    def test_non_contiguous_inputs(self, case):
        """Strided / reversed views of x and grad_out give the same result as contiguous copies."""
        x, dy, w, b = case.data(np.float64, True, seed=21)
        st = case.stats(x, w, b)
        full = case.backward(dy, x, st, w)
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],))
        big[..., ::2] = x
        xv = big[..., ::2]                                    # same values, strided view
        assert not xv.flags.c_contiguous
        dyv = np.asfortranarray(dy)
        stv = tuple(np.asfortranarray(s) for s in st)
        got = case.backward(dyv, xv, stv, w)
        for g, f in zip(got, full):
            np.testing.assert_allclose(g, f, rtol=1e-14, atol=1e-15)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @for_kinds("case", PATH_CASES, ids=repr)
    def test_kernel_paths_against_reference(self, case, dtype):
        x, dy, w, b = case.data(dtype, True, seed=41)
        got = case.grads(dy, x, w, b)
        exp = case.reference(dy, x, w)
        assert_grads_close(got, exp, 2e-5 if dtype == np.float32 else 1e-10)

    @for_kinds("case", EMPTY_CASES, ids=repr)
    def test_empty_batch(self, case):
        """No rows / samples: empty grad_x, zero parameter gradients (sum over nothing)."""
        x, dy, w, b = case.data(np.float64, True)
        got = case.grads(dy, x, w, b)
        assert got[0].shape == x.shape
        for g in got[1:]:
            assert g.shape == case.pshape
            np.testing.assert_array_equal(g, 0.0)

    # -- bad inputs --------------------------------------------------------------------------------
    @for_kinds("case", BAD_CASES, ids=repr)
    def test_bad_grad_out_shape(self, case):
        x, dy, w, b = case.data(np.float64, True)
        st = case.stats(x, w, b)
        with pytest.raises(ValueError):
            case.backward(dy[..., :-1], x, st, w)
        with pytest.raises(ValueError):
            case.backward(dy.reshape(-1), x, st, w)
        with pytest.raises(ValueError):
            case.backward(dy[None], x, st, w)

    @for_kinds("case", BAD_CASES, ids=repr)
    def test_bad_stats_size(self, case):
        x, dy, w, b = case.data(np.float64, True)
        st = case.stats(x, w, b)
        for i in range(len(st)):
            for bad in (np.append(st[i].reshape(-1), 1.0), st[i].reshape(-1)[:-1]):
                args = list(st)
                args[i] = bad
                with pytest.raises(ValueError):
                    case.backward(dy, x, tuple(args), w)

    @pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8])
    @for_kinds("case", BAD_CASES, ids=repr)
    def test_integer_grad_out(self, case, int_dtype):
        x, dy, w, b = case.data(np.float64, True)
        st = case.stats(x, w, b)
        with pytest.raises(TypeError):
            case.backward(np.ones(x.shape, dtype=int_dtype), x, st, w)

    @for_kinds("case", BAD_CASES, ids=repr)
    def test_needs_input_grad_wrong_length(self, case):
        x, dy, w, b = case.data(np.float64, True)
        st = case.stats(x, w, b)
        for needs in [(), (True,) * (case.n_grads - 1), (True,) * (case.n_grads + 1)]:
            with pytest.raises(ValueError):
                case.backward(dy, x, st, w, needs=needs)

    # -- out= for grad_x: a separate array, grad_out itself or x itself (in place), any layout / dtype
    @pytest.mark.parametrize("where", ["separate", "grad_out", "x", "strided"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
    @for_kinds("case", OUT_CASES, ids=repr)
    def test_out(self, case, dtype, where):
        """grad_x written into out= (also in place over grad_out or x) is bitwise the allocated result,
        which is within the usual tolerance of the float64 reference; the other gradients unchanged."""
        x, dy, w, b = case.data(dtype, True, seed=51)
        st = case.stats(x, w, b)
        exp = case.reference(dy, x, w)
        full = case.backward(dy, x, st, w)
        x0, dy0 = x.copy(), dy.copy()
        if where == "separate":
            out = np.full_like(x, np.nan)
        elif where == "grad_out":
            out = dy
        elif where == "x":
            out = x
        else:
            out = np.full(x.shape[:-1] + (2 * x.shape[-1],), np.nan, dtype)[..., ::2]
        got = case.backward(dy, x, st, w, out=out)
        assert got[0] is out
        np.testing.assert_array_equal(out, full[0])
        for g, f in zip(got[1:], full[1:]):
            np.testing.assert_array_equal(g, f)
        if where != "grad_out":
            np.testing.assert_array_equal(dy, dy0)
        if where != "x":
            np.testing.assert_array_equal(x, x0)
        rtol = 2e-5 if dtype == np.float32 else 1e-10
        scale = max(1.0, float(np.max(np.abs(exp[0]))))
        np.testing.assert_allclose(out, exp[0], rtol=rtol, atol=rtol * scale)

    @for_kinds("case", NONCONTIG_CASES, ids=repr)
    def test_out_in_place_over_strided_grad_out(self, case):
        """grad_out a strided view and out=grad_out: the kernel reads a copy, the result lands in the view."""
        x, dy, w, b = case.data(np.float32, True, seed=52)
        st = case.stats(x, w, b)
        full = case.backward(dy, x, st, w)
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
        dyv = big[..., 1::2]
        dyv[...] = dy
        got = case.backward(dyv, x, st, w, out=dyv)
        assert got[0] is dyv
        np.testing.assert_array_equal(dyv, full[0])
        assert not big[..., ::2].any()                     # nothing written between the view's elements

    @for_kinds("case", OUT_F16_CASES, ids=repr)
    def test_out_float16(self, case):
        """float16 x: grad_x computed in float32 and written into a float16 out (also grad_out itself)."""
        x, dy, w, b = case.data(np.float16, True, seed=53)
        st = case.stats(x, w, b)
        full = case.backward(dy, x, st, w)
        out = np.empty_like(x)
        assert case.backward(dy, x, st, w, out=out)[0] is out
        np.testing.assert_array_equal(out, full[0])
        assert case.backward(dy, x, st, w, out=dy)[0] is dy
        np.testing.assert_array_equal(dy, full[0])

    @for_kinds("case", OUT_REJECTED_CASES, ids=repr)
    def test_out_rejected(self, case):
        """out= checked like the forward's: shape, dtype, type, writability and partial overlaps."""
        x, dy, w, b = case.data(np.float64, True, seed=54)
        st = case.stats(x, w, b)
        with pytest.raises(ValueError, match="shape"):
            case.backward(dy, x, st, w, out=np.empty(x.shape[:-1] + (x.shape[-1] + 1,)))
        with pytest.raises(TypeError, match="dtype"):
            case.backward(dy, x, st, w, out=np.empty(x.shape, np.float32))
        with pytest.raises(TypeError):
            case.backward(dy, x, st, w, out=list(x.ravel()))
        ro = np.empty_like(x)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            case.backward(dy, x, st, w, out=ro)
        big = np.zeros(x.size + 1)
        xs, dys = big[:-1].reshape(x.shape), big[1:].reshape(x.shape)
        xs[...] = x
        with pytest.raises(ValueError, match="overlaps"):
            case.backward(dy, xs, st, w, out=dys)          # out overlaps x partially
        big2 = np.zeros(x.size + 1)
        dys2, outs = big2[:-1].reshape(x.shape), big2[1:].reshape(x.shape)
        dys2[...] = dy
        with pytest.raises(ValueError, match="overlaps"):
            case.backward(dys2, x, st, w, out=outs)        # out overlaps grad_out partially
