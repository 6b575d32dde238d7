"""InstanceNorm forward, NCHW and channels-last."""
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(16, 64, 32, 32)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["instance_norm"])
def test_instance_norm(run_bench, op, backend, shape, layout):
    run_bench(op, backend, shape, layout)
