"""Fuzz target (atheris): every public function with arbitrary shapes, dtypes, axes, strides and
argument values.  Anything but a result or a TypeError/ValueError (a crash, a hang, another
exception, a modified input) is a bug.  Not part of the test suite:

    pip install atheris
    python tests/fuzz_args.py -max_total_time=120      # libFuzzer options
"""
import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    import normfast as nf

DTYPES = [np.float16, np.float32, np.float64, np.int32, np.bool_, np.complex64]


def _array(fdp, shape, dtype):
    n = int(np.prod(shape)) if shape else 1
    vals = [fdp.ConsumeRegularFloat() for _ in range(min(n, 64))] or [0.0]
    a = np.resize(np.asarray(vals), shape) if shape else np.asarray(vals[0])
    with np.errstate(all="ignore"):
        a = a.astype(dtype)
    if fdp.ConsumeBool() and a.ndim:
        a = a[..., ::-1]                                   # negative strides
    return a


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    ndim = fdp.ConsumeIntInRange(0, 4)
    shape = tuple(fdp.ConsumeIntInRange(0, 5) for _ in range(ndim))
    x = _array(fdp, shape, DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)])
    x0 = x.copy()
    param = _array(fdp, (fdp.ConsumeIntInRange(0, 5),), np.float32) if fdp.ConsumeBool() else None
    eps = fdp.PickValueInList([1e-5, 0.0, -1.0, float("nan"), None, "a"])
    axis = fdp.PickValueInList([0, 1, -1, 5, (0, 1), (), (1, 1), None, 1.5])
    calls = [
        lambda: nf.layer_norm(x, shape[-1:] if ndim else 3, param, param, eps),
        lambda: nf.rms_norm(x, shape[-1:] if ndim else 3, param, eps),
        lambda: nf.batch_norm(x, param, param, param, param, fdp.ConsumeBool(), fdp.ConsumeFloat(), eps or 1e-5),
        lambda: nf.group_norm(x, fdp.ConsumeIntInRange(-1, 6), param, param, eps or 1e-5),
        lambda: nf.instance_norm(x, None, None, param, param, eps=eps or 1e-5),
        lambda: nf.normalize(x, axis, param, param, eps or 1e-5),
        lambda: nf.moments(x, axis, correction=fdp.ConsumeIntInRange(-1, 3)),
        lambda: nf.batch_norm_backward(x, x, param, param, param, channel_axis=fdp.ConsumeIntInRange(-3, 3)),
        lambda: nf.layer_norm_backward(x, x, param, param, shape[-1:] if ndim else 1, param),
        lambda: nf.add_layer_norm(x, x, shape[-1:] if ndim else 1, param, param),
    ]
    call = calls[fdp.ConsumeIntInRange(0, len(calls) - 1)]
    try:
        call()
    except (TypeError, ValueError):
        pass
    if x.dtype == x0.dtype and not np.array_equal(x, x0, equal_nan=True):
        raise AssertionError("input modified")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
