"""RMSNorm forward."""
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("shape", [(4096, 1024), (32, 768)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["rms_norm"])
def test_rms_norm(run_bench, op, backend, shape):
    run_bench(op, backend, shape)
