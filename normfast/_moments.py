"""moments / Moments: single-pass, mergeable mean and variance (count, mean, M2)."""
import math
import numbers

import numpy as np

from . import _core
from ._checks import check_float_array, normalize_axes
from ._dispatch import dispatch


def _count_mean_m2(x, axis):
    """(count, mean, M2) of x over `axis` (None = all); float64, mean/M2 shaped as the kept axes.
    x is the engine's array type (the dispatcher converted it)."""
    x = check_float_array(x)
    if isinstance(axis, (tuple, list)) and len(axis) == 0:      # the empty reduction (Array API): count 1
        mean = np.asarray(x, dtype=np.float64).copy()
        return 1, mean, np.where(np.isfinite(mean), 0.0, np.nan), ()
    axes = tuple(range(x.ndim)) if axis is None else normalize_axes(axis, x.ndim)
    kept = [i for i in range(x.ndim) if i not in axes]
    stat_shape = tuple(x.shape[i] for i in kept)
    xk = _core.as_kernel_input(x)
    dims = _core.plan4d(x.shape, set(axes))
    if dims is None:
        xk, _, dims = _core.as_rows(xk, kept, axes)
    n, mean, m2 = _core.moments4d(xk, dims)
    count = _core.prod(x.shape[i] for i in axes)
    mean = np.where(n == 0, np.nan, mean)
    return count, mean.reshape(stat_shape), m2.reshape(stat_shape), axes


def moments(x, axis=None, *, correction=0, keepdims=False, return_count=False):
    """Mean and variance of ``x`` over ``axis`` in one pass over memory.

    Chunked shifted sums in float64 merged with Chan's formula: single pass, mergeable,
    bitwise independent of the thread count.

    Parameters
    ----------
    x : array of float16, float32 or float64
        Any array type the package takes; any strides.
    axis : None, int or tuple of int, default None
        None reduces over all axes; ``()`` is the empty reduction (mean = x, var = 0).
    correction : real >= 0, default 0
        Degrees of freedom removed from the count (0: biased, 1: unbiased; floats allowed, as
        the Array API does), like ``numpy.var(ddof=)`` / ``torch.var(correction=)``.
    keepdims : bool, default False
    return_count : bool, default False
        Also return the number of values per statistic.

    Returns
    -------
    mean, var : arrays of the kept axes' shape
        float64 for float64 input, float32 otherwise (accumulation is always float64).
        Empty reductions give NaN; inf in the data gives NumPy's results.
    count : int, only with ``return_count``

    Raises
    ------
    TypeError
        x is not a floating array, correction is not a real number.
    ValueError
        An axis out of range or repeated, correction < 0.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> mean, var = nf.moments(np.array([[1.0, 2.0], [3.0, 6.0]]), axis=0)
    >>> mean.tolist(), var.tolist()
    ([2.0, 4.0], [1.0, 4.0])
    """
    correction = check_correction(correction)
    count, mean, m2, axes = _count_mean_m2(x, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m2 / (count - correction) if count - correction > 0 else np.full_like(m2, np.nan)
    if keepdims:
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
        mean, var = mean.reshape(shape), var.reshape(shape)
    dt = np.float64 if np.dtype(x.dtype).itemsize == 8 else np.float32
    mean, var = np.asarray(mean, dtype=dt), np.asarray(var, dtype=dt)
    return (mean, var, count) if return_count else (mean, var)


def check_correction(correction):
    """int or float >= 0 (the Array API's ``correction: int | float``)."""
    if isinstance(correction, bool) or not isinstance(correction, numbers.Real):
        raise TypeError(f"correction must be a real number >= 0, got {type(correction).__name__}")
    correction = float(correction)
    if not (math.isfinite(correction) and correction >= 0):
        raise ValueError(f"correction must be finite and >= 0, got {correction}")
    return correction


def _is_empty_default(m):
    """``Moments()``: the scalar state with nothing folded in, the identity of merge."""
    return m.mean.shape == () and m.count.shape == () and float(m.count) == 0


class Moments:
    """Mergeable running statistics (count, mean, M2) in float64.

    ``update(x, axis=0)`` folds a batch in; ``merge(other)`` combines two states with Chan's
    formula (unequal counts allowed); both are exact rearrangements, so statistics computed
    on shards (threads, processes, machines) and merged equal the statistics of the whole.
    Pickles to its three arrays.

    Parameters
    ----------
    count : float or array, default 0
        Number of values (a sum of weights for weighted statistics).
    mean : float or array, default 0.0
    m2 : float or array, default 0.0
        Sum of squared deviations from the mean.

    Attributes
    ----------
    count, mean, m2 : float64 arrays

    Raises
    ------
    TypeError
        ``merge`` with something that is not a Moments.
    ValueError
        ``merge`` of states of different shapes (the empty default state merges with any).

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> x = np.arange(10.0).reshape(5, 2)
    >>> parts = [nf.Moments.from_array(x[:2]), nf.Moments.from_array(x[2:])]
    >>> total = nf.Moments.reduce(parts)
    >>> np.allclose(total.mean, x.mean(0)), np.allclose(total.var(), x.var(0))
    (True, True)
    """

    __slots__ = ("count", "mean", "m2")

    def __init__(self, count=0, mean=0.0, m2=0.0):
        self.count = np.asarray(count, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.m2 = np.asarray(m2, dtype=np.float64)

    @classmethod
    def from_array(cls, x, axis=0):
        """The state of ``x`` reduced over ``axis``.

        Parameters
        ----------
        x : array of float16, float32 or float64
            Any array type the public functions take (NumPy, torch and other DLPack arrays,
            CuPy, Dask: computed now, in one read of the chunks).
        axis : None, int or tuple of int, default 0
            The reduced axes; the statistics have the shape of the others.

        Returns
        -------
        Moments
            On the host (float64 NumPy arrays).

        Raises
        ------
        TypeError, ValueError
            As :func:`normfast.moments`.
        """
        return moments_state(x, axis)

    def update(self, x, axis=0):
        """Fold the batch ``x`` in: ``self.merge(Moments.from_array(x, axis))``.

        Parameters
        ----------
        x, axis
            As :meth:`from_array`; the kept axes must match the state's shape.

        Returns
        -------
        self
        """
        return self.merge(Moments.from_array(x, axis))

    def merge(self, other):
        """Chan's merge of ``other`` into self, in place (unequal counts allowed).

        Parameters
        ----------
        other : Moments
            Statistics of the same shape (the empty ``Moments()`` merges with any).

        Returns
        -------
        self

        Raises
        ------
        TypeError
            ``other`` is not a Moments.
        ValueError
            States of different shapes.
        """
        if not isinstance(other, Moments):
            raise TypeError(f"Moments.merge: other must be a Moments, got {type(other).__name__}")
        if self.mean.shape != other.mean.shape:
            if _is_empty_default(other):
                return self
            if not _is_empty_default(self):
                raise ValueError(f"Moments.merge: statistics of shape {self.mean.shape} and {other.mean.shape} "
                                 "cannot be merged (they describe different features)")
        na, nb = self.count, other.count
        n = na + nb
        with np.errstate(divide="ignore", invalid="ignore"):
            fb = np.where(n > 0, nb / np.where(n > 0, n, 1), 0.0)
            d = other.mean - self.mean
            mean = np.where(nb == 0, self.mean, np.where(na == 0, other.mean, self.mean + d * fb))
            m2 = np.where(nb == 0, self.m2, np.where(na == 0, other.m2, self.m2 + other.m2 + d * d * na * fb))
        self.count, self.mean, self.m2 = n, mean, m2
        return self

    @staticmethod
    def reduce(states):
        """Merge ``states`` in order into a new Moments (the inputs are not changed).

        Parameters
        ----------
        states : iterable of Moments

        Returns
        -------
        Moments
            ``Moments()`` (count 0) for an empty iterable.
        """
        r = Moments()
        for s in states:
            r.merge(s)
        return r

    def var(self, correction=0):
        """Variance ``m2 / (count - correction)``; NaN where that count is not positive.

        Parameters
        ----------
        correction : real >= 0, default 0
            0: biased (population) variance, 1: unbiased.

        Returns
        -------
        float64 array of the state's shape

        Raises
        ------
        TypeError, ValueError
            A correction that is not a real number >= 0.
        """
        correction = check_correction(correction)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.count - correction > 0, self.m2 / (self.count - correction), np.nan)

    def std(self, correction=0):
        """Standard deviation ``sqrt(var(correction))``.

        Parameters
        ----------
        correction : real >= 0, default 0
            As :meth:`var`.

        Returns
        -------
        float64 array of the state's shape
        """
        return np.sqrt(self.var(correction))

    def __reduce__(self):
        return (Moments, (self.count, self.mean, self.m2))

    def __repr__(self):
        return f"Moments(count={self.count!r}, mean={self.mean!r}, m2={self.m2!r})"


@dispatch(0)
def moments_state(x, axis=0):
    """The :class:`Moments` of x over `axis` (routed by the dispatcher like every public
    function: the Dask route is normfast.dask.moments_state)."""
    count, mean, m2, _ = _count_mean_m2(x, axis)
    return Moments(count, mean, m2)
