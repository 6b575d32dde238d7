"""BatchNorm: training forward (NCHW and channels-last), eval forward, training backward."""
import pytest

from _cases import BACKENDS, shape_id

SHAPES = [(16, 64, 32, 32)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["batch_norm", "batch_norm_eval"])
def test_batch_norm(run_bench, op, backend, shape, layout):
    run_bench(op, backend, shape, layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["batch_norm_backward"])
def test_batch_norm_backward(run_bench, op, backend, shape, layout):
    run_bench(op, backend, shape, layout)
