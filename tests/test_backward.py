"""Backward passes of the five norms: layer_norm_backward, rms_norm_backward,
batch_norm_backward (train and eval), group_norm_backward, instance_norm_backward.

References: central finite differences of normfast's own forward (float64),
torch.autograd (float32 / float64) and the float64 NumPy formulas of tests/_reference.py.
"""
import itertools

import numpy as np
import pytest

import normfast
import _reference as ref

EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# A "case": one operator on one shape / layout, with uniform forward / backward / torch calls.
# ----------------------------------------------------------------------------------------------
class Case:
    def __init__(self, kind, shape, *, channel_axis=1, nshape=None, groups=None, eps=EPS):
        self.kind, self.shape, self.channel_axis = kind, tuple(shape), channel_axis
        self.nshape = None if nshape is None else tuple(nshape)
        self.groups, self.eps = groups, eps
        if kind in ref.ROW_KINDS:
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
        if self.kind in ref.ROW_KINDS:
            extra = f"ns{self.nshape}" + ("" if self.eps == EPS else f"-eps{self.eps}")
        else:
            extra = f"ca{self.channel_axis}" + (f"g{self.groups}" if self.groups else "")
        return f"{self.kind}-{'x'.join(map(str, self.shape))}-{extra}".replace(" ", "")

    def values_per_stat(self):
        n = int(np.prod(self.shape))
        if self.kind in ref.ROW_KINDS:
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
        r = ref.norm_backward(self.kind, dy, x, w, eps=self.eps, channel_axis=self.channel_axis,
                              normalized_shape=self.nshape, groups=self.groups,
                              running_mean=self.rm, running_var=self.rv, **kw)
        return r[:self.n_grads]

    # -- torch ----------------------------------------------------------------------------------
    def channels_first(self, a):
        if self.kind in ref.ROW_KINDS or self.channel_axis % len(self.shape) == 1:
            return np.ascontiguousarray(a)
        return np.ascontiguousarray(np.moveaxis(a, self.channel_axis, 1))

    def from_channels_first(self, a):
        if self.kind in ref.ROW_KINDS or self.channel_axis % len(self.shape) == 1:
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


def _cl(shape_cf):
    """channels-first shape (N, C, *spatial) -> channels-last (N, *spatial, C)."""
    return (shape_cf[0],) + tuple(shape_cf[2:]) + (shape_cf[1],)


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
                out.append(Case(kind, shape, nshape=ns, eps=eps))
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
                out.append(Case(kind, cf, channel_axis=1, groups=g))
                out.append(Case(kind, _cl(cf), channel_axis=-1, groups=g))
    return out


ALL_CASES = row_cases() + channel_cases(all_groups=True)


def _ids(cases):
    return [repr(c) for c in cases]


# ----------------------------------------------------------------------------------------------
# 1. float64 gradient check against central finite differences of normfast's forward
# ----------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_finite_differences_float64(case, affine):
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


@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_matches_float64_reference(case):
    """Backward (fed with the forward's statistics) against the float64 formula with its own statistics."""
    x, dy, w, b = case.data(np.float64, True, seed=5)
    st = case.stats(x, w, b)
    got = case.backward(dy, x, st, w)
    exp = case.reference(dy, x, w)       # statistics computed by the reference itself
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------------------------
# 2. against torch.autograd
# ----------------------------------------------------------------------------------------------
TORCH_CASES = (row_cases() + channel_cases(kinds=("batch", "batch_eval", "instance"))
               + channel_cases(kinds=("group",), all_groups=True))


def _torch_grads(torch, F, case, x, dy, w, b, rm=None, rv=None):
    xt = torch.from_numpy(case.channels_first(x)).requires_grad_(True)
    dyt = torch.from_numpy(case.channels_first(dy))
    inputs = [xt]
    wt = bt = None
    if w is not None:
        wt = torch.from_numpy(w.copy()).requires_grad_(True)
        inputs.append(wt)
        if b is not None:
            bt = torch.from_numpy(b.copy()).requires_grad_(True)
            inputs.append(bt)
    y = case.torch_forward(F, torch, xt, wt, bt, rm, rv)
    gs = torch.autograd.grad(y, inputs, dyt)
    out = [case.from_channels_first(gs[0].numpy())] + [g.numpy() for g in gs[1:]]
    out += [None] * (case.n_grads - len(out))
    return out


TORCH_TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=_ids(TORCH_CASES))
def test_against_torch(case, dtype, affine):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if dtype == np.float32 and case.values_per_stat() == 1:
        # one value per statistic: the exact grad_x is 0; torch's float32 result is rounding
        # noise amplified by rstd = 1/sqrt(eps) (covered against float64 references elsewhere)
        pytest.skip("degenerate statistics, torch float32 is noise")
    x, dy, w, b = case.data(dtype, affine, seed=11)
    got = case.grads(dy, x, w, b)
    exp = _torch_grads(torch, F, case, x, dy, w, b)
    tol = TORCH_TOL[dtype]
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        if e is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == e.shape, name
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_batch_norm_running_stats_train_against_torch(dtype, channel_axis):
    """Train mode with running buffers: gradients are those of the batch statistics and the
    buffers are updated like torch's (the gradient does not see the running stats)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cf = (3, 4, 5, 2)
    case = Case("batch", cf if channel_axis == 1 else _cl(cf), channel_axis=channel_axis)
    x, dy, w, b = case.data(dtype, True, seed=3)
    rm = np.linspace(-1, 1, 4).astype(dtype)
    rv = np.linspace(0.5, 2, 4).astype(dtype)
    rm_n, rv_n, rm_t, rv_t = rm.copy(), rv.copy(), torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    _, mean, rstd = case.forward(x, w, b, stats=True, rm=rm_n, rv=rv_n)
    got = case.backward(dy, x, (mean, rstd), w)
    exp = _torch_grads(torch, F, case, x, dy, w, b, rm_t, rv_t)
    tol = TORCH_TOL[dtype]
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
    np.testing.assert_allclose(rm_n, rm_t.numpy(), **tol)
    np.testing.assert_allclose(rv_n, rv_t.numpy(), **tol)
    # same gradients without the running buffers
    got2 = case.grads(dy, x, w, b)
    for g, g2 in zip(got, got2):
        np.testing.assert_array_equal(g, g2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_batch_norm_eval_differs_from_train(dtype):
    """Eval-mode gradient is rstd_running * w * dy, not the training formula."""
    case = Case("batch_eval", (4, 3, 5))
    x, dy, w, b = case.data(dtype, True, seed=8)
    _, mean, rstd = case.forward(x, w, b, stats=True)
    np.testing.assert_allclose(mean, case.rm, rtol=0, atol=0)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(case.rv + EPS), rtol=1e-15)
    gx, gw, gb = normfast.batch_norm_backward(dy, x, mean, rstd, w, training=False)
    exp = dy.astype(np.float64) * (rstd * w.astype(np.float64))[None, :, None]
    np.testing.assert_allclose(gx, exp, rtol=1e-6 if dtype == np.float32 else 1e-13)
    gx_train, _, _ = normfast.batch_norm_backward(dy, x, mean, rstd, w, training=True)
    assert not np.allclose(gx, gx_train)


# ----------------------------------------------------------------------------------------------
# 3. needs_input_grad and weight=None
# ----------------------------------------------------------------------------------------------
NEEDS_CASES = [Case("layer", (3, 4, 5), nshape=(4, 5)), Case("rms", (6, 7), nshape=(7,)),
               Case("batch", (3, 4, 5)), Case("batch", (3, 5, 4), channel_axis=-1),
               Case("batch_eval", (3, 4, 5)), Case("group", (2, 6, 5), groups=3),
               Case("group", (2, 5, 6), groups=2, channel_axis=-1), Case("instance", (2, 4, 5)),
               Case("instance", (2, 3, 5, 4), channel_axis=-1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", NEEDS_CASES, ids=_ids(NEEDS_CASES))
def test_needs_input_grad(case, dtype):
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


@pytest.mark.parametrize("case", NEEDS_CASES, ids=_ids(NEEDS_CASES))
def test_weight_none_gives_no_param_grads(case):
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


# ----------------------------------------------------------------------------------------------
# 4. adversarial inputs
# ----------------------------------------------------------------------------------------------
OFFSET_CASES = [Case("layer", (8, 4096), nshape=(4096,)), Case("layer", (2, 4, 1024), nshape=(4, 1024)),
                Case("rms", (8, 4096), nshape=(4096,)),
                Case("batch", (4096, 3)), Case("batch", (16, 3, 256)), Case("batch", (16, 256, 3), channel_axis=-1),
                Case("group", (2, 4, 4096), groups=2), Case("group", (2, 2048, 4), groups=2, channel_axis=-1),
                Case("instance", (2, 3, 4096)), Case("instance", (2, 4096, 3), channel_axis=-1)]


@pytest.mark.parametrize("case", OFFSET_CASES, ids=_ids(OFFSET_CASES))
def test_large_offset_float32(case):
    """mean 1e4, std 0.1 in float32: x - mean must not be formed in float32."""
    rng = np.random.default_rng(7)
    x = (1e4 + 0.1 * rng.standard_normal(case.shape)).astype(np.float32)
    dy = rng.standard_normal(case.shape).astype(np.float32)
    w = (1.0 + 0.3 * rng.standard_normal(case.pshape)).astype(np.float32)
    b = (0.1 * rng.standard_normal(case.pshape)).astype(np.float32) if case.has_bias else None
    got = case.grads(dy, x, w, b)
    exp = case.reference(dy, x, w)            # float64 from the same float32 inputs
    assert got[0].dtype == np.float32
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        assert np.all(np.isfinite(g)), name
        scale = float(np.max(np.abs(e)))
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_large_offset_grad_out_float32():
    """grad_out with a large common offset: mean(g) cancels, dx must stay accurate."""
    rng = np.random.default_rng(17)
    x = (1e4 + 0.1 * rng.standard_normal((8, 4096))).astype(np.float32)
    dy = (1e3 + rng.standard_normal((8, 4096))).astype(np.float32)
    case = Case("layer", x.shape, nshape=(4096,))
    gx, gw, gb = case.grads(dy, x, np.ones(4096, np.float32), np.zeros(4096, np.float32))
    ex, ew, eb = case.reference(dy, x, np.ones(4096))
    np.testing.assert_allclose(gx, ex, rtol=1e-5, atol=1e-5 * np.max(np.abs(ex)))
    np.testing.assert_allclose(gw, ew, rtol=1e-5, atol=1e-5 * np.max(np.abs(ew)))
    np.testing.assert_allclose(gb, eb, rtol=1e-6)


CONST_CASES = [Case("layer", (4, 33), nshape=(33,)), Case("rms", (4, 33), nshape=(33,)),
               Case("batch", (5, 3, 7)), Case("batch", (5, 7, 3), channel_axis=-1),
               Case("group", (2, 4, 9), groups=2), Case("instance", (2, 3, 9)),
               Case("instance", (2, 9, 3), channel_axis=-1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONST_CASES, ids=_ids(CONST_CASES))
def test_constant_input_finite(case, dtype):
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
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        assert np.all(np.isfinite(g)), name
        scale = max(1.0, float(np.max(np.abs(e))))
        rtol = 1e-5 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=name)


def test_constant_rows_mixed_with_normal_rows():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 100))
    x[1] = -7.0
    x[4] = 1e4
    dy = rng.standard_normal(x.shape)
    w = rng.standard_normal(100)
    case = Case("layer", x.shape, nshape=(100,))
    got = case.grads(dy, x, w, np.zeros(100))
    exp = case.reference(dy, x, w)
    for g, e in zip(got, exp):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9 * np.max(np.abs(e)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("width", [1, 3, 17, 1025])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_odd_widths_rows(kind, width, dtype):
    case = Case(kind, (5, width), nshape=(width,))
    x, dy, w, b = case.data(dtype, True, seed=width)
    got = case.grads(dy, x, w, b)
    exp = case.reference(dy, x, w)
    rtol = 2e-5 if dtype == np.float32 else 1e-10
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C,S", [(1, 3), (3, 1), (3, 1025), (1025, 3)])
@pytest.mark.parametrize("kind,channel_axis", [("batch", 1), ("batch", -1), ("instance", 1), ("instance", -1),
                                               ("group", 1), ("group", -1)])
def test_odd_widths_channels(kind, channel_axis, C, S, dtype):
    if kind == "instance" and S == 1:
        pytest.skip("instance norm needs more than one spatial value")
    shape = (3, C, S) if channel_axis == 1 else (3, S, C)
    case = Case(kind, shape, channel_axis=channel_axis, groups={1: 1, 3: 3, 1025: 5}[C] if kind == "group" else None)
    x, dy, w, b = case.data(dtype, True, seed=C + S)
    got = case.grads(dy, x, w, b)
    exp = case.reference(dy, x, w)
    rtol = 2e-5 if dtype == np.float32 else 1e-10
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=name)


F16_CASES = [Case("layer", (4, 1025), nshape=(1025,)), Case("rms", (4, 1025), nshape=(1025,)),
             Case("rms", (4, 64), nshape=(64,), eps=None),
             Case("batch", (8, 3, 33)), Case("batch", (8, 33, 3), channel_axis=-1), Case("batch_eval", (8, 3, 33)),
             Case("group", (2, 6, 33), groups=3), Case("group", (2, 33, 6), groups=2, channel_axis=-1),
             Case("instance", (2, 3, 33)), Case("instance", (2, 33, 3), channel_axis=-1)]


@pytest.mark.parametrize("case", F16_CASES, ids=_ids(F16_CASES))
def test_float16(case):
    x, dy, w, b = case.data(np.float16, True, seed=13)
    got = case.grads(dy, x, w, b)
    assert got[0].dtype == np.float16 and got[0].shape == x.shape
    # parameter gradients come back in the weight's dtype
    assert all(g.dtype == np.float16 for g in got[1:])
    exp = case.reference(dy, x, w)            # float64 from the same float16 inputs
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        assert np.all(np.isfinite(g)), name
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g.astype(np.float64), e, rtol=5e-3, atol=5e-3 * scale, err_msg=name)
    # with a float32 weight the parameter gradients are float32 and (computed in float32+) accurate
    w32 = w.astype(np.float32)
    got32 = case.grads(dy, x, w32, None if b is None else b.astype(np.float32))
    for name, g, e in zip(("grad_weight", "grad_bias"), got32[1:], exp[1:]):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(e)))), err_msg=name)


NONCONTIG_CASES = [Case("layer", (6, 10), nshape=(10,)), Case("rms", (6, 10), nshape=(10,)),
                   Case("batch", (4, 3, 5)), Case("group", (2, 4, 5), groups=2),
                   Case("instance", (2, 4, 5), channel_axis=-1)]


@pytest.mark.parametrize("case", NONCONTIG_CASES, ids=_ids(NONCONTIG_CASES))
def test_non_contiguous_inputs(case):
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


# kernel paths: row blocks not dividing M, partial-buffer cap for wide rows, column mode with a
# partial last block, row mode with segments longer than one statistics chunk (8192)
PATH_CASES = [Case("layer", (33, 5), nshape=(5,)), Case("layer", (1000, 7), nshape=(7,)),
              Case("rms", (1000, 7), nshape=(7,)), Case("layer", (37, 131075), nshape=(131075,)),
              Case("batch", (10007, 3)), Case("batch", (3, 10007, 2), channel_axis=-1),
              Case("batch", (2, 3, 16389)), Case("batch", (129, 2, 5)),
              Case("group", (3, 100, 70), groups=10, channel_axis=-1), Case("group", (2, 4, 16389), groups=2),
              Case("instance", (2, 3, 16389)), Case("instance", (2, 700, 3), channel_axis=-1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", PATH_CASES, ids=_ids(PATH_CASES))
def test_kernel_paths_against_reference(case, dtype):
    x, dy, w, b = case.data(dtype, True, seed=41)
    got = case.grads(dy, x, w, b)
    exp = case.reference(dy, x, w)
    rtol = 2e-5 if dtype == np.float32 else 1e-10
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, exp):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=name)


EMPTY_CASES = [Case("layer", (0, 5), nshape=(5,)), Case("rms", (0, 3, 5), nshape=(3, 5)),
               Case("group", (0, 4, 3), groups=2), Case("instance", (0, 4, 3)),
               Case("instance", (0, 3, 4), channel_axis=-1)]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=_ids(EMPTY_CASES))
def test_empty_batch(case):
    """No rows / samples: empty grad_x, zero parameter gradients (sum over nothing)."""
    x, dy, w, b = case.data(np.float64, True)
    got = case.grads(dy, x, w, b)
    assert got[0].shape == x.shape
    for g in got[1:]:
        assert g.shape == case.pshape
        np.testing.assert_array_equal(g, 0.0)


# ----------------------------------------------------------------------------------------------
# 5. thread-count invariance
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    yield
    normfast.set_num_threads(None)


THREAD_CASES = [Case("layer", (256, 1024), nshape=(1024,)), Case("rms", (256, 1024), nshape=(1024,)),
                Case("batch", (8, 32, 32, 32)), Case("batch", (8, 32, 32, 32), channel_axis=-1),
                Case("batch_eval", (8, 32, 32, 32), channel_axis=-1),
                Case("group", (8, 32, 32, 32), groups=4), Case("group", (8, 32, 32, 32), groups=4, channel_axis=-1),
                Case("instance", (8, 32, 32, 32)), Case("instance", (8, 32, 32, 32), channel_axis=-1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", THREAD_CASES, ids=_ids(THREAD_CASES))
def test_thread_count_invariance(case, dtype, restore_threads):
    assert np.prod(case.shape) >= 65536
    x, dy, w, b = case.data(dtype, True, seed=31)
    results = []
    try:
        for nt in (1, 2, 3):
            normfast.set_num_threads(nt)
            assert normfast.get_num_threads() == nt
            st = case.stats(x, w, b)
            results.append((st, case.backward(dy, x, st, w)))
    finally:
        normfast.set_num_threads(None)
    st1, g1 = results[0]
    for st, g in results[1:]:
        for s, s1 in zip(st, st1):
            np.testing.assert_array_equal(s, s1)
        for gi, gi1 in zip(g, g1):
            np.testing.assert_array_equal(gi, gi1)
    # and the same statistics fed to the backward under other thread counts
    try:
        for nt in (2, 3):
            normfast.set_num_threads(nt)
            g = case.backward(dy, x, st1, w)
            for gi, gi1 in zip(g, g1):
                np.testing.assert_array_equal(gi, gi1)
    finally:
        normfast.set_num_threads(None)
    exp = case.reference(dy, x, w)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for gi, e in zip(g1, exp):
        np.testing.assert_allclose(gi, e, rtol=rtol, atol=rtol * float(np.max(np.abs(e))))


# ----------------------------------------------------------------------------------------------
# 6. bad inputs
# ----------------------------------------------------------------------------------------------
BAD_CASES = NEEDS_CASES


@pytest.mark.parametrize("case", BAD_CASES, ids=_ids(BAD_CASES))
def test_bad_grad_out_shape(case):
    x, dy, w, b = case.data(np.float64, True)
    st = case.stats(x, w, b)
    with pytest.raises(ValueError):
        case.backward(dy[..., :-1], x, st, w)
    with pytest.raises(ValueError):
        case.backward(dy.reshape(-1), x, st, w)
    with pytest.raises(ValueError):
        case.backward(dy[None], x, st, w)


@pytest.mark.parametrize("case", BAD_CASES, ids=_ids(BAD_CASES))
def test_bad_stats_size(case):
    x, dy, w, b = case.data(np.float64, True)
    st = case.stats(x, w, b)
    for i in range(len(st)):
        for bad in (np.append(st[i].reshape(-1), 1.0), st[i].reshape(-1)[:-1]):
            args = list(st)
            args[i] = bad
            with pytest.raises(ValueError):
                case.backward(dy, x, tuple(args), w)


@pytest.mark.parametrize("case", BAD_CASES, ids=_ids(BAD_CASES))
@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8])
def test_integer_grad_out(case, int_dtype):
    x, dy, w, b = case.data(np.float64, True)
    st = case.stats(x, w, b)
    with pytest.raises(TypeError):
        case.backward(np.ones(x.shape, dtype=int_dtype), x, st, w)


@pytest.mark.parametrize("case", BAD_CASES, ids=_ids(BAD_CASES))
def test_needs_input_grad_wrong_length(case):
    x, dy, w, b = case.data(np.float64, True)
    st = case.stats(x, w, b)
    for needs in [(), (True,) * (case.n_grads - 1), (True,) * (case.n_grads + 1)]:
        with pytest.raises(ValueError):
            case.backward(dy, x, st, w, needs=needs)


def test_bad_weight_and_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5))
    dy = rng.standard_normal(x.shape)
    _, mean, rstd = normfast.group_norm(x, 3, return_stats=True)
    with pytest.raises(ValueError):
        normfast.group_norm_backward(dy, x, mean, rstd, 4)             # 4 does not divide 6
    with pytest.raises(ValueError):
        normfast.group_norm_backward(dy, x, mean, rstd, 2)             # stats are (2, 3), not (2, 2)
    with pytest.raises(ValueError):
        normfast.group_norm_backward(dy, x, mean, rstd, 3, np.ones(5))  # weight shape
    _, mean, rstd = normfast.layer_norm(x, (6, 5), return_stats=True)
    with pytest.raises(ValueError):
        normfast.layer_norm_backward(dy, x, mean, rstd, (5, 6))
    with pytest.raises(ValueError):
        normfast.layer_norm_backward(dy, x, mean, rstd, (6, 5), np.ones(5))


# ----------------------------------------------------------------------------------------------
# out= for grad_x: a separate array, grad_out itself or x itself (in place), any layout / dtype
# ----------------------------------------------------------------------------------------------
OUT_CASES = (row_cases(eps_rms=(EPS,)) + channel_cases(ranks=(0, 2))
             + [Case("layer", (300, 1000), nshape=(1000,)), Case("batch", (8, 9, 9, 33), channel_axis=-1),
                Case("group", (4, 32, 300), groups=8), Case("instance", (4, 300, 32), channel_axis=-1)])


@pytest.mark.parametrize("where", ["separate", "grad_out", "x", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", OUT_CASES, ids=_ids(OUT_CASES))
def test_out(case, dtype, where):
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


@pytest.mark.parametrize("case", NONCONTIG_CASES, ids=_ids(NONCONTIG_CASES))
def test_out_in_place_over_strided_grad_out(case):
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


@pytest.mark.parametrize("case", [Case("layer", (6, 10), nshape=(10,)), Case("batch", (4, 3, 5)),
                                  Case("group", (2, 4, 5), groups=2)], ids=repr)
def test_out_float16(case):
    """float16 x: grad_x computed in float32 and written into a float16 out (also grad_out itself)."""
    x, dy, w, b = case.data(np.float16, True, seed=53)
    st = case.stats(x, w, b)
    full = case.backward(dy, x, st, w)
    out = np.empty_like(x)
    assert case.backward(dy, x, st, w, out=out)[0] is out
    np.testing.assert_array_equal(out, full[0])
    assert case.backward(dy, x, st, w, out=dy)[0] is dy
    np.testing.assert_array_equal(dy, full[0])


@pytest.mark.parametrize("case", [Case("layer", (6, 10), nshape=(10,)), Case("rms", (6, 10), nshape=(10,)),
                                  Case("batch", (4, 3, 5)), Case("instance", (2, 4, 5), channel_axis=-1)], ids=repr)
def test_out_rejected(case):
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


def test_out_torch_in_place():
    """torch tensors: out=grad_out comes back as the caller's tensor, equal to torch.autograd's grad."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(55)
    x = torch.from_numpy(rng.normal(3.0, 2.0, (64, 96)).astype(np.float32))
    w = torch.from_numpy(rng.normal(1.0, 0.2, 96).astype(np.float32))
    dy = torch.from_numpy(rng.normal(0.0, 1.0, (64, 96)).astype(np.float32))
    xt = x.clone().requires_grad_(True)
    torch.nn.functional.layer_norm(xt, (96,), w, None).backward(dy)
    _, mean, rstd = normfast.layer_norm(x, 96, w, return_stats=True)
    g = dy.clone()
    gx, gw, _ = normfast.layer_norm_backward(g, x, mean, rstd, 96, w, out=g)
    assert gx is g
    torch.testing.assert_close(g, xt.grad, rtol=1e-5, atol=1e-5)


def test_bench_training_scenario(tmp_path, capsys):
    """`python -m normfast bench --scenario training --quick`: every operator and layout has
    forward+backward and backward rows for normfast (allocated and out=) and the copy roofline,
    with normfast's grad_x close to torch's float64 autograd."""
    pytest.importorskip("torch")
    from normfast import bench
    path = tmp_path / "t.json"
    assert bench.main(["--scenario", "training", "--quick", "--reps", "1", "--backends", "torch",
                       "--json", str(path)]) == 0
    assert "forward+backward" in capsys.readouterr().out
    import json
    rows = json.loads(path.read_text())["results"]
    from normfast.bench.training import CASES
    keys = {(r["op"], r["shape"].split(" ")[-1] if " " in r["shape"] else "rows", r["phase"], r["backend"])
            for r in rows}
    for op, layout, _, _ in CASES:
        for phase in ("forward+backward", "backward"):
            for backend in ("normfast", "normfast out=", "torch", "copy"):
                assert (op, layout, phase, backend) in keys, (op, layout, phase, backend)
    for r in rows:
        assert r["median_s"] > 0 and r["gbps"] > 0
        if r["backend"] == "normfast":
            assert r["max_rel_err"] < 1e-5


GPU_OUT_CALLS = {
    "layer_norm": lambda x, dy, w, out: normfast.layer_norm_backward(
        dy, x, *normfast.layer_norm(x, 7, w[:7], w[:7], return_stats=True)[1:], 7, w[:7], out=out),
    "rms_norm": lambda x, dy, w, out: normfast.rms_norm_backward(
        dy, x, normfast.rms_norm(x, 7, w[:7], return_stats=True)[1], 7, w[:7], out=out),
    "batch_norm_nhwc": lambda x, dy, w, out: normfast.batch_norm_backward(
        dy, x, *normfast.batch_norm(x, None, None, w[:7], None, True, channel_axis=-1, return_stats=True)[1:],
        w[:7], channel_axis=-1, out=out),
    "group_norm": lambda x, dy, w, out: normfast.group_norm_backward(
        dy, x, *normfast.group_norm(x, 2, w[:6], None, return_stats=True)[1:], 2, w[:6], out=out),
    "add_layer_norm": lambda x, dy, w, out: normfast.add_layer_norm_backward(
        dy, dy * 0.5, *(lambda r: (r[1], r[2], r[3]))(normfast.add_layer_norm(x, dy, 7, w[:7], return_stats=True)),
        7, w[:7], out=out),
}


@pytest.mark.parametrize("name", list(GPU_OUT_CALLS))
def test_out_on_the_gpu_route(monkeypatch, name):
    """CuPy arrays (CUDA emulator): out= separate or over grad_out gives the allocated result and
    leaves the parameter gradients unchanged (the GPU reads x and grad_out again for dw/db, so
    in place goes through a separate buffer there)."""
    from cuda_emu import backend
    cp = backend("emu", monkeypatch)
    call = GPU_OUT_CALLS[name]
    rng = np.random.default_rng(56)
    x = cp.asarray((3 + rng.standard_normal((4, 6, 5, 7))).astype(np.float32))
    w = cp.asarray((1 + 0.5 * rng.standard_normal(40)).astype(np.float32))
    dy0 = (rng.standard_normal((4, 6, 5, 7))).astype(np.float32)
    full = call(x, cp.asarray(dy0), w, None)
    out = cp.empty_like(x)
    got = call(x, cp.asarray(dy0), w, out)
    assert got[0] is out
    dy = cp.asarray(dy0)
    inpl = call(x, dy, w, dy)
    assert inpl[0] is dy
    for res in (got, inpl):
        for g, f in zip(res, full):
            if f is not None:
                np.testing.assert_array_equal(cp.asnumpy(g) if hasattr(g, "device") else g,
                                              cp.asnumpy(f) if hasattr(f, "device") else f)

