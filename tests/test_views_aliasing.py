"""Generated memory layouts and memory sharing for every array argument (reliability issue,
classes 1 and 2).

Property 1 (any view): every array argument (x, weight, bias, running stats, grad_out,
residual, out, saved mean/rstd) drawn as a strided, negative-stride, zero-stride, misaligned,
read-only or byte-swapped view gives exactly the result of the same call on fresh C-contiguous
copies (the contiguous path is checked against float64 references in the operator tests).

Property 2 (any aliasing): all arguments are carved at random offsets and steps out of ONE
small buffer, so they overlap at random.  The call either raises a ValueError -- allowed only
when an array the call writes really shares memory with another argument -- or gives exactly
the result of the call on fresh copies of the arguments' values, writes exactly the written
arrays, and leaves every other byte of the buffer untouched.
"""
import numpy as np
import pytest
from _helpers import byteswapped_copy, unaligned_copy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import normfast as nf

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- the operators
# Each case: (name, shapes(dims) -> {arg: shape}, written args, call(a) -> results, extra ValueError ok?)
# dims = (n, c, s): batch, channels (features), spatial / row length.


def _ln(a):
    return nf.layer_norm(a["x"], a["x"].shape[-1], a["weight"], a["bias"], 1e-5, out=a["out"], return_stats=True)


def _rms(a):
    return nf.rms_norm(a["x"], a["x"].shape[-1], a["weight"], 1e-5, out=a["out"], return_stats=True)


def _bn_train(a):
    return nf.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], True, 0.1, 1e-5,
                         out=a["out"], return_stats=True)


def _bn_eval(a):
    return nf.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], False, 0.1, 1e-5,
                         out=a["out"], return_stats=True)


def _gn(a):
    return nf.group_norm(a["x"], 2, a["weight"], a["bias"], 1e-5, out=a["out"], return_stats=True)


def _in_train(a):
    return nf.instance_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], True, 0.1, 1e-5,
                            out=a["out"], return_stats=True)


def _add_ln(a):
    return nf.add_layer_norm(a["x"], a["residual"], a["x"].shape[-1], a["weight"], a["bias"], out=a["out"],
                             residual_out=a["residual_out"], return_stats=True)


def _ln_bwd(a):
    return nf.layer_norm_backward(a["grad_out"], a["x"], a["mean"], a["rstd"], a["x"].shape[-1], a["weight"])


def _bn_bwd(a):
    return nf.batch_norm_backward(a["grad_out"], a["x"], a["mean"], a["rstd"], a["weight"], True)


def _gn_bwd(a):
    return nf.group_norm_backward(a["grad_out"], a["x"], a["mean"], a["rstd"], 2, a["weight"])


def _rows(n, c, s):
    return {"x": (n, s), "weight": (s,), "bias": (s,), "out": (n, s)}


def _chan(n, c, s):
    return {"x": (n, c, s), "weight": (c,), "bias": (c,), "out": (n, c, s)}


CASES = {
    "layer_norm": (_rows, ("out",), _ln),
    "rms_norm": (lambda n, c, s: {"x": (n, s), "weight": (s,), "out": (n, s)}, ("out",), _rms),
    "batch_norm_train": (lambda n, c, s: {**_chan(n, c, s), "running_mean": (c,), "running_var": (c,)},
                         ("out", "running_mean", "running_var"), _bn_train),
    "batch_norm_eval": (lambda n, c, s: {**_chan(n, c, s), "running_mean": (c,), "running_var": (c,)},
                        ("out",), _bn_eval),
    "group_norm": (_chan, ("out",), _gn),
    "instance_norm_train": (lambda n, c, s: {**_chan(n, c, s), "running_mean": (c,), "running_var": (c,)},
                            ("out", "running_mean", "running_var"), _in_train),
    "add_layer_norm": (lambda n, c, s: {**_rows(n, c, s), "residual": (n, s), "residual_out": (n, s)},
                       ("out", "residual_out"), _add_ln),
    "layer_norm_backward": (lambda n, c, s: {"grad_out": (n, s), "x": (n, s), "mean": (n,), "rstd": (n,),
                                             "weight": (s,)}, (), _ln_bwd),
    "batch_norm_backward": (lambda n, c, s: {"grad_out": (n, c, s), "x": (n, c, s), "mean": (c,), "rstd": (c,),
                                             "weight": (c,)}, (), _bn_bwd),
    "group_norm_backward": (lambda n, c, s: {"grad_out": (n, c, s), "x": (n, c, s), "mean": (n, 2), "rstd": (n, 2),
                                             "weight": (c,)}, (), _gn_bwd),
}
# group norms need an even channel count (2 groups)
CHANNELS = st.sampled_from([2, 4, 6])


def _results(res):
    res = res if isinstance(res, tuple) else (res,)
    return [None if r is None else np.array(r, copy=True) for r in res]


def _assert_same(got, ref, what):
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        if r is None:
            assert g is None, f"{what}: result {i}"
            continue
        assert g.shape == r.shape and g.dtype.newbyteorder("=") == r.dtype.newbyteorder("="), f"{what}: result {i}"
        np.testing.assert_array_equal(g, r, err_msg=f"{what}: result {i}")


def _fresh(rng, shapes, dtype):
    """Contiguous values for every argument (rstd / running_var positive)."""
    vals = {}
    for k, shp in shapes.items():
        v = rng.uniform(0.5, 2.0, shp) if k in ("rstd", "running_var") else rng.normal(0.0, 1.0, shp)
        vals[k] = v.astype(dtype)
    return vals


# --------------------------------------------------------------------------- property 1: layouts

LAYOUTS = ("contig", "strided", "reversed", "zero_stride", "misaligned", "readonly", "byteswapped")


def _view_of(v, layout, rng):
    """A view with v's values in the given memory layout (zero_stride: constant along axis 0)."""
    if layout == "contig":
        return v.copy()
    if layout == "strided":
        buf = np.empty(v.shape[:-1] + (2 * v.shape[-1],), v.dtype)
        buf[..., ::2] = v
        return buf[..., ::2]
    if layout == "reversed":
        return np.flip(np.flip(v).copy())
    if layout == "zero_stride":
        return np.broadcast_to(v[:1], v.shape)
    if layout == "misaligned":
        return unaligned_copy(v)
    if layout == "readonly":
        r = v.copy()
        r.flags.writeable = False
        return r
    if layout == "byteswapped":
        return byteswapped_copy(v)
    raise ValueError(layout)


def _drawn(max_n, max_s):
    """The strategies of (case, n, c, s, dtype, seed, data), n <= max_n and s <= max_s."""
    return (st.sampled_from(sorted(CASES)), st.integers(2, max_n), CHANNELS, st.integers(2, max_s),
            st.sampled_from([np.float32, np.float64]), st.integers(0, 2 ** 31 - 1), st.data())


@SETTINGS
@given(*_drawn(4, 40))
def test_any_view_equals_fresh_copies(case, n, c, s, dtype, seed, data):
    shapes_of, writes, call = CASES[case]
    rng = np.random.default_rng(seed)
    shapes = shapes_of(n, c, s)
    vals = _fresh(rng, shapes, dtype)
    layouts = {k: data.draw(st.sampled_from(LAYOUTS), label=k) for k in shapes}
    args = {}
    for k, v in vals.items():
        lay = layouts[k]
        if k in writes and lay in ("readonly", "zero_stride"):
            lay = "strided"                       # written arrays: see test_unwritable_outputs_raise
        if lay == "zero_stride":
            v = np.broadcast_to(v[:1], v.shape).copy()   # values constant along axis 0
            vals[k] = v
        args[k] = _view_of(v, lay, rng)
    fresh = {k: v.copy() for k, v in vals.items()}
    for k in ("out", "residual_out"):                 # outputs: fresh ones start as the views do
        if k in fresh:
            fresh[k] = np.asarray(args[k]).copy() if args[k].dtype.isnative else args[k].astype(dtype)
    ref = _results(call(fresh))
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    got = _results(call(args))
    # results that are the caller's output arrays come back as those arrays
    _assert_same(got, ref, f"{case} {layouts}")
    for k in args:
        if k in writes:
            np.testing.assert_array_equal(np.asarray(args[k], dtype=dtype), fresh[k], err_msg=f"{case}: {k}")
        else:
            np.testing.assert_array_equal(args[k], before[k], err_msg=f"{case}: input {k} was modified")


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if CASES[c][1]])
def test_unwritable_outputs_raise(case):
    """A written array that is read-only or has zero strides (elements sharing an address)
    gets a ValueError naming it, and nothing is modified."""
    shapes_of, writes, call = CASES[case]
    rng = np.random.default_rng(0)
    shapes = shapes_of(3, 4, 8)
    for w in writes:
        for bad in ("readonly", "zero_stride_writable"):
            args = _fresh(rng, shapes, np.float32)
            if bad == "readonly":
                args[w].flags.writeable = False
            else:
                base = args[w]
                args[w] = np.lib.stride_tricks.as_strided(base, base.shape, (0,) + base.strides[1:])
            before = {k: v.copy() for k, v in args.items()}
            with pytest.raises(ValueError, match=w):
                call(args)
            for k, v in args.items():
                np.testing.assert_array_equal(v, before[k])


# --------------------------------------------------------------------------- property 2: aliasing


def _carve(pool, index_pool, shape, offset, step, flip_axis):
    """The same view of the value pool and of the index pool (to know its exact elements)."""
    n = int(np.prod(shape))
    views = []
    for p in (pool, index_pool):
        v = p[offset:offset + n * step:step].reshape(shape)
        if flip_axis is not None:
            v = np.flip(v, flip_axis)
        views.append(v)
    return views


@SETTINGS
@given(*_drawn(3, 12))
def test_any_aliasing_equals_fresh_copies_or_raises(case, n, c, s, dtype, seed, data):
    shapes_of, writes, call = CASES[case]
    rng = np.random.default_rng(seed)
    shapes = shapes_of(n, c, s)
    biggest = max(int(np.prod(v)) for v in shapes.values())
    size = data.draw(st.integers(biggest, 3 * biggest), label="pool size")
    pool = rng.uniform(0.5, 2.0, size).astype(dtype)
    index_pool = np.arange(size)
    args, idx = {}, {}
    for k, shp in shapes.items():
        cnt = int(np.prod(shp))
        step = data.draw(st.sampled_from([1, 1, 2]) if 2 * cnt <= size else st.just(1), label=f"{k} step")
        offset = data.draw(st.integers(0, size - ((cnt - 1) * step + 1)), label=f"{k} offset")
        flip = data.draw(st.sampled_from([None, 0, len(shp) - 1]), label=f"{k} flip")
        args[k], idx[k] = _carve(pool, index_pool, shp, offset, step, flip)
    fresh = {k: np.array(v, copy=True) for k, v in args.items()}
    ref = _results(call(fresh))
    pool_before = pool.copy()
    written = set()
    for k in writes:
        written |= set(idx[k].ravel().tolist())
    sharing = any(set(idx[w].ravel().tolist()) & set(idx[k].ravel().tolist())
                  for w in writes for k in shapes if k != w)
    try:
        res = call(args)
    except ValueError as err:
        event("raised ValueError")
        assert sharing, f"{case}: ValueError although nothing written shares memory: {err}"
        np.testing.assert_array_equal(pool, pool_before, err_msg=f"{case}: modified before raising")
        return
    event("memory shared, result as on fresh copies" if sharing else "no memory shared")
    _assert_same(_results(res), ref, case)
    for k in writes:
        np.testing.assert_array_equal(args[k], fresh[k], err_msg=f"{case}: {k}")
    untouched = np.ones(size, bool)
    untouched[list(written)] = False
    np.testing.assert_array_equal(pool[untouched], pool_before[untouched],
                                  err_msg=f"{case}: memory outside the written arrays changed")


def test_aliasing_cases_that_must_work():
    """Pairs that are not errors: a weight that is a row of out, bias = weight, x = out (in
    place), residual_out = residual (in place); each equals the call on fresh copies."""
    rng = np.random.default_rng(1)
    buf = rng.normal(size=(4, 16)).astype(np.float32)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    ref = nf.layer_norm(x.copy(), 16, buf[3].copy(), buf[3].copy())
    y = nf.layer_norm(x, 16, buf[3], buf[3], out=buf)     # weight and bias are the last row of out
    assert y is buf
    np.testing.assert_array_equal(y, ref)
    ref = nf.layer_norm(x.copy(), 16)
    assert nf.layer_norm(x, 16, out=x) is x
    np.testing.assert_array_equal(x, ref)
    xr = rng.normal(size=(4, 16)).astype(np.float32)
    r = rng.normal(size=(4, 16)).astype(np.float32)
    y_ref, h_ref = nf.add_layer_norm(xr.copy(), r.copy(), 16)
    y2, h2 = nf.add_layer_norm(xr, r, 16, residual_out=r, out=xr)
    assert h2 is r and y2 is xr
    np.testing.assert_array_equal(h2, h_ref)
    np.testing.assert_array_equal(y2, y_ref)
