"""rms_norm: root-mean-square normalization over the trailing ``normalized_shape`` dims."""
import numpy as np

from . import _core
from ._checks import check_eps, check_float_array, check_out, check_param
from .layer_norm import normalized_axes


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
    y, _, rstd = _core.normalize_along(x, axes, w, None, eps, out, rms=True)
    return (y, rstd) if return_stats else y
