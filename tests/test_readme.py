"""The README's Python code blocks run as written, in order, in one namespace (as a reader pastes
them), each block checked to finish; a block that needs what this machine lacks (a CUDA device,
an optional package) is skipped with the reason."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _needs(block):
    """Why this block cannot run here, or None."""
    import importlib.util
    for mod in re.findall(r"^\s*(?:import|from)\s+([A-Za-z_][\w]*)", block, flags=re.M):
        if mod != "normfast" and importlib.util.find_spec(mod) is None:
            return f"needs {mod}"
    if re.search(r"^\s*import cupy", block, flags=re.M):
        import normfast
        if "cupy" not in normfast.backends():
            return "needs a CUDA device"
    return None


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "readme"}


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, namespace):
    why = _needs(BLOCKS[i])
    if why:
        pytest.skip(why)
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), namespace)


def test_dask_extra_named_when_missing():
    """`import normfast.dask` without Dask names the extra to install."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['dask'] = None\n"
            "try:\n    import normfast.dask\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'normfast[dask]'" in out
