"""moments over axis 0 (column statistics of a tall float64 matrix)."""
import numpy as np
import pytest

from _cases import BACKENDS, shape_id


@pytest.mark.parametrize("shape", [(500_000, 16)], ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["moments"])
def test_moments(run_bench, op, backend, shape):
    run_bench(op, backend, shape, dtype=np.float64)
