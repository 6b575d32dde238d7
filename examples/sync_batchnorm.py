"""Synchronized BatchNorm across processes with normfast.Moments.

Each worker process holds one shard of an NCHW batch.  It reduces its shard to a
``normfast.Moments`` state (count, mean, M2 per channel, float64) over axes (0, 2, 3) and
sends it to the parent: a few hundred bytes instead of the shard.  The parent merges the
states with Chan's formula (``Moments.reduce``) -- exactly the statistics of the whole batch --
and every worker normalizes its shard with the global statistics, using ``normfast.batch_norm``
in eval mode (the global mean / biased variance as the "running" statistics).  The result
equals ``normfast.batch_norm(training=True)`` on the concatenated batch.

    python examples/sync_batchnorm.py
"""
import multiprocessing as mp
import pickle

import numpy as np

import normfast

N, C, H, W = 48, 16, 12, 12
WORKERS = 4
EPS = 1e-5


def make_batch():
    return np.random.default_rng(0).normal(2.0, 3.0, (N, C, H, W)).astype(np.float32)


def local_stats(shard):
    """Worker, step 1: this shard's per-channel state."""
    return normfast.Moments.from_array(shard, axis=(0, 2, 3))


def normalize_shard(args):
    """Worker, step 2: normalize the shard with the global statistics."""
    shard, mean, var, weight, bias = args
    return normfast.batch_norm(shard, running_mean=mean, running_var=var, weight=weight, bias=bias,
                               training=False, eps=EPS)


def main():
    x = make_batch()
    shards = np.array_split(x, WORKERS, axis=0)          # uneven shards are fine
    weight = np.linspace(0.5, 1.5, C)
    bias = np.linspace(-1.0, 1.0, C)

    with mp.get_context("spawn").Pool(WORKERS) as pool:
        states = pool.map(local_stats, shards)
        print(f"per-worker state: {len(pickle.dumps(states[0]))} bytes pickled "
              f"(shard: {shards[0].nbytes} bytes)")
        g = normfast.Moments.reduce(states)                # Chan's merge, in the parent
        mean, var = g.mean, g.var()                         # biased variance, as BatchNorm uses
        ys = pool.map(normalize_shard, [(s, mean, var, weight, bias) for s in shards])

    y = np.concatenate(ys, axis=0)
    ref = normfast.batch_norm(x, weight=weight, bias=bias, training=True, eps=EPS)
    err = float(np.max(np.abs(y - ref)))
    print(f"max |sync - whole-batch| = {err:.2e}")
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)

    # The same states also drive the running buffers (unbiased variance, momentum 0.1).
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm += np.float32(0.1) * (mean - rm)
    rv += np.float32(0.1) * (g.var(correction=1) - rv)
    qm, qv = np.zeros(C, np.float32), np.ones(C, np.float32)
    normfast.batch_norm(x, qm, qv, training=True, momentum=0.1, eps=EPS)
    np.testing.assert_allclose(rm, qm, rtol=1e-6)
    np.testing.assert_allclose(rv, qv, rtol=1e-6)
    print("synchronized BatchNorm == whole-batch BatchNorm: OK")


if __name__ == "__main__":
    main()
