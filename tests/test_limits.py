"""Sizes past 32-bit indexing, large outputs (streaming stores) and long runs (no leaks)."""
import gc
import resource

import numpy as np
import pytest

import normfast as nf

BIG = 2 ** 31 + 17          # elements: past int32 indexing; float32 -> over 2**32 bytes


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


needs_big_memory = pytest.mark.skipif(_mem_available() < 14 * 2 ** 30,
                                      reason="needs ~9 GB free memory for a 2**31-element float32 array")


@needs_big_memory
def test_row_longer_than_2_31_in_place():
    x = np.ones(BIG, np.float32)
    x[-1] = 2.0 ** 20                                   # the last element must be reached
    x[BIG // 2] = -(2.0 ** 20) + 2.0                    # ...and the middle one
    s = float(BIG - 2) + 2.0 ** 20 - 2.0 ** 20 + 2.0    # exact sum
    mean = s / BIG
    m2 = (BIG - 2) * (1 - mean) ** 2 + (2.0 ** 20 - mean) ** 2 + (-(2.0 ** 20) + 2 - mean) ** 2
    mu, var = nf.moments(x)
    assert mu == pytest.approx(mean, rel=1e-7) and var == pytest.approx(m2 / BIG, rel=1e-6)
    y, m, rstd = nf.layer_norm(x.reshape(1, BIG), BIG, out=x.reshape(1, BIG), return_stats=True)
    assert m[0] == pytest.approx(mean, rel=1e-12)
    assert rstd[0] == pytest.approx(1 / np.sqrt(m2 / BIG + 1e-5), rel=1e-9)
    r = 1 / np.sqrt(m2 / BIG + 1e-5)
    for i, v in ((0, 1.0), (BIG - 1, 2.0 ** 20), (BIG // 2, -(2.0 ** 20) + 2), (BIG - 2, 1.0)):
        assert x[i] == pytest.approx((v - mean) * r, rel=1e-6, abs=1e-6)


@needs_big_memory
def test_channel_reduction_over_2_31_channels_last():
    n = 2 ** 30 + 9                                     # 2 channels -> 2**31 + 18 values, > 2**32 bytes
    x = np.empty((n, 2), np.float32)
    x[:, 0] = 3.0
    x[:, 1] = -1.0
    x[-1, 0] = 3.0 + 2.0 ** 10
    x[0, 1] = -1.0 - 2.0 ** 10
    rm, rv = np.zeros(2), np.ones(2)
    y, mean, rstd = nf.batch_norm(x, rm, rv, training=True, momentum=1.0, channel_axis=-1, out=x,
                                  return_stats=True)
    m0, m1 = 3.0 + 2.0 ** 10 / n, -1.0 - 2.0 ** 10 / n
    v0 = ((n - 1) * (3.0 - m0) ** 2 + (3.0 + 2.0 ** 10 - m0) ** 2) / n
    assert mean[0] == pytest.approx(m0, rel=1e-12) and mean[1] == pytest.approx(m1, rel=1e-12)
    assert rstd[0] == pytest.approx(1 / np.sqrt(v0 + 1e-5), rel=1e-9)
    assert rv[0] == pytest.approx(v0 * n / (n - 1), rel=1e-9)
    assert x[-1, 0] == pytest.approx((2.0 ** 10 - 2.0 ** 10 / n) / np.sqrt(v0 + 1e-5), rel=1e-6)
    assert x[5, 0] == pytest.approx((3.0 - m0) / np.sqrt(v0 + 1e-5), rel=1e-5)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "batch_norm", "batch_norm_nhwc", "group_norm_nhwc",
                                "add_layer_norm", "backward"])
def test_large_outputs_streaming_path(op):
    """Outputs over 4 MB take the streaming-store path (new aligned output, separate out=,
    and an unaligned out= view): all equal."""
    rng = np.random.default_rng(0)
    x = (100 + rng.standard_normal((1500, 1000))).astype(np.float32)
    w = rng.standard_normal(1000).astype(np.float32)
    if op == "layer_norm":
        f = lambda out=None: nf.layer_norm(x, 1000, w, w, out=out)
    elif op == "rms_norm":
        f = lambda out=None: nf.rms_norm(x, 1000, w, out=out)
    elif op == "batch_norm":
        xb = x.reshape(15, 100, 1000)
        f = lambda out=None: nf.batch_norm(xb, None, None, w[:100], w[:100], True,
                                           out=None if out is None else out.reshape(xb.shape)).reshape(x.shape)
    elif op == "batch_norm_nhwc":
        xb = x.reshape(1500 * 25, 40)
        f = lambda out=None: nf.batch_norm(xb, None, None, w[:40], w[:40], True, channel_axis=-1,
                                           out=None if out is None else out.reshape(xb.shape)).reshape(x.shape)
    elif op == "group_norm_nhwc":
        xg = x.reshape(15, 100, 1000)
        f = lambda out=None: nf.group_norm(xg, 8, w, w, channel_axis=-1,
                                           out=None if out is None else out.reshape(xg.shape)).reshape(x.shape)
    elif op == "add_layer_norm":
        r = rng.standard_normal(x.shape).astype(np.float32)
        f = lambda out=None: nf.add_layer_norm(x, r, 1000, w, w, out=out)[0]
        h_ref = x + r
        assert np.array_equal(nf.add_layer_norm(x, r, 1000, w, w)[1], h_ref)
    else:
        _, mean, rstd = nf.layer_norm(x, 1000, return_stats=True)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        f = lambda out=None: nf.layer_norm_backward(dy, x, mean, rstd, 1000, w)[0]
    y = f()
    buf = np.empty(x.size + 3, np.float32)
    views = [np.empty_like(x), buf[1:1 + x.size].reshape(x.shape), buf[3:].reshape(x.shape)]
    for out in views if op != "backward" else []:
        assert np.array_equal(f(out), y)
    xd = x.astype(np.float64)
    if op == "add_layer_norm":
        hd = h_ref.astype(np.float64)
        ref = (hd - hd.mean(1, keepdims=True)) / np.sqrt(hd.var(1, keepdims=True) + 1e-5) * w + w
        assert np.abs(y - ref).max() < 2e-5
    if op == "batch_norm_nhwc":
        xc = xd.reshape(-1, 40)
        ref = (xc - xc.mean(0)) / np.sqrt(xc.var(0) + 1e-5) * w[:40] + w[:40]
        assert np.abs(y.reshape(-1, 40) - ref).max() < 2e-5
    if op == "layer_norm":
        ref = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-5) * w + w
        assert np.abs(y - ref).max() < 2e-5
    if op == "rms_norm":
        ref = xd / np.sqrt((xd * xd).mean(1, keepdims=True) + np.finfo(np.float32).eps) * w
        assert np.abs(y - ref).max() < 2e-5


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _under_asan():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(_under_asan(), reason="AddressSanitizer's quarantine keeps freed memory resident")
def test_no_leak_over_many_calls():
    rng = np.random.default_rng(1)
    small = rng.standard_normal((4, 16)).astype(np.float32)
    big = rng.standard_normal((512, 4096)).astype(np.float32)

    def run_small(k):
        for _ in range(k):
            nf.layer_norm(small, 16)
            nf.batch_norm(small, None, None, training=True)
            nf.moments(small, 0)

    def run_big(k):
        for _ in range(k):
            y, m, r = nf.layer_norm(big, 4096, return_stats=True)
            nf.layer_norm_backward(y, big, m, r, 4096)
            nf.group_norm(big.reshape(8, 64, 4096), 8, channel_axis=-1)

    run_small(2000)
    run_big(20)
    gc.collect()
    before = _rss()
    run_small(100_000 // 3)
    run_big(200 // 3)
    gc.collect()
    grown = _rss() - before
    assert grown < 32 * 2 ** 20, f"RSS grew by {grown / 2**20:.1f} MB"
