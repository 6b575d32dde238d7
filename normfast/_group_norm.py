"""group_norm: statistics per (sample, group of channels) over the group's channels and positions."""
import numpy as np

from . import _core
from ._docs import fill
from ._checks import check_eps, check_float_array, check_int, check_out, check_param
from ._batch_norm import channel_dims


def sample_channel_dims(x, channel_axis, fname):
    """(N, pre, C, post) for a batch on axis 0 and channels on ``channel_axis`` (>= 1)."""
    ca, _, C, post = channel_dims(x, channel_axis, fname)
    if ca == 0:
        raise ValueError(f"{fname}: channel_axis must not be the batch axis 0")
    return x.shape[0], _core.prod(x.shape[1:ca]), C, post


@fill
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None, return_stats=False):
    """Group normalization (as ``torch.nn.functional.group_norm``).

    Parameters
    ----------
    {x_channels}
    num_groups : int
        Divides C; statistics per (sample, group) over the group's channels and positions.
    {weight_bias_C}
    {eps}
    {channel_axis}
    {out_y}
    return_stats : bool, default False
        Also return ``mean`` and ``rstd`` (float64, shape (N, num_groups)).

    {returns_y}

    Raises
    ------
    TypeError, ValueError
        Non-floating arrays, num_groups not dividing C, bad shapes or outputs.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 3))
    >>> y = nf.group_norm(x, 2)
    >>> np.allclose(y.reshape(2, 2, 6).mean(axis=-1), 0.0)
    True
    """
    x = check_float_array(x)
    N, pre, C, post = sample_channel_dims(x, channel_axis, "group_norm")
    G = check_int(num_groups, "num_groups", 1)
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels C={C}")
    Cg = C // G
    w = check_param(weight, (C,), "weight")
    b = check_param(bias, (C,), "bias")
    eps = check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    xk = _core.as_kernel_input(x)
    y = _core.target(out, xk)
    fused = None
    if pre == 1:
        mean, rstd = _core.rows(xk, y, N * G, Cg * post, w, b, eps, seg=max(post, 1), period=G)
    elif post == 1:   # channels-last: one pass per sample while it is in cache, when it pays
        fused = _core.samples(xk, y, N, pre, G, Cg, w, b, eps)
    if fused is not None:
        mean, rstd = fused
    elif pre != 1:
        n, mean, m2 = _core.moments4d(xk, (N, pre, G, Cg * post))
        rstd = _core.rstd_from(m2, n, eps)
        mean = np.where(n == 0, np.nan, mean)
        mc, rc = np.repeat(mean, Cg), np.repeat(rstd, Cg)      # per (n, c)
        _core.apply_affine(xk, y, (N, pre, C, post), mc, rc, w, b)
    y = _core.finish(out, x.dtype, y)
    return (y, mean.reshape(N, G), rstd.reshape(N, G)) if return_stats else y


@fill
def group_norm_backward(grad_out, x, mean, rstd, num_groups, weight=None, *, channel_axis=1,
                        needs_input_grad=(True, True, True), out=None):
    """Gradients of :func:`group_norm`: ``(grad_x, grad_weight, grad_bias)``.

    Parameters
    ----------
    {grad_out_x}
    mean, rstd : arrays of shape (N, num_groups)
        As returned with ``return_stats=True``.
    num_groups : int
        As in the forward.
    {weight_bwd}
    {bwd_tail_C}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 3))
    >>> y, mean, rstd = nf.group_norm(x, 2, return_stats=True)
    >>> gx, _, _ = nf.group_norm_backward(np.ones_like(x), x, mean, rstd, 2)
    >>> np.allclose(gx, 0.0)
    True
    """
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    N, pre, C, post = sample_channel_dims(x, channel_axis, "group_norm_backward")
    G = check_int(num_groups, "num_groups", 1)
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels C={C}")
    mean = _core.check_stats(mean, (N, G), "mean")
    rstd = _core.check_stats(rstd, (N, G), "rstd")
    w = check_param(weight, (C,), "weight")
    nx, nw, nb = _core.check_needs(needs_input_grad, 3, "group_norm_backward")
    nw, nb = nw and w is not None, nb and w is not None
    Cg = C // G
    out = _core.grad_target(out, x, dy, "group_norm_backward")
    dx, dw, db = _core.channel_backward(dy, x, (N, pre, C, post), mean, rstd, w, Cg,
                                        True, (nx, nw, nb), out)
    return dx, _core.grad_cast(dw, x, weight), _core.grad_cast(db, x, weight)
