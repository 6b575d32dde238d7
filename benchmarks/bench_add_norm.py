"""Fused residual add + norm (h = x + residual; y = norm(h)) against the unfused sequences:
normfast-unfused (np.add then normfast's norm), numpy, torch, cupy.  Skipped when normfast
has no add_layer_norm / add_rms_norm."""
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("shape", [(4096, 1024)], ids=shape_id)
@pytest.mark.parametrize("backend", ("normfast", "normfast-unfused") + BACKENDS[1:])
@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_add_norm(run_bench, op, backend, shape):
    run_bench(op, backend, shape)
