"""Running-statistics rules shared by batch_norm and instance_norm (torch semantics)."""
import numpy as np

from ._checks import check_buffer, check_momentum, check_out, check_separate, check_writable


def check_channel_args(C, weight, bias, eps, momentum, running_mean, running_var, updates):
    """The per-channel arguments of batch_norm / instance_norm (any backend): float64 host
    weight/bias copies, eps, and the running buffers (writable when the call `updates` them)."""
    from ._checks import check_eps, check_param
    w, b = check_param(weight, (C,), "weight"), check_param(bias, (C,), "bias")
    eps = check_eps(eps)
    check_momentum(momentum)
    rm, rv = check_running(running_mean, running_var, C, updates)
    return w, b, eps, rm, rv


def check_channel_call(fname, x, C, weight, bias, eps, momentum, running_mean, running_var, updates, out,
                       num_batches_tracked=None):
    """The arguments of an in-memory batch_norm / instance_norm call: :func:`check_channel_args`,
    then ``out`` (like x) and, when the call updates the running buffers, that nothing it writes
    shares memory with x or with another written array.  Returns (w, b, eps, rm, rv, out)."""
    w, b, eps, rm, rv = check_channel_args(C, weight, bias, eps, momentum, running_mean, running_var, updates)
    out = check_out(out, x.shape, x.dtype, x)
    if updates:
        check_separate(fname, [("x", x)], [("out", out), ("running_mean", rm), ("running_var", rv),
                                           ("num_batches_tracked", num_batches_tracked)])
    return w, b, eps, rm, rv, out


def running_stats(rm, rv, eps, flag):
    """(mean, rstd) in float64 from the running buffers, for a call that normalizes with them
    (``flag``: the argument that is False, named in the error when a buffer is missing)."""
    if rm is None or rv is None:
        raise ValueError(f"running_mean and running_var must be given when {flag}=False")
    from ._core import host
    return host(rm).astype(np.float64), 1.0 / np.sqrt(host(rv).astype(np.float64) + eps)


def check_running(running_mean, running_var, C, training):
    rm = check_buffer(running_mean, (C,), "running_mean")
    rv = check_buffer(running_var, (C,), "running_var")
    if training:
        check_writable(rm, "running_mean")
        check_writable(rv, "running_var")
    return rm, rv


def check_tracked(num_batches_tracked):
    if num_batches_tracked is None:
        return None
    t = num_batches_tracked
    if not isinstance(t, np.ndarray) or t.dtype.kind not in "iu" or t.size != 1:
        raise TypeError("num_batches_tracked must be a one-element integer NumPy array (updated in place) or None")
    check_writable(t, "num_batches_tracked")
    return t


def momentum_factor(momentum, num_batches_tracked):
    """torch's exponential_average_factor: `momentum`, or 1/num_batches_tracked when momentum is None.
    num_batches_tracked (if given) is incremented first, as torch's modules do."""
    momentum = check_momentum(momentum)
    t = check_tracked(num_batches_tracked)
    if t is not None:
        t += 1
    if momentum is None:
        if t is None:
            raise ValueError("momentum=None (cumulative moving average) needs num_batches_tracked")
        return 1.0 / float(t.reshape(-1)[0])
    return momentum


def update(buf, value, factor):
    """buf <- (1 - factor) * buf + factor * value, in place, computed in float64."""
    if buf is None:
        return
    from ._core import host
    new = (1.0 - factor) * host(buf).astype(np.float64) + factor * value
    if isinstance(buf, np.ndarray):
        buf[...] = new
    else:                                   # device buffer: one host -> device copy
        buf[...] = _device_copy(buf, new)


def _device_copy(buf, new):
    import cupy
    return cupy.asarray(new.astype(buf.dtype))
