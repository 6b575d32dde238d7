"""The CUDA emulator itself (tests/cuda_emu): each emulated CUDA feature against its
definition, and the bugs it must report instead of hiding.  No device needed."""
import sys

import numpy as np
import pytest

import cuda_emu
from cuda_emu import build

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None


@pytest.fixture
def cp(monkeypatch):
    return cuda_emu.backend("emu", monkeypatch)


@pytest.fixture
def emu(cp):
    from cuda_emu import fakecupy
    return fakecupy


def launch(emu, name, grid, block, *args):
    emu.kernel(name)(grid, block, args)


def test_library_is_cached():
    p1 = build.library_path()
    p2 = build.library_path()
    assert p1 == p2 and p1.exists()
    assert build.generated_source().count("NF_EMU_KERNEL(") == len(
        {n for ct in build._kernels().CTYPES.values() for n in build._kernels().name_expressions(ct)})


def test_warp_shuffles(cp, emu):
    x = np.arange(128, dtype=np.float32)
    y = cp.zeros(4, dtype=np.float32)
    launch(emu, "emu_warp_sum", (2,), (64,), cp.asarray(x), y)
    assert (cp.asnumpy(y) == x.reshape(4, 32).sum(axis=1)).all()
    y = cp.zeros(4 * 64, dtype=np.int32)
    launch(emu, "emu_shfl_ops", (1,), (64,), y)
    got = cp.asnumpy(y).reshape(64, 4)
    lane = np.arange(64) % 32
    assert (got[:, 0] == (lane & ~7) + 3).all()
    assert (got[:, 1] == np.where(lane >= 1, lane - 1, lane)).all()
    assert (got[:, 2] == lane ^ 5).all()
    assert (got[:, 3] == np.where((lane % 16) + 2 < 16, lane + 2, lane)).all()


def test_shared_memory_and_syncthreads(cp, emu):
    x = np.random.default_rng(0).standard_normal(3 * 512)
    y = cp.zeros(3)
    launch(emu, "emu_block_sum", (3,), (512,), cp.asarray(x), y)
    ref = x.reshape(3, 512)
    # the kernel's tree order, in float64
    s = ref.copy()
    h = 256
    while h:
        s[:, :h] += s[:, h:2 * h]
        h //= 2
    assert (cp.asnumpy(y) == s[:, 0]).all()


def test_indices_2d_3d(cp, emu):
    grid, block = (3, 2, 2), (4, 3, 2)
    nt = 4 * 3 * 2
    y = cp.zeros(12 * nt, dtype=np.int32)
    launch(emu, "emu_indices", grid, block, y)
    got = cp.asnumpy(y)
    for bz in range(2):
        for by in range(2):
            for bx in range(3):
                for tz in range(2):
                    for ty in range(3):
                        for tx in range(4):
                            b = (bz * 2 + by) * 3 + bx
                            t = (tz * 3 + ty) * 4 + tx
                            assert got[b * nt + t] == tx | ty << 4 | tz << 8 | bx << 12 | by << 16 | bz << 20


def test_atomics_and_params(cp, emu):
    c, s = cp.zeros(1, dtype=np.int32), cp.zeros(1)
    launch(emu, "emu_atomic_count", (5,), (96,), c, s)
    assert int(c.get()[0]) == 480 and float(s.get()[0]) == 240.0
    out = cp.zeros(6)
    launch(emu, "emu_params", (1,), (32,), np.int32(-7), np.int64(-2 ** 40), np.float64(0.1), np.float32(1.5),
           np.uint32(4000000000), np.bool_(True), out)
    assert cp.asnumpy(out).tolist() == [-7, -2 ** 40, 0.1, 1.5, 4000000000, 1.0]


def _special_floats():
    rng = np.random.default_rng(1)
    f32 = np.float32
    vals = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 65536.0, 1e30, np.inf, -np.inf, np.nan,
            2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -26, 3e-8, 6e-8, 1e-45,
            3.4e38, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 255.5, 256.5]
    # exact halfway points of float16 / bfloat16 at many magnitudes
    h = rng.integers(0, 0x7bff, 4000).astype(np.uint16).view(np.float16).astype(f32)
    h_next = np.nextafter(h.astype(np.float16), np.float16(np.inf)).astype(f32)
    b = (rng.integers(0, 0x7f7f, 4000).astype(np.uint32) << 16).view(f32)
    b_next = ((b.view(np.uint32) + (1 << 16)).view(f32))
    rand = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 12, 20000)]).astype(f32)
    bits = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32).view(f32)
    with np.errstate(over="ignore"):
        x = np.concatenate([np.array(vals, f32), (h + h_next) / 2, (b + b_next) / 2, rand, bits, -rand])
    return x.astype(f32)


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
def test_half_bfloat16_conversions(cp, emu):
    """float -> __half / __nv_bfloat16 round to nearest even as NumPy / ml_dtypes do; every
    half bit pattern converts back exactly."""
    x = _special_floats()
    n = x.size
    h, b = cp.zeros(n, dtype=np.uint16), cp.zeros(n, dtype=np.uint16)
    hf, bf = cp.zeros(n, dtype=np.float32), cp.zeros(n, dtype=np.float32)
    launch(emu, "emu_convert", (4,), (256,), cp.asarray(x), h, b, hf, bf, np.int64(n))
    with np.errstate(over="ignore", invalid="ignore"):
        ref_h = x.astype(np.float16)
        ref_b = x.astype(ml_dtypes.bfloat16)
    got_h = cp.asnumpy(h).view(np.float16)
    got_b = cp.asnumpy(b).view(ml_dtypes.bfloat16)
    nan = np.isnan(x)
    assert (np.isnan(got_h) == nan).all() and (np.isnan(got_b.astype(np.float32)) == nan).all()
    assert (got_h[~nan].view(np.uint16) == ref_h[~nan].view(np.uint16)).all()
    assert (got_b[~nan].view(np.uint16) == ref_b[~nan].view(np.uint16)).all()
    assert (cp.asnumpy(hf)[~nan] == ref_h[~nan].astype(np.float32)).all()
    assert (cp.asnumpy(bf)[~nan] == ref_b[~nan].astype(np.float32)).all()
    # every half bit pattern back to float
    allh = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    n = allh.size
    h, b = cp.zeros(n, dtype=np.uint16), cp.zeros(n, dtype=np.uint16)
    hf, bf = cp.zeros(n, dtype=np.float32), cp.zeros(n, dtype=np.float32)
    launch(emu, "emu_convert", (4,), (256,), cp.asarray(allh), h, b, hf, bf, np.int64(n))
    ok = ~np.isnan(allh)
    assert (cp.asnumpy(hf)[ok] == allh[ok]).all()


# ------------------------------------------------------------------ what it must report

def test_out_of_bounds_read_reported(cp, emu):
    x = cp.zeros(1000, dtype=np.float32)
    y = cp.zeros(1, dtype=np.float32)
    launch(emu, "emu_read_at", (1,), (32,), x, np.int64(999), y)          # last element: fine
    # the buffer's 4000 bytes are padded to 4096 (cudaMalloc granularity), then a guard page
    with pytest.raises(emu.EmulatorError, match="emu_read_at: invalid access .* a 4000-byte device buffer"):
        launch(emu, "emu_read_at", (1,), (32,), x, np.int64(1024 + 5), y)


def test_write_past_end_reported(cp, emu):
    y = cp.zeros(10, dtype=np.float32)
    launch(emu, "emu_write_at", (1,), (32,), y, np.int64(9))
    with pytest.raises(emu.EmulatorError, match="past the end of a 40-byte device buffer"):
        launch(emu, "emu_write_at", (1,), (32,), y, np.int64(10))


def test_divergent_warp_sync_reported(cp, emu):
    with pytest.raises(emu.EmulatorError, match="divergent warp sync"):
        launch(emu, "emu_divergent_shfl", (1,), (32,), cp.zeros(32, dtype=np.float32))


def test_exited_threads_count_at_syncthreads(cp, emu):
    y = cp.zeros(64, dtype=np.float32)
    launch(emu, "emu_exit_then_sync", (1,), (64,), y)
    assert (cp.asnumpy(y)[:32] == 1).all()


def test_reverse_order_exposes_a_race(cp, emu):
    y = cp.zeros(64, dtype=np.int32)
    order = cp.emulator["reverse"]
    try:
        cp.emulator["reverse"] = False
        launch(emu, "emu_race", (1,), (64,), np.int32(7), y)
        assert (cp.asnumpy(y) == 7).all()        # forward order happens to work
        cp.emulator["reverse"] = True
        launch(emu, "emu_race", (1,), (64,), np.int32(9), y)
        assert (cp.asnumpy(y) != 9).any()        # ... the reverse order shows the missing barrier
    finally:
        cp.emulator["reverse"] = order


def test_stack_overflow_reported(cp, emu):
    with pytest.raises(emu.EmulatorError, match="stack overflow"):
        launch(emu, "emu_stack_overflow", (1,), (32,), cp.zeros(32, dtype=np.int32))
    y = cp.zeros(4, dtype=np.float32)            # the emulator keeps working afterwards
    launch(emu, "emu_write_at", (1,), (32,), y, np.int64(3))
    assert cp.asnumpy(y)[3] == 1


def test_launch_arguments_checked(cp, emu):
    y = cp.zeros(10, dtype=np.float32)
    k = emu.kernel("emu_write_at")
    with pytest.raises(emu.EmulatorError, match="argument 1 must be of kind 'q'"):
        k((1,), (32,), (y, np.int32(3)))
    with pytest.raises(TypeError, match="unsupported type int"):
        k((1,), (32,), (y, 3))
    with pytest.raises(TypeError, match="unsupported type ndarray"):
        k((1,), (32,), (np.zeros(10, np.float32), np.int64(3)))
    with pytest.raises(emu.EmulatorError, match="takes 2 arguments, got 1"):
        k((1,), (32,), (y,))
    with pytest.raises(emu.EmulatorError, match="invalid launch configuration"):
        k((0,), (32,), (y, np.int64(0)))
    with pytest.raises(emu.EmulatorError, match="__launch_bounds__"):
        emu.kernel("emu_write_at", max_threads=64)((1,), (128,), (y, np.int64(0)))


def test_rawmodule_checks(cp):
    from normfast._gpu import _kernels
    names = _kernels.name_expressions("float")
    mod = cp.RawModule(code=_kernels.source(), options=_kernels.RAWMODULE_OPTIONS, name_expressions=names)
    assert mod.get_function("nf_merge") is not None and mod.get_function(names[0]) is not None
    with pytest.raises(cp.EmulatorError):
        mod.get_function("nf_rows_fwd<float, 2>")
    with pytest.raises(cp.EmulatorError, match="not the source"):
        cp.RawModule(code=_kernels.source() + "\n// edited", name_expressions=names)
    # the launch bounds of the real source are enforced
    fn = mod.get_function(_kernels.kernel("nf_rows_dwdb", "float"))
    assert fn.max_threads == 256


def test_cupy_transfers_are_explicit(cp):
    a = cp.asarray(np.arange(6.0))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + np.ones(6)
    assert isinstance(a + 1, cp.ndarray) and type(a).__module__ == "cupy"
    assert sys.modules["cupy"] is cp
    b = cp.empty(4)
    assert np.isnan(b.get()).all()               # fresh device memory is NaN, not zeros
    assert cp.asnumpy(cp.zeros(3)).tolist() == [0, 0, 0]
    v = a.reshape(2, 3)[:, 1:]
    assert v.data.ptr == a.data.ptr + 8 and v.strides == (24, 8)
