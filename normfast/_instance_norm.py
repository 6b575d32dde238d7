"""instance_norm: statistics per (sample, channel) over the spatial positions."""
import numpy as np

from . import _core, _running
from ._docs import fill
from ._checks import check_float_array, check_param
from ._group_norm import sample_channel_dims


@fill
def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    """Instance normalization (as ``torch.nn.functional.instance_norm``).

    Parameters
    ----------
    {x_channels}
    running_mean, running_var : arrays of shape (C,), optional
        With ``use_input_stats``: updated in place with the batch average of the instance means and
        unbiased variances (torch's rule).  Without: used to normalize (required).
    {weight_bias_C}
    use_input_stats : bool, default True
        Normalize with each instance's statistics, else with the running ones.
    {momentum}
    {eps}
    {channel_axis}
    {out_y}
    return_stats : bool, default False
        Also return ``mean`` and ``rstd`` (float64, shape (N, C)).

    {returns_y}

    Raises
    ------
    TypeError, ValueError
        Non-floating arrays, one spatial value when using input statistics, bad shapes or outputs.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 5))
    >>> np.allclose(nf.instance_norm(x).mean(axis=-1), 0.0)
    True
    """
    x = check_float_array(x)
    N, pre, C, post = sample_channel_dims(x, channel_axis, "instance_norm")
    w, b, eps, rm, rv, out = _running.check_channel_call("instance_norm", x, C, weight, bias, eps, momentum,
                                                         running_mean, running_var, use_input_stats, out)
    xk = _core.as_kernel_input(x)
    y = _core.target(out, xk)
    dims = (N, pre, C, post)
    if use_input_stats:
        if pre * post == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
        track = rm is not None or rv is not None
        fused = None
        if pre == 1 and not track:
            fused = _core.rows(xk, y, N * C, post, w, b, eps, seg=post, period=C)
        elif post == 1 and not track:   # channels-last, fused per sample when it pays
            fused = _core.samples(xk, y, N, pre, C, 1, w, b, eps)
        if fused is not None:
            mean, rstd = fused
        else:
            mean, rstd, sum_mean, sum_var = _core.moments_apply(xk, y, dims, w, b, eps, return_stats)
        if track and N * pre * post > 0:
            f = _running.momentum_factor(momentum, None)
            _running.update(rm, sum_mean / N, f)
            _running.update(rv, sum_var / N, f)
    else:
        # statistics per channel only: the batch-norm plan (1, N*pre, C, post), nothing tiled
        mean, rstd = _running.running_stats(rm, rv, eps, "use_input_stats")
        _core.apply_affine(xk, y, (1, N * pre, C, post), mean, rstd, w, b)
        if return_stats:
            mean, rstd = np.tile(mean, N), np.tile(rstd, N)
    y = _core.finish(out, x.dtype, y)
    return (y, mean.reshape(N, C), rstd.reshape(N, C)) if return_stats else y


@fill
def instance_norm_backward(grad_out, x, mean, rstd, weight=None, *, channel_axis=1,
                           needs_input_grad=(True, True, True), out=None):
    """Gradients of :func:`instance_norm` with input statistics: ``(grad_x, grad_weight, grad_bias)``.

    Parameters
    ----------
    {grad_out_x}
    mean, rstd : arrays of shape (N, C)
        The input statistics, as returned by ``instance_norm(x, return_stats=True)``.
    {weight_bwd}
    {bwd_tail_C}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.arange(30.0).reshape(2, 3, 5) ** 2
    >>> y, mean, rstd = nf.instance_norm(x, return_stats=True)
    >>> gx, gw, gb = nf.instance_norm_backward(np.ones_like(x), x, mean, rstd, np.ones(3))
    >>> np.allclose(gx, 0.0), gb.tolist()
    (True, [10.0, 10.0, 10.0])
    """
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    N, pre, C, post = sample_channel_dims(x, channel_axis, "instance_norm_backward")
    mean = _core.check_stats(mean, (N, C), "mean")
    rstd = _core.check_stats(rstd, (N, C), "rstd")
    w = check_param(weight, (C,), "weight")
    nx, nw, nb = _core.check_needs(needs_input_grad, 3, "instance_norm_backward")
    nw, nb = nw and w is not None, nb and w is not None
    out = _core.grad_target(out, x, dy, "instance_norm_backward")
    dx, dw, db = _core.channel_backward(dy, x, (N, pre, C, post), mean, rstd, w, 1, True, (nx, nw, nb), out)
    return dx, _core.grad_cast(dw, x, weight), _core.grad_cast(db, x, weight)
