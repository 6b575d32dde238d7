"""Plain helpers of the pytest-benchmark suite (an importable module: ``from _cases import ...``;
conftest.py keeps only hooks and fixtures)."""

BACKENDS = ("normfast", "numpy", "torch", "cupy")


def shape_id(shape):
    return "x".join(str(n) for n in shape)
