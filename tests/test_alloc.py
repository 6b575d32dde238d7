"""The large-output block cache (normfast._cpu._alloc): blocks are reused across calls, the cache
stays bounded, and results written into reused blocks are right."""
import numpy as np

import normfast as nf
from _helpers import assert_close_ref, ref_layer_norm
from normfast._cpu import _alloc


def test_blocks_are_reused_and_bounded():
    _alloc.clear()
    a = _alloc.empty((512, 1024), np.float32)              # 2 MiB
    addr = a.ctypes.data
    assert a.flags.c_contiguous and a.flags.writeable and addr % 4096 == 0
    a[...] = 1.0
    del a
    assert _alloc.cached_bytes() >= 2 << 20
    b = _alloc.empty((1024, 512), np.float32)              # same size: the same block
    assert b.ctypes.data == addr
    c = _alloc.empty((4096, 1024), np.float32)             # 16 MiB: too big for the cached one
    assert c.ctypes.data != addr
    arrays = [_alloc.empty((300, 1024), np.float64) for _ in range(2 * _alloc.MAX_BLOCKS)]
    del arrays, b, c
    assert _alloc.cached_bytes() <= _alloc.MAX_BYTES
    assert len(_alloc._cache_sizes()) <= _alloc.MAX_BLOCKS
    _alloc.clear()
    assert _alloc.cached_bytes() == 0
    small = _alloc.empty((4, 4), np.float32)               # below MIN_BYTES: NumPy's allocator
    assert small.base is None


def test_results_in_reused_blocks_are_right():
    rng = np.random.default_rng(0)
    for _ in range(3):                                     # second and third calls reuse the block
        x = rng.normal(size=(1024, 512)).astype(np.float32)
        y = nf.layer_norm(x, 512)
        assert_close_ref(y, ref_layer_norm(x, 512)[0])
        views = y[::2]                                     # a view keeps the block alive
        del y
        assert_close_ref(views, ref_layer_norm(x, 512)[0][::2])


def test_a_full_cache_of_other_sizes_admits_the_block_just_freed():
    """The cache evicts the least recently freed block: after MAX_BLOCKS large blocks filled it
    (an earlier layer), a repeated smaller output is still served from the cache (no fresh
    mapping, no page faults on every call)."""
    _alloc.clear()
    big = [_alloc.empty((2048, 1024), np.float32) for _ in range(_alloc.MAX_BLOCKS)]   # 8 MiB each
    del big
    assert len(_alloc._cache_sizes()) == _alloc.MAX_BLOCKS
    small = _alloc.empty((512, 1024), np.float32)                                   # 2 MiB
    addr = small.ctypes.data
    del small
    assert (2 << 20) in _alloc._cache_sizes() and len(_alloc._cache_sizes()) == _alloc.MAX_BLOCKS
    again = _alloc.empty((512, 1024), np.float32)
    assert again.ctypes.data == addr                     # the same block, from the cache
    del again
    assert _alloc.cached_bytes() <= _alloc.MAX_BYTES
    _alloc.clear()
