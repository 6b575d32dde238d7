"""The C boundary checks what it is given (reliability issue, class 9): each Cython kernel wrapper,
called directly with one argument spoiled (one element short or long, wrong dtype, not
contiguous, byte-swapped, read-only output, not an array), raises instead of letting the kernel
read or write outside an array; the untouched call works."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normfast._cpu import _backward, _moments, _normalize

F8 = np.float64


def _calls(t):
    """(function, {argument name: array}, positional order, write names) per kernel, shapes fixed."""
    A, B, C, D = 2, 3, 4, 40
    n, S, M, N = A * B * C * D, A * C, 6, 40
    x = np.ones(n, t)
    return {
        "reduce4d": (lambda a: _moments.reduce4d(a["x"], a["dy"], a["m"], A, B, C, D, 2, a["out"], 1),
                     {"x": x, "dy": np.ones(n, t), "m": np.zeros(S), "out": np.empty((S, 3))}, {"out"}),
        "apply4d": (lambda a: _normalize.apply4d(a["x"], None, a["y"], A, B, C, D, a["m"], a["p"], a["q"], None, 1),
                    {"x": x, "y": np.empty(n, t), "m": np.zeros(S), "p": np.ones(S), "q": np.zeros(S)}, {"y"}),
        "rows_forward": (lambda a: _normalize.rows_forward(a["x"], a["y"], M, N, a["w"], a["b"], 1, 1, 1e-5, False,
                                                           a["mean"], a["rstd"], 1),
                         {"x": np.ones(M * N, t), "y": np.empty(M * N, t), "w": np.ones(N), "b": np.zeros(N),
                          "mean": np.empty(M), "rstd": np.empty(M)}, {"y", "mean", "rstd"}),
        "rows_add_forward": (lambda a: _normalize.rows_add_forward(a["x"], a["res"], a["h"], a["y"], M, N, None, None,
                                                                   1e-5, False, a["mean"], a["rstd"], 1),
                             {"x": np.ones(M * N, t), "res": np.ones(M * N, t), "h": np.empty(M * N, t),
                              "y": np.empty(M * N, t), "mean": np.empty(M), "rstd": np.empty(M)},
                             {"h", "y", "mean", "rstd"}),
        "rows_backward": (lambda a: _backward.rows_backward(a["x"], a["dy"], None, M, N, a["mean"], a["rstd"], a["w"],
                                                            a["dx"], a["dw"], a["db"], 1),
                          {"x": np.ones(M * N, t), "dy": np.ones(M * N, t), "mean": np.zeros(M), "rstd": np.ones(M),
                           "w": np.ones(N), "dx": np.empty(M * N, t), "dw": np.empty(N), "db": np.empty(N)},
                          {"dx", "dw", "db"}),
        "samples_forward": (lambda a: _normalize.samples_forward(a["x"], a["y"], A, B, C, D, None, None, 1e-5,
                                                                 a["mean"], a["rstd"], 1),
                            {"x": x, "y": np.empty(n, t), "mean": np.empty(A * C), "rstd": np.empty(A * C)},
                            {"y", "mean", "rstd"}),
        # rows of 2 channels x 20 positions, 3 groups per sample (period), weights per channel
        "group_backward": (lambda a: _normalize.group_backward(a["x"], a["dy"], a["dx"], M, N, 20, 3, a["mean"],
                                                               a["rstd"], a["w"], a["sums"], 1),
                           {"x": np.ones(M * N, t), "dy": np.ones(M * N, t), "dx": np.empty(M * N, t),
                            "mean": np.zeros(M), "rstd": np.ones(M), "w": np.ones(3 * 2), "sums": np.empty(M * 2 * 2)},
                           {"dx", "sums"}),
    }


def _spoil(a, how):
    if how == "short":
        return a[:-1].copy()
    if how == "long":
        return np.concatenate([a.reshape(-1), a.reshape(-1)[:1]])
    if how == "dtype":
        return a.astype(np.float32 if a.dtype == F8 else F8)
    if how == "strided":
        return np.repeat(a, 2)[::2]
    if how == "swapped":
        return a.astype(a.dtype.newbyteorder())
    if how == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if how == "list":
        return a.tolist()
    raise ValueError(how)


@pytest.mark.parametrize("t", [np.float32, np.float64])
def test_unspoiled_calls_work(t):
    for name, (call, args, _) in _calls(t).items():
        call(args)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["reduce4d", "apply4d", "rows_forward", "rows_add_forward", "rows_backward",
                        "samples_forward", "group_backward"]), st.sampled_from([np.float32, np.float64]), st.data())
def test_spoiled_argument_raises(kernel, t, data):
    call, args, writes = _calls(t)[kernel]
    name = data.draw(st.sampled_from(sorted(args)))
    hows = ["short", "long", "dtype", "strided", "swapped", "list"] + (["readonly"] if name in writes else [])
    how = data.draw(st.sampled_from(hows))
    args = dict(args)
    args[name] = _spoil(args[name], how)
    with pytest.raises((ValueError, TypeError), match="kernel boundary"):
        call(args)


@pytest.mark.parametrize("t", [np.float16, np.float32, np.float64])
def test_each_element_type_reaches_its_kernel(t):
    """Each kernel's one entry point (src_c/dispatch.h) runs the instantiation of x's type: on
    values exact in float16, every output matches the float64 call's."""
    if t == np.float16 and not _normalize.HAVE_F16:
        pytest.skip("no _Float16 kernels")
    rng = np.random.default_rng(0)
    ref, got = _calls(F8), _calls(t)
    for name, (call, args, writes) in got.items():
        for k, a in args.items():
            if k not in writes and a.dtype == t:
                v = rng.integers(-32, 33, a.size) / 8
                a[...] = v
                ref[name][1][k][...] = v
        call(args)
        ref[name][0](ref[name][1])
        for k in writes:
            np.testing.assert_allclose(args[k].astype(F8), ref[name][1][k], rtol=2e-3 if t == np.float16 else 1e-6,
                                       atol=2e-3 if t == np.float16 else 1e-6, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("t", [np.int16, np.int32, np.complex64] + ([] if _normalize.HAVE_F16 else [np.float16]))
def test_other_element_types_are_refused(t):
    for name, (call, args, _) in _calls(t).items():
        with pytest.raises(TypeError, match="kernel boundary"):
            call(args)
