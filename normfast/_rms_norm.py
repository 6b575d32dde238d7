"""rms_norm: root-mean-square normalization over the trailing ``normalized_shape`` dims."""
import numpy as np

from . import _core
from ._checks import check_eps, check_float_array, check_out, check_param
from ._layer_norm import normalized_axes


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` (as ``torch.nn.functional.rms_norm``).

    eps=None uses the machine epsilon of x's dtype, like torch.  Returns ``y`` or
    ``(y, rstd)`` with float64 ``rstd`` of shape ``x.shape[:-len(normalized_shape)]``.
    """
    x = check_float_array(x)
    shape, axes = normalized_axes(x, normalized_shape, "rms_norm")
    w = check_param(weight, shape, "weight")
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    y, _, rstd = _core.normalize_trailing(x, len(axes), w, None, eps, out, rms=True)
    return (y, rstd) if return_stats else y


def rms_norm_backward(grad_out, x, rstd, normalized_shape, weight=None, *, needs_input_grad=(True, True), out=None):
    """Gradients of :func:`rms_norm`: ``(grad_x, grad_weight)``; rstd as returned with
    ``return_stats=True``.  Same fused row-wise scheme as ``layer_norm_backward``; ``out``
    (grad_x) as there: may be ``grad_out`` or ``x`` itself."""
    x = check_float_array(x)
    dy = _core.check_grad_out(grad_out, x)
    shape, _ = normalized_axes(x, normalized_shape, "rms_norm_backward")
    lead = x.shape[:x.ndim - len(shape)]
    rstd = _core.check_stats(rstd, lead, "rstd")
    w = check_param(weight, shape, "weight")
    nx, nw = _core.check_needs(needs_input_grad, 2, "rms_norm_backward")
    nw = nw and w is not None
    out = _core.grad_target(out, x, dy, "rms_norm_backward")
    M, N = _core.prod(lead), _core.prod(shape)
    dx, dw, _ = _core.rows_backward(dy, x, M, N, None, rstd, None if w is None else w.reshape(-1), (nx, nw, False),
                                    out=out)
    dx = _core.grad_finish(out, x, dx)
    dw = None if dw is None else _core.grad_cast(dw.reshape(shape), x, weight)
    return dx, dw
