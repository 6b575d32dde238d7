"""Memory stays bounded (issue 12, class 4): every operator, forward and backward, in float16,
float32 and float64, needs at most ONE output-sized buffer beyond its inputs and outputs.

Measured as the growth of the peak resident set during the call (Linux: VmHWM of
/proc/self/status, reset before each call by writing 5 to /proc/self/clear_refs) in a fresh
subprocess per dtype, with inputs of 8M values (16-64 MB) so that the few MB of per-thread
buffers and interpreter noise stay far below one output.  Per-statistic float64 arrays get no
allowance of their own: with 16 spatial values per (sample, channel) in float16 one of them is a
quarter of the output, so they must fit in the one output-sized buffer (the channel-wise paths
hold them per block of samples: normfast._core.sample_blocks).  glibc's mmap threshold is
pinned low so that freed temporaries leave the resident set at once, and normfast's block cache
is emptied before each call, so an earlier call's memory is never counted as free for the next.
"""
import json
import os
import subprocess
import sys
import textwrap
from functools import lru_cache

import numpy as np
import pytest

from normfast._cpu import _normalize

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc (Linux)"),
    # AddressSanitizer keeps freed memory in quarantine and maps shadow memory: RSS is not the program's
    pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""), reason="peak RSS is not meaningful under ASan"),
]

SLACK = 4 << 20     # bytes: per-thread buffers, small NumPy temporaries, interpreter

_SCRIPT = textwrap.dedent(r"""
    import gc, json, sys
    import numpy as np
    import normfast as nf
    from normfast._cpu import _alloc

    dt = np.dtype(sys.argv[1])
    rng = np.random.default_rng(0)

    def arr(shape):
        return rng.standard_normal(shape).astype(dt)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def arrays(res):
        res = res if isinstance(res, tuple) else (res,)
        return [a for a in res if isinstance(a, np.ndarray)]

    def measure(fn):
        _alloc.clear()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # peak RSS := current RSS
        base = status("VmRSS")
        res = fn()
        peak = status("VmHWM")
        outs = arrays(res)
        r = {"extra": peak - base, "out": sum(a.nbytes for a in outs), "biggest": max([a.nbytes for a in outs] + [0])}
        del res, outs
        return r

    C = 64
    x4 = arr((8192, C, 4, 4))       # NCHW with 16 spatial values (< 32: column-mode coefficients)
    x2 = x4.reshape(-1, 1024)
    r2 = arr(x2.shape)
    g4 = arr(x4.shape)
    g2 = g4.reshape(x2.shape)
    s4 = arr((2048, C, 8, 8))       # 64 spatial values: statistics 1/64 of the values
    h4 = arr(s4.shape)
    w1, b1 = arr(1024), arr(1024)
    wc, bc = arr(C), arr(C)
    rm, rv = np.zeros(C), np.ones(C)
    nf.layer_norm(x2[:4], 1024)     # warm-up: threads and lazy imports are not the operator's memory

    _, ln_m, ln_r = nf.layer_norm(x2, 1024, w1, b1, return_stats=True)
    _, rms_r = nf.rms_norm(x2, 1024, w1, return_stats=True)
    _, h2, aln_m, aln_r = nf.add_layer_norm(x2, r2, 1024, w1, b1, return_stats=True)
    _, bn_m, bn_r = nf.batch_norm(x4, None, None, wc, bc, training=True, return_stats=True)
    _, gn_m, gn_r = nf.group_norm(x4, 16, wc, bc, return_stats=True)
    _, in_m, in_r = nf.instance_norm(x4, weight=wc, bias=bc, return_stats=True)
    _, gs_m, gs_r = nf.group_norm(s4, 16, wc, bc, return_stats=True)
    _, is_m, is_r = nf.instance_norm(s4, weight=wc, bias=bc, return_stats=True)

    NC, NS = 8192 * C, 2048 * C     # statistics per (sample, channel)
    cases = {   # name: (call, number of float64 statistics per statistic array)
        "layer_norm": (lambda: nf.layer_norm(x2, 1024, w1, b1), len(x2)),
        "rms_norm": (lambda: nf.rms_norm(x2, 1024, w1), len(x2)),
        "add_layer_norm": (lambda: nf.add_layer_norm(x2, r2, 1024, w1, b1), len(x2)),
        "add_rms_norm": (lambda: nf.add_rms_norm(x2, r2, 1024, w1), len(x2)),
        "batch_norm_train": (lambda: nf.batch_norm(x4, rm, rv, wc, bc, training=True), C),
        "batch_norm_eval": (lambda: nf.batch_norm(x4, rm, rv, wc, bc, training=False), C),
        "group_norm": (lambda: nf.group_norm(x4, 16, wc, bc), 8192 * 16),
        "group_norm_hw64": (lambda: nf.group_norm(s4, 16, wc, bc), 2048 * 16),
        "instance_norm": (lambda: nf.instance_norm(x4, weight=wc, bias=bc), NC),
        "instance_norm_hw64": (lambda: nf.instance_norm(s4, weight=wc, bias=bc), NS),
        "instance_norm_running": (lambda: nf.instance_norm(x4, rm, rv, wc, bc), NC),
        "instance_norm_running_hw64": (lambda: nf.instance_norm(s4, rm, rv, wc, bc), NS),
        "instance_norm_eval": (lambda: nf.instance_norm(x4, rm, rv, wc, bc, use_input_stats=False), NC),
        "instance_norm_eval_hw64": (lambda: nf.instance_norm(s4, rm, rv, wc, bc, use_input_stats=False), NS),
        "normalize_axis1": (lambda: nf.normalize(x4, axis=1), 8192 * 16),
        "normalize_axis1_affine": (lambda: nf.normalize(x4, axis=1, weight=wc, bias=bc), 8192 * 16),   # transposes
        "moments": (lambda: nf.moments(x4, axis=(0, 2, 3)), C),
        "layer_norm_backward": (lambda: nf.layer_norm_backward(g2, x2, ln_m, ln_r, 1024, w1), len(x2)),
        "rms_norm_backward": (lambda: nf.rms_norm_backward(g2, x2, rms_r, 1024, w1), len(x2)),
        "add_layer_norm_backward": (lambda: nf.add_layer_norm_backward(g2, r2, h2, aln_m, aln_r, 1024, w1),
                                    len(x2)),
        "batch_norm_backward": (lambda: nf.batch_norm_backward(g4, x4, bn_m, bn_r, wc), C),
        "group_norm_backward": (lambda: nf.group_norm_backward(g4, x4, gn_m, gn_r, 16, wc), NC),
        "group_norm_backward_hw64": (lambda: nf.group_norm_backward(h4, s4, gs_m, gs_r, 16, wc), NS),
        "instance_norm_backward": (lambda: nf.instance_norm_backward(g4, x4, in_m, in_r, wc), NC),
        "instance_norm_backward_hw64": (lambda: nf.instance_norm_backward(h4, s4, is_m, is_r, wc), NS),
    }
    res = {}
    for name, (fn, nstat) in cases.items():
        res[name] = measure(fn)
        res[name]["stat"] = 8 * nstat
    print(json.dumps(res))
""")

CASES = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm_train", "batch_norm_eval",
         "group_norm", "group_norm_hw64", "instance_norm", "instance_norm_hw64", "instance_norm_running",
         "instance_norm_running_hw64", "instance_norm_eval", "instance_norm_eval_hw64", "normalize_axis1",
         "normalize_axis1_affine", "moments",
         "layer_norm_backward", "rms_norm_backward", "add_layer_norm_backward", "batch_norm_backward",
         "group_norm_backward", "group_norm_backward_hw64", "instance_norm_backward", "instance_norm_backward_hw64"]


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@lru_cache(maxsize=None)
def _measured(dtype):
    """{case: {"extra", "out", "biggest"}} (bytes) from a fresh interpreter."""
    if not _can_reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here (peak RSS cannot be reset)")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    # NF_MEMTEST_ROOT: measure another checkout (e.g. the release before this fix: it fails 32 cases)
    root = os.environ.get("NF_MEMTEST_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _SCRIPT, dtype], capture_output=True, text=True, env=env, cwd=root,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_script_covers_every_case():
    assert set(_measured("float32")) == set(CASES)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_peak_memory_is_one_output_beyond_inputs_and_outputs(case, dtype):
    if dtype == "float16" and not _normalize.HAVE_F16:
        pytest.skip("kernels built without _Float16: float16 is computed on float32 copies")
    m = _measured(dtype)[case]
    bound = m["out"] + m["biggest"] + SLACK
    assert m["extra"] <= bound, (
        f"{case} {dtype}: peak grew by {m['extra'] / 2**20:.1f} MiB; outputs {m['out'] / 2**20:.1f} MiB, "
        f"bound (outputs + one output + {SLACK >> 20} MiB) {bound / 2**20:.1f} MiB "
        f"(one statistic array: {m['stat'] / 2**20:.2f} MiB)")


def test_measurement_sees_a_temporary():
    """The method is sensitive: a call that makes one float32 copy of a float16 input (16 MB)
    and its float32 result on top of its float16 output is caught."""
    def code(body):
        return textwrap.dedent(f"""
            import numpy as np
            def status(key):
                for line in open("/proc/self/status"):
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
            x = np.ones(8 << 20, np.float16)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = status("VmRSS")
            {body}
            print(status("VmHWM") - base)
        """)
    if not _can_reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = x_bytes = 16 << 20
    grown = int(subprocess.run([sys.executable, "-c", code("y = (x.astype(np.float32) * 2).astype(np.float16)")],
                               capture_output=True, text=True, env=env, check=True).stdout)
    assert grown >= 2 * (2 * x_bytes) - SLACK   # the two float32 arrays alive at the multiply
    assert grown > out + out + SLACK            # ... over the bound


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_sample_blocks_change_no_bit(monkeypatch, dtype, channels_last):
    """The channel-wise paths hold their per-statistic temporaries per block of samples
    (normfast._core.sample_blocks).  Blocks of one sample give bitwise the results of one block
    for the whole batch: outputs, returned statistics, running buffers and every gradient."""
    from normfast import _core
    import normfast as nf
    rng = np.random.default_rng(5)
    shape = (7, 6, 3, 5) if not channels_last else (7, 3, 5, 6)
    ca = -1 if channels_last else 1
    x = (rng.standard_normal(shape) * 0.1 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(6), rng.standard_normal(6)

    def run():
        rm, rv = np.zeros(6), np.ones(6)
        y, m, r = nf.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
        gi = nf.instance_norm_backward(dy, x, m, r, w, channel_axis=ca)
        _, gm, gr = nf.group_norm(x, 3, w, b, channel_axis=ca, return_stats=True)
        gg = nf.group_norm_backward(dy, x, gm, gr, 3, w, channel_axis=ca)
        return [y, m, r, rm, rv, *gi, *gg]

    whole = run()
    monkeypatch.setattr(_core, "STAT_BLOCK", 1)       # one sample per block
    assert len(_core.sample_blocks(7, 6)) == 7
    blocked = run()
    for a, c in zip(whole, blocked):
        np.testing.assert_array_equal(a, c)
