"""normfast.torch's registered ops: opcheck (schema, fake kernels, autograd registration),
gradcheck in float64 for every op on both paths (registered op and eager autograd function,
which must agree bit for bit), torch.compile(fullgraph=True) and torch.export of a model
that uses every op."""
import copy

import pytest

torch = pytest.importorskip("torch")
nft = pytest.importorskip("normfast.torch")
from normfast.torch import _ops  # noqa: E402

D = torch.float64


def _r(*shape, seed=0, grad=True, dtype=D):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.requires_grad_(grad)


def _cases(cl=False):
    """(op name, args, indices of the differentiable outputs) with every optional argument used somewhere."""
    x = _r(3, 4, 5, 2)
    if cl:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w4, b4, w2 = _r(4, seed=1), _r(4, seed=2), _r(2, seed=3)
    rm, rv = _r(4, seed=4, grad=False), _r(4, seed=5, grad=False).abs() + 0.5
    return [
        ("layer_norm", (x, [5, 2], _r(5, 2, seed=6), _r(5, 2, seed=7), 1e-5), (0,)),
        ("layer_norm", (x, [2], None, _r(2, seed=7), 1e-5), (0,)),
        ("rms_norm", (x, [2], w2, None), (0,)),
        ("rms_norm", (x, [5, 2], None, 1e-6), (0,)),
        ("add_layer_norm", (x, _r(3, 4, 5, 2, seed=8), [2], w2, _r(2, seed=9), 1e-5), (0, 1)),
        ("add_rms_norm", (x, _r(3, 4, 5, 2, seed=8), [2], w2, 1e-6), (0, 1)),
        ("normalize", (x, [1, 3], _r(4, 2, seed=10), _r(4, 2, seed=11), 1e-5), (0,)),
        ("normalize", (x, [0], None, None, 1e-5), (0,)),
        ("batch_norm", (x, w4, b4, None, None, True, 0.1, 1e-5), (0,)),
        ("batch_norm", (x, w4, None, rm, rv, False, 0.1, 1e-5), (0,)),
        ("group_norm", (x, 2, w4, b4, 1e-5), (0,)),
        ("group_norm", (x, 4, None, None, 0.0), (0,)),
        ("instance_norm", (x, w4, b4, None, None, True, 0.1, 1e-5), (0,)),
        ("instance_norm", (x, None, b4, rm, rv, False, 0.1, 1e-5), (0,)),
    ]


@pytest.mark.parametrize("cl", [False, True], ids=["contiguous", "channels_last"])
def test_opcheck_every_forward_op(cl):
    for name, args, _ in _cases(cl):
        res = torch.library.opcheck(_ops.OPS[name], args, test_utils=("test_schema", "test_faketensor",
                                                                        "test_autograd_registration"))
        assert all(v == "SUCCESS" for v in res.values()), (name, res)


def test_opcheck_backward_ops_fake_strides():
    """The backward ops' fake kernels give the real outputs' shapes, dtypes and strides."""
    for cl in (False, True):
        x = _r(2, 4, 3, 3, grad=False)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        gy, w = _r(2, 4, 3, 3, seed=1, grad=False), _r(4, seed=2, grad=False)
        _, mean, rstd = _ops.OPS["batch_norm"](x, w, None, None, None, True, 0.1, 1e-5)[:3]
        for mask in ([True, True, True], [False, True, False]):
            res = torch.library.opcheck(_ops.OPS["batch_norm_backward"], (gy, x, mean, rstd, w, True, mask),
                                        test_utils=("test_schema", "test_faketensor"))
            assert all(v == "SUCCESS" for v in res.values()), res


def _diff_outputs(name, args, outs):
    res = _ops.OPS[name](*args)
    return [res[i] for i in outs]


@pytest.mark.parametrize("case", range(14))
def test_gradcheck_float64_both_paths(case):
    name, args, outs = _cases()[case]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def f_op(*ls):
        it = iter(ls)
        a = [next(it) if isinstance(v, torch.Tensor) and v.requires_grad else v for v in args]
        return tuple(_diff_outputs(name, a, outs))

    assert torch.autograd.gradcheck(f_op, leaves, atol=1e-7)
    # the eager autograd function: identical outputs and gradients to the registered op's
    op_out = _ops.OPS[name](*args)
    eager_out = _ops.EAGER[name].apply(*args)
    g = [torch.randn_like(op_out[i]) for i in outs]
    go = torch.autograd.grad([op_out[i] for i in outs], leaves, g)
    ge = torch.autograd.grad([eager_out[i] for i in outs], leaves, g)
    for i in outs:
        assert torch.equal(op_out[i], eager_out[i])
    for a, b in zip(go, ge):
        assert torch.equal(a, b)


class _EveryOp(torch.nn.Module):
    """A small model calling every registered op (through the modules and functions)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nft.BatchNorm2d(8)
        self.gn = nft.GroupNorm(2, 8)
        self.inorm = nft.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.ln = nft.LayerNorm(8)
        self.add_ln = nft.AddLayerNorm(8)
        self.rms = nft.RMSNorm(8)
        self.add_rms = nft.AddRMSNorm(8)
        self.w = torch.nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, img):
        h = self.inorm(self.gn(self.bn(self.conv(img))))
        t = h.flatten(2).transpose(1, 2)                    # (N, HW, C)
        a = self.ln(t)
        y, r = self.add_ln(a, t)
        y = self.rms(y)
        y, r = self.add_rms(y, r)
        return nft.normalize(y + r, (1,), eps=1e-5).sum(-1)


def _every_op_model():
    torch.manual_seed(0)
    return _EveryOp()


def test_compile_fullgraph_every_op_matches_eager():
    m = _every_op_model()
    mc = _every_op_model()
    mc.load_state_dict(m.state_dict())
    img = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(mc, fullgraph=True, backend="aot_eager")
    for _ in range(2):                                   # running stats evolve the same way
        ye, yc = m(img), compiled(img)
        assert (ye - yc).abs().max().item() <= 1e-6
    ge = torch.autograd.grad(m(img).sum(), m.conv.weight)[0]
    gc = torch.autograd.grad(compiled(img).sum(), mc.conv.weight)[0]
    assert torch.allclose(ge, gc, atol=1e-5, rtol=1e-5)
    for k, v in m.state_dict().items():
        assert torch.allclose(v.double(), mc.state_dict()[k].double(), atol=1e-6), k


def test_export_every_op():
    m = _every_op_model().eval()
    img = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(m, (img,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for name in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "normalize", "batch_norm",
                 "group_norm", "instance_norm"):
        assert f"normfast.{name}.default" in targets, name
    assert torch.allclose(ep.module()(img), m(img), atol=1e-6)


def test_export_training_records_buffer_mutations():
    m = _every_op_model().train()
    img = torch.randn(2, 3, 6, 6)
    ref = _every_op_model().train()
    ep = torch.export.export(m, (img,)).run_decompositions()
    mutated = set(ep.graph_signature.buffers_to_mutate.values())
    assert {"bn.running_mean", "bn.running_var", "inorm.running_mean", "inorm.running_var"} <= mutated
    em = ep.module()
    em(img)
    ref(img)
    assert torch.allclose(em.bn.running_mean, ref.bn.running_mean, atol=1e-6)


def test_profiler_shows_ops_by_name():
    m = nft.LayerNorm(8)
    x = torch.randn(4, 8)
    with torch.profiler.profile() as prof:
        m(x)
    assert any("normfast::layer_norm" in e.key for e in prof.key_averages())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_no_grad_fast_path_equals_registered_op(dtype):
    """The eager no-grad call (kernels on NumPy views, no statistics) is bit-identical to the op."""
    x = _r(4, 3, 16, grad=False).to(dtype)
    ln, rms = nft.LayerNorm(16).to(dtype), nft.RMSNorm(16).to(dtype)
    with torch.no_grad():
        for p in (*ln.parameters(), *rms.parameters()):
            p.uniform_(0.5, 1.5)
        assert torch.equal(ln(x), _ops.OPS["layer_norm"](x, [16], ln.weight, ln.bias, 1e-5)[0])
        assert torch.equal(rms(x), _ops.OPS["rms_norm"](x, [16], rms.weight, None)[0])


@pytest.mark.parametrize("path", ["op", "eager"])
def test_double_backward_is_an_error_not_a_silent_zero(path):
    x = _r(3, 4)
    f = _ops.OPS["layer_norm"] if path == "op" else _ops.EAGER["layer_norm"].apply
    y = f(x, [4], None, None, 1e-5)[0]
    with pytest.raises(RuntimeError):
        g, = torch.autograd.grad((y ** 3).sum(), x, create_graph=True)
        torch.autograd.grad(g.sum(), x)


def test_inductor_compile_every_op_checks_fake_strides():
    """Inductor asserts every custom op output's size and stride against the fake kernel's."""
    m = _every_op_model()
    img = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(m, fullgraph=True)
    ref = copy.deepcopy(m)                      # training mode: batch statistics, strided in the kernels
    with torch.no_grad():
        assert (compiled(img) - ref(img)).abs().max().item() <= 1e-5
        assert torch.allclose(m.bn.running_var, ref.bn.running_var, atol=1e-6)
