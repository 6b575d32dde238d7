"""Benchmark cases: one builder per operator family (a registry), the suite of default shapes."""
from __future__ import annotations

import fnmatch
import math

import numpy as np

from ._references import EPS, GROUPS, RMS_EPS, ref_batch_norm, ref_batch_norm_backward, ref_batch_norm_eval, ref_batch_norm_stats, ref_group_norm, ref_instance_norm, ref_layer_norm, ref_layer_norm_backward, ref_layer_norm_stats, ref_moments, ref_rms_norm


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


class Peer:
    """One backend of a case: `fn()` is what is timed; `convert(fn())` gives the outputs
    (dict name -> NumPy array, in the reference's layout) used for the error."""

    def __init__(self, fn, convert=None, sync=None, note="", device="cpu"):
        self.fn, self.convert, self.sync, self.note, self.device = fn, convert, sync, note, device
        self.last = None


class Case:
    def __init__(self, op, shape, layout, dtype, nbytes, small=False):
        self.op, self.shape, self.layout, self.dtype = op, tuple(shape), layout, np.dtype(dtype)
        self.nbytes = int(nbytes)
        self.small = small
        self.factories = {}      # backend -> () -> Peer (built lazily, failures reported per peer)
        self.ref = None          # () -> dict name -> float64 array
        self.primary = None      # output names shown in the table (max over them)
        self.notes = {}

    @property
    def label(self):
        s = "x".join(str(n) for n in self.shape)
        if self.layout in ("NCHW", "NHWC"):
            s += " " + self.layout
        s += " " + {"float32": "f32", "float64": "f64", "float16": "f16"}[self.dtype.name]
        if self.small:
            s += " (small call)"
        return s


def _rand(rng, shape, dtype, loc=0.5, scale=2.0):
    """Uniform random with mean `loc` and standard deviation `scale` (uniform: cheap to draw)."""
    x = rng.random(size=shape, dtype=np.float64 if dtype == np.float64 else np.float32)
    x -= 0.5
    x *= scale * math.sqrt(12.0)
    x += loc
    return x.astype(dtype, copy=False)


def _storage_shape(shape, layout):
    """Logical (N, C, *spatial) -> the stored array shape for the layout."""
    if layout == "NHWC":
        return (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return tuple(shape)


def _to_torch(env, a, layout):
    t = env.torch.from_numpy(a)
    if layout == "NHWC":       # stored (N, *spatial, C) -> logical (N, C, *spatial), channels-last strides
        t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t


def _from_torch(t, layout):
    t = t.detach()
    if layout == "NHWC":
        t = t.permute(0, *range(2, t.ndim), 1)
    return t.cpu().numpy()


def _caxis(layout, ndim):
    return ndim - 1 if layout == "NHWC" else 1


def _ref_dtype(dtype):
    """The dtype the reference is computed in."""
    return np.float64


def _forward_case(env, case, x, params, nf_call, np_call, torch_call, out_name="y"):
    """Generic forward case.  nf_call(x, p, out); np_call(xp, x, p, out); torch_call(F, xt, pt) -> tensor."""
    layout = case.layout

    def nf():
        out = np.empty_like(x)
        return Peer(lambda: nf_call(x, params, out), lambda r: {out_name: r})

    def numpy_():
        out = np.empty_like(x)
        return Peer(lambda: np_call(np, x, params, out), lambda r: {out_name: r})

    def torch_():
        xt = _to_torch(env, x, layout)
        pt = {k: env.torch.from_numpy(v) for k, v in params.items()}
        F = env.F
        return Peer(lambda: torch_call(F, xt, pt), lambda r: {out_name: _from_torch(r, layout)})

    def cupy_():
        cp = env.cp
        xc = cp.asarray(x)
        pc = {k: cp.asarray(v) for k, v in params.items()}
        out = cp.empty_like(xc)
        return Peer(lambda: np_call(cp, xc, pc, out), lambda r: {out_name: cp.asnumpy(r)}, sync=env.gpu_sync,
                    device="gpu")

    def nf_gpu():
        cp = env.cp
        xc = cp.asarray(x)
        pc = {k: cp.asarray(v) for k, v in params.items()}
        out = cp.empty_like(xc)
        return Peer(lambda: nf_call(xc, pc, out), lambda r: {out_name: cp.asnumpy(r)}, sync=env.gpu_sync,
                    device="gpu")

    case.factories.update(normfast=nf, numpy=numpy_)
    if env.torch is not None:
        case.factories["torch"] = torch_
    if env.cp is not None:
        case.factories["cupy"] = cupy_
        if env.nf_gpu:
            case.factories["normfast-gpu"] = nf_gpu
    rd = _ref_dtype(x.dtype)
    case.ref = lambda: {out_name: np.asarray(np_call(np, x.astype(rd), {k: v.astype(rd) for k, v in params.items()},
                                                     None), dtype=np.float64)}
    case.primary = (out_name,)


def _build_moments(env, op, shape, layout, dtype, rng, small):
    """moments: (mean, var) over axis 0 (float64 input)."""
    nf, numel, it = env.nf, math.prod(shape), dtype.itemsize
    case = Case(op, shape, None, dtype, numel * it, small)
    x = _rand(rng, shape, dtype, loc=3.0)
    case.factories["normfast"] = lambda: Peer(lambda: nf.moments(x, axis=0), lambda r: {"mean": r[0], "var": r[1]})
    case.factories["numpy"] = lambda: Peer(lambda: ref_moments(np, x, 0), lambda r: {"mean": r[0], "var": r[1]})
    if env.torch is not None:
        def torch_():
            xt = env.torch.from_numpy(x)
            return Peer(lambda: env.torch.var_mean(xt, dim=0, correction=0),
                        lambda r: {"mean": r[1].numpy(), "var": r[0].numpy()})
        case.factories["torch"] = torch_
    if env.cp is not None:
        def cupy_():
            xc = env.cp.asarray(x)
            return Peer(lambda: ref_moments(env.cp, xc, 0),
                        lambda r: {"mean": env.cp.asnumpy(r[0]), "var": env.cp.asnumpy(r[1])},
                        sync=env.gpu_sync, device="gpu")
        case.factories["cupy"] = cupy_
    def ref():
        # float64 along a contiguous axis, where NumPy sums pairwise (error ~ log2(n) ulp)
        xt = np.ascontiguousarray(np.moveaxis(x, 0, -1), dtype=np.float64)
        mean = xt.mean(axis=-1)
        xt -= mean[..., None]
        return {"mean": mean, "var": np.square(xt, out=xt).mean(axis=-1)}
    case.ref = ref
    case.primary = ("mean", "var")
    return case


def _build_rows(env, op, shape, layout, dtype, rng, small):
    """layer_norm / rms_norm over the last axis."""
    nf, numel, it = env.nf, math.prod(shape), dtype.itemsize
    fwd_bytes = 2 * numel * it
    case = Case(op, shape, None, dtype, fwd_bytes, small)
    N = shape[-1]
    x = _rand(rng, shape, dtype)
    if op == "layer_norm":
        params = {"w": _rand(rng, (N,), dtype, 1.0, 0.5), "b": _rand(rng, (N,), dtype, 0.0, 0.5)}
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.layer_norm(x, (N,), p["w"], p["b"], EPS, out=out),
                      lambda xp, x, p, out: ref_layer_norm(xp, x, p["w"], p["b"], EPS, out),
                      lambda F, xt, p: F.layer_norm(xt, (N,), p["w"], p["b"], EPS))
    else:
        params = {"w": _rand(rng, (N,), dtype, 1.0, 0.5)}
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.rms_norm(x, (N,), p["w"], RMS_EPS, out=out),
                      lambda xp, x, p, out: ref_rms_norm(xp, x, p["w"], RMS_EPS, out),
                      lambda F, xt, p: F.rms_norm(xt, (N,), p["w"], RMS_EPS))
    return case


def _build_channels(env, op, shape, layout, dtype, rng, small):
    """batch_norm (train, eval), group_norm, instance_norm in NCHW or NHWC."""
    nf, numel, it = env.nf, math.prod(shape), dtype.itemsize
    fwd_bytes = 2 * numel * it
    if len(shape) < (3 if op == "instance_norm" else 2):
        need = "(N, C, H, ...)" if op == "instance_norm" else "(N, C, ...)"
        raise ValueError(f"{op} needs a shape {need}, got {shape}")
    case = Case(op, shape, layout, dtype, fwd_bytes, small)
    C = shape[1]
    x = _rand(rng, _storage_shape(shape, layout), dtype)
    ca = _caxis(layout, x.ndim)
    params = {"w": _rand(rng, (C,), dtype, 1.0, 0.5), "b": _rand(rng, (C,), dtype, 0.0, 0.5)}
    if op == "batch_norm":
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.batch_norm(x, None, None, p["w"], p["b"], True, 0.1, EPS,
                                                      channel_axis=ca, out=out),
                      lambda xp, x, p, out: ref_batch_norm(xp, x, p["w"], p["b"], EPS, ca, out),
                      lambda F, xt, p: F.batch_norm(xt, None, None, p["w"], p["b"], True, 0.1, EPS))
    elif op == "batch_norm_eval":
        params["rm"] = _rand(rng, (C,), dtype, 0.5, 0.3)
        params["rv"] = (np.abs(_rand(rng, (C,), dtype, 4.0, 1.0)) + np.asarray(0.1, dtype)).astype(dtype)
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.batch_norm(x, p["rm"], p["rv"], p["w"], p["b"], False, 0.1, EPS,
                                                      channel_axis=ca, out=out),
                      lambda xp, x, p, out: ref_batch_norm_eval(xp, x, p["rm"], p["rv"], p["w"], p["b"], EPS,
                                                                ca, out),
                      lambda F, xt, p: F.batch_norm(xt, p["rm"], p["rv"], p["w"], p["b"], False, 0.1, EPS))
    elif op == "group_norm":
        G = math.gcd(C, GROUPS)
        case.notes["groups"] = G
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.group_norm(x, G, p["w"], p["b"], EPS, channel_axis=ca, out=out),
                      lambda xp, x, p, out: ref_group_norm(xp, x, G, p["w"], p["b"], EPS, ca, out),
                      lambda F, xt, p: F.group_norm(xt, G, p["w"], p["b"], EPS))
    else:
        _forward_case(env, case, x, params,
                      lambda x, p, out: nf.instance_norm(x, None, None, p["w"], p["b"], True, 0.1, EPS,
                                                         channel_axis=ca, out=out),
                      lambda xp, x, p, out: ref_instance_norm(xp, x, p["w"], p["b"], EPS, ca, out),
                      lambda F, xt, p: F.instance_norm(xt, None, None, p["w"], p["b"], True, 0.1, EPS))
    return case


def _build_backward(env, op, shape, layout, dtype, rng, small):
    """layer_norm_backward / batch_norm_backward (torch: autograd.grad on a recorded graph)."""
    nf, numel, it = env.nf, math.prod(shape), dtype.itemsize
    row = op == "layer_norm_backward"
    if not row and len(shape) < 2:
        raise ValueError(f"{op} needs a shape (N, C, ...), got {shape}")
    case = Case(op, shape, None if row else layout, dtype, 3 * numel * it, small)
    x = _rand(rng, shape if row else _storage_shape(shape, layout), dtype)
    dy = _rand(rng, x.shape, dtype, 0.0, 1.0)
    K = shape[-1] if row else shape[1]
    w = _rand(rng, (K,), dtype, 1.0, 0.5)
    b = _rand(rng, (K,), dtype, 0.0, 0.5)
    ca = None if row else _caxis(layout, x.ndim)
    names = ("grad_x", "grad_weight", "grad_bias")

    def conv(r):
        return dict(zip(names, r))

    if row:
        def nf_():
            _, mean, rstd = nf.layer_norm(x, (K,), w, b, EPS, return_stats=True)
            return Peer(lambda: nf.layer_norm_backward(dy, x, mean, rstd, (K,), w), conv)

        def ref(xp, x, dy, w):
            mean, rstd = ref_layer_norm_stats(xp, x, EPS)
            return lambda: ref_layer_norm_backward(xp, dy, x, mean, rstd, w)
    else:
        def nf_():
            _, mean, rstd = nf.batch_norm(x, None, None, w, b, True, 0.1, EPS, channel_axis=ca,
                                          return_stats=True)
            return Peer(lambda: nf.batch_norm_backward(dy, x, mean, rstd, w, True, channel_axis=ca), conv)

        def ref(xp, x, dy, w):
            mean, rstd = ref_batch_norm_stats(xp, x, EPS, ca)
            return lambda: ref_batch_norm_backward(xp, dy, x, mean, rstd, w, ca)

    case.factories["normfast"] = nf_
    case.factories["numpy"] = lambda: Peer(ref(np, x, dy, w), conv)
    if env.torch is not None:
        def torch_():
            torch, F = env.torch, env.F
            lay = None if row else layout
            xt = _to_torch(env, x, lay).requires_grad_(True)
            gt = _to_torch(env, dy, lay)
            wt = torch.from_numpy(w).requires_grad_(True)
            bt = torch.from_numpy(b).requires_grad_(True)
            if row:
                y = F.layer_norm(xt, (K,), wt, bt, EPS)
            else:
                y = F.batch_norm(xt, None, None, wt, bt, True, 0.1, EPS)
            return Peer(lambda: torch.autograd.grad(y, (xt, wt, bt), gt, retain_graph=True),
                        lambda r: dict(zip(names, (_from_torch(r[0], lay), r[1].numpy(), r[2].numpy()))),
                        note="autograd.grad on a precomputed graph (backward only)")
        case.factories["torch"] = torch_
    if env.cp is not None:
        def cupy_():
            cp = env.cp
            fn = ref(cp, cp.asarray(x), cp.asarray(dy), cp.asarray(w))
            return Peer(fn, lambda r: dict(zip(names, (cp.asnumpy(a) for a in r))), sync=env.gpu_sync,
                        device="gpu")
        case.factories["cupy"] = cupy_
    rd = _ref_dtype(dtype)
    if row:
        def case_ref():
            # row-separable: float64 in blocks of rows (cache-sized temporaries), weight grads summed
            x2, dy2 = x.reshape(-1, K), dy.reshape(-1, K)
            gx = np.empty(x2.shape, dtype=np.float64)
            gw, gb = np.zeros(K), np.zeros(K)
            step = max(1, (1 << 18) // K)
            for i in range(0, x2.shape[0], step):
                g, dw_, db_ = ref(np, x2[i:i + step].astype(rd), dy2[i:i + step].astype(rd), w.astype(rd))()
                gx[i:i + step] = g
                gw += dw_
                gb += db_
            return {"grad_x": gx.reshape(x.shape), "grad_weight": gw, "grad_bias": gb}
        case.ref = case_ref
    else:
        case.ref = lambda: {k: np.asarray(v, dtype=np.float64)
                            for k, v in zip(names, ref(np, x.astype(rd), dy.astype(rd), w.astype(rd))())}
    case.primary = ("grad_x",)
    return case


def _build_add_norm(env, op, shape, layout, dtype, rng, small):
    """add_layer_norm / add_rms_norm, fused, against the unfused sequence."""
    nf, numel, it = env.nf, math.prod(shape), dtype.itemsize
    fused = getattr(nf, op, None)
    if fused is None:
        raise ValueError(f"normfast.{op} is not available in this build")
    ln = op == "add_layer_norm"
    case = Case(op, shape, None, dtype, 4 * numel * it, small)
    N = shape[-1]
    x = _rand(rng, shape, dtype)
    r = _rand(rng, shape, dtype, 0.0, 1.0)
    w = _rand(rng, (N,), dtype, 1.0, 0.5)
    b = _rand(rng, (N,), dtype, 0.0, 0.5)

    def conv(res):
        return {"y": res[0], "h": res[1]}

    def nf_fused():
        y, h = np.empty_like(x), np.empty_like(x)
        if ln:
            return Peer(lambda: fused(x, r, (N,), w, b, EPS, out=y, residual_out=h), conv)
        return Peer(lambda: fused(x, r, (N,), w, RMS_EPS, out=y, residual_out=h), conv)

    def unfused(xp, x, r, w, b, y, h):
        xp.add(x, r, out=h)
        if ln:
            return ref_layer_norm(xp, h, w, b, EPS, out=y), h
        return ref_rms_norm(xp, h, w, RMS_EPS, out=y), h

    def nf_unfused():
        y, h = np.empty_like(x), np.empty_like(x)

        def fn():
            np.add(x, r, out=h)
            if ln:
                return nf.layer_norm(h, (N,), w, b, EPS, out=y), h
            return nf.rms_norm(h, (N,), w, RMS_EPS, out=y), h
        return Peer(fn, conv, note="np.add then normfast norm")

    def numpy_():
        y, h = np.empty_like(x), np.empty_like(x)
        return Peer(lambda: unfused(np, x, r, w, b, y, h), conv)

    case.factories.update({"normfast": nf_fused, "normfast-unfused": nf_unfused, "numpy": numpy_})
    if env.torch is not None:
        def torch_():
            torch, F = env.torch, env.F
            xt, rt, wt, bt = (torch.from_numpy(a) for a in (x, r, w, b))
            ht = torch.empty_like(xt)

            def fn():
                torch.add(xt, rt, out=ht)
                return (F.layer_norm(ht, (N,), wt, bt, EPS) if ln else F.rms_norm(ht, (N,), wt, RMS_EPS)), ht
            return Peer(fn, lambda res: {"y": res[0].numpy(), "h": res[1].numpy()})
        case.factories["torch"] = torch_
    if env.cp is not None:
        def cupy_():
            cp = env.cp
            xc, rc, wc, bc = (cp.asarray(a) for a in (x, r, w, b))
            y, h = cp.empty_like(xc), cp.empty_like(xc)
            return Peer(lambda: unfused(cp, xc, rc, wc, bc, y, h),
                        lambda res: {"y": cp.asnumpy(res[0]), "h": cp.asnumpy(res[1])},
                        sync=env.gpu_sync, device="gpu")
        case.factories["cupy"] = cupy_

    def ref():
        rd = _ref_dtype(dtype)
        h = x.astype(rd) + r.astype(rd)
        y = ref_layer_norm(np, h, w.astype(rd), b.astype(rd), EPS) if ln else ref_rms_norm(np, h, w.astype(rd),
                                                                                            RMS_EPS)
        return {"y": np.asarray(y, dtype=np.float64), "h": np.asarray(h, dtype=np.float64)}
    case.ref = ref
    case.primary = ("y", "h")
    return case


# op -> its builder
BUILDERS = {op: fn for fn, ops in ((_build_moments, ("moments",)), (_build_rows, ("layer_norm", "rms_norm")),
                                  (_build_channels, ("batch_norm", "batch_norm_eval", "group_norm", "instance_norm")),
                                  (_build_backward, ("layer_norm_backward", "batch_norm_backward")),
                                  (_build_add_norm, ("add_layer_norm", "add_rms_norm"))) for op in ops}


def build_case(env, op, shape, layout, dtype, rng, small=False):
    """The Case for `op` on the logical `shape` (channel ops: (N, C, *spatial))."""
    builder = BUILDERS.get(op)
    if builder is None:
        raise ValueError(f"unknown op {op!r}")
    return builder(env, op, shape, layout, np.dtype(dtype), rng, small)


# op -> (default shapes, quick shapes, layouts, dtype, availability test)
SUITE = [
    ("moments", [(2_000_000, 16)], [(20_000, 16)], [None], np.float64),
    ("layer_norm", [(16384, 1024), (32, 768)], [(256, 1024), (32, 768)], [None], np.float32),
    ("rms_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("batch_norm", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW", "NHWC"], np.float32),
    ("batch_norm_eval", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("group_norm", [(32, 256, 28, 28)], [(4, 64, 8, 8)], ["NCHW", "NHWC"], np.float32),
    ("instance_norm", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("layer_norm_backward", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("batch_norm_backward", [(32, 64, 56, 56)], [(4, 16, 16, 16)], ["NCHW"], np.float32),
    ("add_layer_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
    ("add_rms_norm", [(16384, 1024)], [(256, 1024)], [None], np.float32),
]
ALL_OPS = [s[0] for s in SUITE]
SMALL_CALL_BYTES = 1 << 20      # a case below 1 MiB counts as a "small call" (latency, not bandwidth)


def plan_cases(nf, ops=None, shapes=None, quick=False):
    """[(op, shape, layout, dtype, small)] for the selection; ops not in this build are left out."""
    plan = []
    for op, default, quick_shapes, layouts, dtype in SUITE:
        if ops is not None and not any(fnmatch.fnmatchcase(op, pat) for pat in ops):
            continue
        if op.startswith("add_") and not hasattr(nf, op):
            continue
        for shape in (shapes if shapes else (quick_shapes if quick else default)):
            for layout in layouts:
                if layout == "NHWC" and len(shape) < 3:
                    continue            # channels-last is the same as channels-first without spatial dims
                small = math.prod(shape) * np.dtype(dtype).itemsize < SMALL_CALL_BYTES and not quick
                plan.append((op, tuple(shape), layout, dtype, small))
    return plan


