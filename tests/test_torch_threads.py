"""normfast and torch in one process share one OpenMP runtime: normfast's default thread count
follows torch.set_num_threads (set from the main thread, it holds in other threads too),
normfast.set_num_threads overrides it for normfast only, and neither changes the other's
explicit setting.  Run in a fresh interpreter so other tests' thread settings do not leak in."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

SCRIPT = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import torch
    import normfast as nf
    import normfast.torch as nft
    out = {}
    maps = open("/proc/self/maps").read().splitlines()
    out["gomp"] = sorted({l.split()[-1] for l in maps if "libgomp" in l})
    base = torch.get_num_threads()
    out["base"] = (base, nf.get_num_threads())
    torch.set_num_threads(1)
    out["torch1"] = (torch.get_num_threads(), nf.get_num_threads())
    seen = []
    th = threading.Thread(target=lambda: seen.append((torch.get_num_threads(), nf.get_num_threads())))
    th.start(); th.join()
    out["other_thread"] = seen[0]
    nf.set_num_threads(2)
    out["nf2"] = (torch.get_num_threads(), nf.get_num_threads())
    x = torch.randn(256, 4096)
    y2 = nft.LayerNorm(4096)(x)
    nf.set_num_threads(None)
    out["nf_none"] = (torch.get_num_threads(), nf.get_num_threads())
    y1 = nft.LayerNorm(4096)(x)
    out["same_result"] = bool(torch.equal(y1, y2))
    torch.set_num_threads(base)
    out["restored"] = (torch.get_num_threads(), nf.get_num_threads())
    print(repr(out))
""")


def test_one_runtime_and_predictable_thread_counts():
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
    assert res.returncode == 0, res.stderr
    out = eval(res.stdout.strip().splitlines()[-1])
    assert len(out["gomp"]) == 1, out["gomp"]            # one OpenMP runtime (torch's libgomp)
    base = out["base"][0]
    assert out["base"] == (base, base)                   # both default to the same count
    assert out["torch1"] == (1, 1)                       # normfast follows torch.set_num_threads ...
    assert out["other_thread"] == (1, 1)                 # ... in other Python threads too (set from main)
    assert out["nf2"] == (1, 2)                          # normfast's override: normfast only, no cap
    assert out["nf_none"] == (1, 1)                      # None: back to following torch
    assert out["same_result"]                            # results do not depend on the thread count
    assert out["restored"] == (base, base)
