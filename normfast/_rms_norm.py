"""rms_norm: root-mean-square normalization over the trailing ``normalized_shape`` dims."""
import numpy as np

from . import _core
from ._docs import fill
from ._checks import check_eps, check_float_array, check_out, check_param
from ._layer_norm import normalized_axes


@fill
def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    """Root-mean-square normalization over the trailing ``normalized_shape`` dimensions.

    As ``torch.nn.functional.rms_norm``: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    {x_rows}
    {normalized_shape}
    weight : array of shape ``normalized_shape``, optional
        Elementwise scale (any float dtype; read as float64).
    {eps_rms}
    {out_y}
    return_stats : bool, default False
        Also return ``rstd`` (float64, shape ``x.shape[:-k]``).

    Returns
    -------
    y : array of x's shape, dtype and type
    rstd : float64 array, only with ``return_stats``

    Raises
    ------
    TypeError, ValueError
        As :func:`layer_norm`.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.array([[3.0, 4.0]])
    >>> np.allclose(nf.rms_norm(x, 2, eps=0.0), x / np.sqrt(12.5))
    True
    """
    x = check_float_array(x)
    shape, axes = normalized_axes(x, normalized_shape, "rms_norm")
    w = check_param(weight, shape, "weight")
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    y, _, rstd = _core.normalize_trailing(x, len(axes), w, None, eps, out, rms=True)
    return (y, rstd) if return_stats else y


@fill
def rms_norm_backward(grad_out, x, rstd, normalized_shape, weight=None, *, needs_input_grad=(True, True), out=None):
    """Gradients of :func:`rms_norm`: ``(grad_x, grad_weight)``.

    Parameters
    ----------
    {grad_out_x}
    rstd : array
        As returned by ``rms_norm(..., return_stats=True)``.
    {bwd_tail_rows}

    Returns
    -------
    grad_x : array like x, or None
    grad_weight : array of the weight's shape and dtype, or None

    {raises_bwd}

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.random.default_rng(0).normal(size=(4, 8))
    >>> y, rstd = nf.rms_norm(x, 8, return_stats=True)
    >>> gx, gw = nf.rms_norm_backward(np.ones_like(x), x, rstd, 8)
    >>> gx.shape
    (4, 8)
    """
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    shape, _ = normalized_axes(x, normalized_shape, "rms_norm_backward")
    lead = x.shape[:x.ndim - len(shape)]
    rstd = _core.check_stats(rstd, lead, "rstd")
    w = check_param(weight, shape, "weight")
    nx, nw = _core.check_needs(needs_input_grad, 2, "rms_norm_backward")
    nw = nw and w is not None
    out = _core.grad_target(out, x, dy, "rms_norm_backward")
    dx, dw, _ = _core.rows_grads(dy, x, shape, None, rstd, w, weight, (nx, nw, False), out)
    return dx, dw
