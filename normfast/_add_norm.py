"""add_layer_norm / add_rms_norm: fused residual add + normalization (transformer blocks).

``h = x + residual`` (rounded in the input dtype, exactly as the unfused add) is written
once and normalized while its row is in cache: one read of x and residual, one write of
y and h, instead of two round trips through memory.
"""
import numpy as np

from . import _core
from ._docs import fill
from ._checks import check_eps, check_float_array, check_out, check_param, check_separate, same_dtype
from ._layer_norm import normalized_axes


def _add_norm(x, residual, normalized_shape, weight, bias, eps, out, residual_out, rms, fname):
    x = check_float_array(x)
    residual = check_float_array(residual, "residual")
    if residual.shape != x.shape or not same_dtype(residual.dtype, x.dtype):
        raise ValueError(f"{fname}: residual must have x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                         f"got {tuple(residual.shape)} {residual.dtype}")
    shape, _ = normalized_axes(x, normalized_shape, fname)
    w = check_param(weight, shape, "weight")
    b = check_param(bias, shape, "bias")
    out = check_out(out, x.shape, x.dtype, x)
    if residual_out is not None:
        check_out(residual_out, x.shape, x.dtype, x, "residual_out")
        if residual_out is out:
            raise ValueError(f"{fname}: out and residual_out must be different arrays")
    check_separate(fname, [("x", x), ("residual", residual)], [("out", out), ("residual_out", residual_out)])
    lead = x.shape[:x.ndim - len(shape)]
    M, N = _core.prod(lead), _core.prod(shape)
    eng = _core.engine()
    if eng.kernel_dtype(x.dtype) != x.dtype.newbyteorder("="):
        # No kernel for this dtype (float16 on the CPU): the add in x's dtype (same rounding
        # as the unfused add), then the norm.
        h = eng.xp.add(x, residual, out=residual_out)
        y, mean, rstd = _core.normalize_along(h, tuple(range(x.ndim - len(shape), x.ndim)), w, b, eps, out, rms)
        return y, h, mean, rstd
    xk, rk = _core.kernel_array(x, x.dtype.newbyteorder("=")), _core.kernel_array(residual, x.dtype.newbyteorder("="))
    hk = _core.target(residual_out, xk)
    yk = _core.target(out, xk)
    if hk is yk:
        yk = np.empty_like(xk)
    wf, bf = _core.affine_pair(None if w is None else w.reshape(-1), None if b is None else b.reshape(-1))
    mean, rstd = _core.engine().rows_add_forward(xk, rk, hk, yk, M, N, wf, bf, eps, rms)
    if N == 0:
        mean[:] = np.nan
    y = _core.finish(out, x.dtype, yk)
    h = _core.finish(residual_out, x.dtype, hk)
    return y, h, mean.reshape(lead), rstd.reshape(lead)


@fill
def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
                   residual_out=None, return_stats=False):
    """``h = x + residual`` (rounded in x's dtype) then ``y = layer_norm(h)``, fused: one read of x and
    residual, one write of y and h.

    Parameters
    ----------
    {residual}
    {normalized_shape}
    {weight_bias_rows}
    {eps}
    {out_residual}
    return_stats : bool, default False
        Also return the ``mean`` and ``rstd`` of h's rows (float64).

    Returns
    -------
    y, h : arrays like x
        The normalized sum and the sum itself.
    mean, rstd : float64 arrays, only with ``return_stats``

    {raises_add}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x, r = np.ones((2, 4)), np.arange(8.0).reshape(2, 4)
    >>> y, h = nf.add_layer_norm(x, r, 4)
    >>> np.array_equal(h, x + r), np.allclose(y, nf.layer_norm(x + r, 4))
    (True, True)
    """
    eps = check_eps(eps)
    y, h, mean, rstd = _add_norm(x, residual, normalized_shape, weight, bias, eps, out, residual_out, False,
                                 "add_layer_norm")
    return (y, h, mean, rstd) if return_stats else (y, h)


@fill
def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None, residual_out=None,
                 return_stats=False):
    """``h = x + residual`` (rounded in x's dtype) then ``y = rms_norm(h)``, fused: one read of x and
    residual, one write of y and h.

    Parameters
    ----------
    {residual}
    {normalized_shape}
    weight : array of shape ``normalized_shape``, optional
    {eps_rms}
    {out_residual}
    return_stats : bool, default False
        Also return the ``rstd`` of h's rows (float64).

    Returns
    -------
    y, h : arrays like x
    rstd : float64 array, only with ``return_stats``

    {raises_add}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x, r = np.ones((2, 4)), np.arange(8.0).reshape(2, 4)
    >>> y, h, rstd = nf.add_rms_norm(x, r, 4, residual_out=r, return_stats=True)    # h written into r
    >>> h is r, np.allclose(y, h * rstd[:, None])
    (True, True)
    """
    x = check_float_array(x)
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_eps(eps)
    y, h, _, rstd = _add_norm(x, residual, normalized_shape, weight, None, eps, out, residual_out, True,
                              "add_rms_norm")
    return (y, h, rstd) if return_stats else (y, h)


def _add_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, rms, fname, out):
    h = check_float_array(h, "h")
    dy = _core.check_grad_out(grad_y, h)
    if grad_h is not None:
        grad_h = check_float_array(grad_h, "grad_h")
        if grad_h.shape != h.shape:
            raise ValueError(f"grad_h must have h's shape {tuple(h.shape)}, got {tuple(grad_h.shape)}")
    shape, _ = normalized_axes(h, normalized_shape, fname)
    lead = h.shape[:h.ndim - len(shape)]
    mean = None if rms else _core.check_stats(mean, lead, "mean")
    rstd = _core.check_stats(rstd, lead, "rstd")
    w = check_param(weight, shape, "weight")
    needs = (True, w is not None, w is not None and not rms)
    out = _core.grad_target(out, h, dy, fname, grad_h)
    return _core.rows_grads(dy, h, shape, mean, rstd, w, weight, needs, out, grad_h)


@fill
def add_layer_norm_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight=None, *, out=None):
    """Gradients of :func:`add_layer_norm`: ``(grad_input, grad_weight, grad_bias)``.

    ``grad_h`` (the gradient reaching h from later uses, or None) is added to the norm's input
    gradient in the same pass; ``grad_input`` is the gradient of both x and residual.

    Parameters
    ----------
    {grad_add}
    mean, rstd : float64 arrays
        As returned by ``add_layer_norm(..., return_stats=True)``.
    {add_bwd_tail}

    Returns
    -------
    grad_input : array like h
        The gradient of both x and residual.
    grad_weight, grad_bias : arrays, or None without a weight

    {raises_add_bwd}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x, r = np.random.default_rng(0).normal(size=(2, 2, 4))
    >>> y, h, *stats = nf.add_layer_norm(x, r, 4, return_stats=True)
    >>> g = nf.add_layer_norm_backward(np.ones_like(h), np.ones_like(h), h, *stats, 4)
    >>> np.allclose(g[0], 1.0)
    True
    """
    return _add_backward(grad_y, grad_h, h, mean, rstd, normalized_shape, weight, False, "add_layer_norm_backward",
                         out)


@fill
def add_rms_norm_backward(grad_y, grad_h, h, rstd, normalized_shape, weight=None, *, out=None):
    """Gradients of :func:`add_rms_norm`: ``(grad_input, grad_weight)``.

    ``grad_h`` (the gradient reaching h from later uses, or None) is added to the norm's input
    gradient in the same pass; ``grad_input`` is the gradient of both x and residual.

    Parameters
    ----------
    {grad_add}
    rstd : float64 array
        The forward's ``rstd`` (``add_rms_norm(..., return_stats=True)``).
    {add_bwd_tail}

    Returns
    -------
    grad_input : array like h
        The gradient of both x and residual.
    grad_weight : array, or None without a weight

    {raises_add_bwd}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x, r = np.random.default_rng(0).normal(size=(2, 2, 4))
    >>> y, h, rstd = nf.add_rms_norm(x, r, 4, np.ones(4), return_stats=True)
    >>> gi, gw = nf.add_rms_norm_backward(np.zeros_like(h), None, h, rstd, 4, np.ones(4))
    >>> np.allclose(gi, 0.0), gw.shape
    (True, (4,))
    """
    dx, dw, _ = _add_backward(grad_y, grad_h, h, None, rstd, normalized_shape, weight, True, "add_rms_norm_backward",
                              out)
    return dx, dw
