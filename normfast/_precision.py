"""The arithmetic width of the row-wise normalization of float32 data (process-wide, as
``torch.set_float32_matmul_precision``)."""
from ._cpu import _normalize

_CHOICES = ("highest", "high")


def set_float32_precision(precision):
    """Choose how ``layer_norm`` and ``rms_norm`` normalize float32 rows on the CPU.

    Parameters
    ----------
    precision : {"highest", "high"}
        ``"highest"`` (the default): ``(x - mean) * rstd * w + b`` is evaluated in float64 and
        rounded once (each result within about half a float32 ulp of the exact value).
        ``"high"``: the same expression at float32 SIMD width (twice the lanes) with the float64
        mean split into two float32 parts; per element ``|y - exact| <= 5.01 u |(x - mean) * rstd * w|
        + 1.01 u |y|`` with ``u = 2**-24`` (about 3 ulp; ``<= 1.1e-6`` at mean 1e4 / std 0.1 without
        an affine).  The statistics stay float64 shifted sums in both modes, results stay
        independent of the thread count, and other dtypes and operators are not affected.  The
        proof is in ``src_c/apply_f32.h``.

    Raises
    ------
    ValueError
        ``precision`` is not one of the two names.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> nf.set_float32_precision("high")
    >>> y = nf.layer_norm(np.ones((2, 8), np.float32), 8)
    >>> nf.get_float32_precision()
    'high'
    >>> nf.set_float32_precision("highest")
    """
    if not isinstance(precision, str) or precision not in _CHOICES:
        raise ValueError(f"set_float32_precision: precision must be 'highest' or 'high', got {precision!r}")
    _normalize.set_float32_high(precision == "high")


def get_float32_precision():
    """The current setting of :func:`set_float32_precision`.

    Returns
    -------
    str
        ``"highest"`` or ``"high"``.

    Examples
    --------
    >>> import normfast as nf
    >>> nf.get_float32_precision()
    'highest'
    """
    return "high" if _normalize.float32_high() else "highest"
