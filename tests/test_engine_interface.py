"""The written engine interface (structure issue, item 1): both engines implement every member of
normfast._engine.Engine with the same parameters, capabilities are flags (not hasattr probes), the
plan is a named tuple, and the reduction kinds have one numbering in Python, C and CUDA."""
import inspect
import pathlib
import re

import numpy as np

from normfast import _core
from normfast._engine import METHODS, Engine, Plan4, Reduce
from normfast._engine_cpu import CpuEngine
from normfast._gpu.engine import GpuEngine

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_engines_implement_the_protocol():
    for eng in (CpuEngine, GpuEngine):
        for name in METHODS:
            proto = inspect.signature(getattr(Engine, name))
            impl = inspect.signature(getattr(eng, name))
            assert list(impl.parameters) == list(proto.parameters), (eng.__name__, name)
        assert isinstance(eng.supports_samples, bool) and isinstance(eng.name, str)
        assert callable(getattr(eng, "samples_forward", None)) == eng.supports_samples
        assert callable(getattr(eng, "group_backward", None)) == eng.supports_group_backward


def test_plan_is_named():
    p = _core.plan4d((8, 3, 5, 7), {0, 2, 3})
    assert isinstance(p, Plan4)
    assert p == Plan4(1, 8, 3, 35) and p.kept_inner == 3 and p.reduced_inner == 35


def test_reduce_kinds_are_one_numbering():
    moments_h = (ROOT / "src_c" / "moments.h").read_text()
    cuh = (ROOT / "normfast" / "_gpu" / "common.cuh").read_text()
    for kind in Reduce:
        assert re.search(rf"NF_REDUCE_{kind.name}\s*=\s*{int(kind)}\b", moments_h), kind
        assert re.search(rf"#define NF_REDUCE_{kind.name}\s+{int(kind)}\b", cuh), kind


def test_grad_sums_kind_on_the_cpu_engine():
    """Reduce.GRAD_SUMS really is (n, sum dy, sum dy (x - m)) per (a, c): checked against NumPy."""
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    m = rng.normal(size=(2, 4))
    r = CpuEngine.reduce(x, Plan4(2, 3, 4, 5), Reduce.GRAD_SUMS, dy, m.reshape(-1))
    np.testing.assert_allclose(r[:, 1], dy.sum(axis=(1, 3)).reshape(-1), rtol=1e-12)
    ref = (dy * (x - m[:, None, :, None])).sum(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(r[:, 2], ref, rtol=1e-12)
    np.testing.assert_array_equal(r[:, 0], 15)
