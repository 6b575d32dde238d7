"""LayerNorm forward (large rows, and a small latency-bound call) and backward."""
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("shape", [(4096, 1024), (32, 768)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["layer_norm"])
def test_layer_norm(run_bench, op, backend, shape):
    run_bench(op, backend, shape)


@pytest.mark.parametrize("shape", [(4096, 1024)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["layer_norm_backward"])
def test_layer_norm_backward(run_bench, op, backend, shape):
    run_bench(op, backend, shape)
