"""GroupNorm forward (32 groups), NCHW and channels-last."""
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(16, 128, 16, 16)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["group_norm"])
def test_group_norm(run_bench, op, backend, shape, layout):
    run_bench(op, backend, shape, layout)
