"""batch_norm: per-channel statistics over the batch and every spatial position."""
import numpy as np

from . import _core, _running
from ._docs import fill
from ._checks import check_float_array, check_param, normalize_axis


def channel_dims(x, channel_axis, fname):
    """(channel axis, B = prod(dims before), C, D = prod(dims after)) for x with >= 2 dims."""
    if x.ndim < 2:
        raise ValueError(f"{fname}: x must have at least 2 dimensions (N, C, ...), got shape {tuple(x.shape)}")
    ca = normalize_axis(channel_axis, x.ndim, "channel_axis")
    return ca, _core.prod(x.shape[:ca]), x.shape[ca], _core.prod(x.shape[ca + 1:])


@fill
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, channel_axis=1, out=None, return_stats=False, num_batches_tracked=None):
    """Batch normalization (as ``torch.nn.functional.batch_norm``).

    Parameters
    ----------
    x : array of float16, float32 or float64, at least 2-d
        Channels on ``channel_axis`` (1: NCHW-style, -1: channels-last), any spatial rank.
    running_mean, running_var : arrays of shape (C,), optional
        training=True: updated in place, ``r = (1 - m) * r + m * stat`` with the unbiased batch
        variance for ``running_var``.  training=False: used to normalize (required).
    {weight_bias_C}
    training : bool, default False
        Normalize with the batch statistics (and update the running ones), else with the running ones.
    momentum : float in [0, 1] or None, default 0.1
        ``m`` in the running update; None: cumulative moving average ``m = 1 / num_batches_tracked``
        (needs ``num_batches_tracked``).
    {eps}
    {channel_axis}
    {out_y}
    return_stats : bool, default False
        Also return the ``mean`` and ``rstd`` used (float64, shape (C,)).
    num_batches_tracked : one-element integer NumPy array, optional
        Incremented in place on every training call (torch's module buffer).

    {returns_y}

    Raises
    ------
    TypeError
        Non-floating arrays, a bad momentum or eps type.
    ValueError
        One value per channel when training, missing running statistics when not training,
        shapes that do not match, read-only or overlapping outputs.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.arange(12.0).reshape(3, 2, 2)
    >>> rm, rv = np.zeros(2), np.ones(2)
    >>> y = nf.batch_norm(x, rm, rv, training=True)
    >>> np.allclose(y.mean(axis=(0, 2)), 0.0), np.allclose(rm, 0.1 * x.mean(axis=(0, 2)))
    (True, True)
    """
    x = check_float_array(x)
    ca, B, C, D = channel_dims(x, channel_axis, "batch_norm")
    w, b, eps, rm, rv, out = _running.check_channel_call("batch_norm", x, C, weight, bias, eps, momentum,
                                                         running_mean, running_var, training, out,
                                                         num_batches_tracked)
    dims = (1, B, C, D)
    if training:
        n_per = B * D
        if n_per == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        xk = _core.as_kernel_input(x)
        n, mean, m2 = _core.moments4d(xk, dims)
        rstd = _core.rstd_from(m2, n, eps)
        if n_per == 0:          # empty batch: empty output, running statistics untouched (as torch)
            mean = np.full(C, np.nan)
        elif rm is not None or rv is not None or num_batches_tracked is not None:
            f = _running.momentum_factor(momentum, num_batches_tracked)
            _running.update(rm, mean, f)
            _running.update(rv, m2 / (n - 1), f)
    else:
        mean, rstd = _running.running_stats(rm, rv, eps, "training")
        xk = _core.as_kernel_input(x)
    y = _core.target(out, xk)
    _core.apply_affine(xk, y, dims, mean, rstd, w, b)
    y = _core.finish(out, x.dtype, y)
    return (y, mean, rstd) if return_stats else y


@fill
def batch_norm_backward(grad_out, x, mean, rstd, weight=None, training=True, *, channel_axis=1,
                        needs_input_grad=(True, True, True), out=None):
    """Gradients of :func:`batch_norm`: ``(grad_x, grad_weight, grad_bias)``.

    Two passes: per-channel sums of grad_out and grad_out * x_hat (float64, fixed order), then
    grad_x.  ``training=False`` is the eval-mode gradient (statistics are constants).

    Parameters
    ----------
    {grad_out_x}
    mean, rstd : arrays of shape (C,)
        As returned with ``return_stats=True`` (batch statistics when training, running ones otherwise).
    {weight_bwd}
    training : bool, default True
        As in the forward: False gives the eval-mode gradient (the statistics are constants).
    {bwd_tail_C}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(6, 3))
    >>> y, mean, rstd = nf.batch_norm(x, training=True, return_stats=True)
    >>> gx, _, _ = nf.batch_norm_backward(np.ones_like(x), x, mean, rstd)
    >>> np.allclose(gx, 0.0)
    True
    """
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    _, B, C, D = channel_dims(x, channel_axis, "batch_norm_backward")
    mean = _core.check_stats(mean, (C,), "mean")
    rstd = _core.check_stats(rstd, (C,), "rstd")
    w = check_param(weight, (C,), "weight")
    nx, nw, nb = _core.check_needs(needs_input_grad, 3, "batch_norm_backward")
    nw, nb = nw and w is not None, nb and w is not None
    out = _core.grad_target(out, x, dy, "batch_norm_backward")
    dx, dw, db = _core.channel_backward(dy, x, (1, B, C, D), mean, rstd, w, 1, bool(training), (nx, nw, nb), out)
    return dx, _core.grad_cast(dw, x, weight), _core.grad_cast(db, x, weight)
