"""pytest configuration: the hypothesis profile and the shared fixtures.  Helpers and
references live in the importable module tests/_helpers.py (not here: two conftest modules
of one run, tests/ and benchmarks/, would shadow each other)."""
import os
import zlib

import numpy as np
import pytest
from hypothesis import settings as hyp_settings

from cuda_emu import PARAMS, backend

# CI (CI=true) runs the property-based tests derandomized, so a landing never depends on luck;
# local runs keep exploring new examples.
hyp_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hyp_settings.load_profile("ci")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def rng(request):
    """A generator seeded from the test id, so every parametrization gets its own data
    and a failure reproduces."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=PARAMS)
def cp(request, monkeypatch):
    """The cupy module of each GPU backend: the CUDA emulator, and CuPy on a device (marked ``gpu``)."""
    return backend(request.param, monkeypatch)
