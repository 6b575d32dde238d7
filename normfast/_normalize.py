"""normalize: standardize over any set of axes (the general form of every norm)."""
from . import _core
from ._checks import check_eps, check_float_array, check_out, check_param, normalize_axes


def normalize(x, axis=-1, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Standardize ``x`` over ``axis``: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : ndarray of float16, float32 or float64, any shape.
    axis : int or tuple of ints, the normalized axes (need not be trailing or contiguous:
        ``axis=1`` of NCHW is channels-first LayerNorm, ``axis=0`` is feature standardization).
    weight, bias : optional arrays with the shape of the normalized axes (``x.shape[axis]``).
    eps : float >= 0 added to the biased variance.
    out : optional output array (x's shape and dtype); ``out=x`` normalizes in place.
    return_stats : also return ``mean`` and ``rstd = 1/sqrt(var + eps)`` (float64), shaped as
        the kept axes.

    Returns
    -------
    y : array of x's shape, dtype and type (``out`` when given)
    mean, rstd : float64 arrays of the kept axes' shape, only with ``return_stats``

    Raises
    ------
    TypeError, ValueError
        Non-floating arrays, axes out of range or repeated, parameters of the wrong shape, a bad
        ``out``.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> nf.normalize(x, axis=0, eps=0.0).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]

    Notes
    -----
    Statistics use float64 accumulators in a single pass (chunked shifted sums merged with
    Chan's formula); ``x - mean`` is evaluated in float64.  Non-contiguous input is copied
    once; axis patterns that are not of the form ``kept, reduced, kept, reduced`` (or an
    affine together with non-trailing axes) are transposed into rows with one copy.
    """
    x = check_float_array(x)
    axes = normalize_axes(axis, x.ndim)
    norm_shape = tuple(x.shape[i] for i in axes)
    w = check_param(weight, norm_shape, "weight")
    b = check_param(bias, norm_shape, "bias")
    eps = check_eps(eps)
    out = check_out(out, x.shape, x.dtype, x)
    y, mean, rstd = _core.normalize_along(x, axes, w, b, eps, out)
    return (y, mean, rstd) if return_stats else y
