"""normfast.sklearn: a scikit-learn ``StandardScaler`` on normfast's exact one-pass statistics.

Import it explicitly (``from normfast.sklearn import StandardScaler``); it needs scikit-learn
(``pip install normfast[sklearn]``), ``import normfast`` never imports it.

The estimator follows :class:`sklearn.preprocessing.StandardScaler` (parameters, attributes,
NaN handling, ``sample_weight``, ``partial_fit``, ``set_output``, feature names) and differs
only in how the statistics are computed:

- **fit / partial_fit** reduce every batch with normfast's float64 kernel to its per-feature
  ``(count, mean, M2)`` in one read of memory (chunked shifted sums merged with Chan's
  formula) and merge the batch into the running :class:`normfast.Moments` state with Chan's
  formula.  The mean is exact to about an ulp and the variance to about 1e-15 relative, also
  for data whose mean is large compared to its spread, where scikit-learn's own scaler loses
  many digits.  Columns holding NaN (ignored, as in scikit-learn) and ``sample_weight`` take
  a weighted path: corrected two-pass sums on row blocks small enough to stay in cache (one
  read of memory), blocks merged pairwise with the weighted Chan formula (count = sum of
  weights).
- **transform / inverse_transform** evaluate ``(x - mean_) / scale_`` with ``x - mean_`` in
  float64 (normfast's eval-mode ``batch_norm`` kernel), so float32 data keeps its accuracy.
- **Dask arrays** (``dask.array.Array``, 2-d, chunked along samples or features): ``fit``
  and ``partial_fit`` read the array once (``normfast.dask``'s tree reduction of the chunks'
  states, computed at call time); ``transform`` / ``inverse_transform`` return lazy Dask
  arrays.  ``sample_weight`` is not supported with Dask input.

Sparse input: as scikit-learn, ``with_mean=True`` raises the "Cannot center sparse
matrices" ``ValueError``; with ``with_mean=False`` CSR/CSC input is handled by scikit-learn's
own sparse routines (``sklearn.utils.sparsefuncs``, not normfast's kernels).
"""
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.sparsefuncs import incr_mean_variance_axis, inplace_column_scale, mean_variance_axis
from sklearn.utils.validation import (FLOAT_DTYPES, _check_sample_weight, check_array, check_is_fitted,
                                      validate_data)

import normfast
from ._moments import Moments, _count_mean_m2

__all__ = ["StandardScaler"]

#: Rows per block of the weighted / NaN path: ~1 MiB of float64 per block, so that the
#: block is still in the (L2) cache for the second and third sums over it.
_BLOCK_BYTES = 1 << 20

#: A feature is constant when its standard deviation is below this many float64 ulps of its
#: mean: an exactly constant column has M2 = 0 on the unweighted path, and the weighted mean
#: of a constant column is within a few roundings of the value (so its spread is a few ulps
#: at most); real data varies by at least one ulp of its own dtype per step.
_CONSTANT_ULPS = 16

_SPARSE_CENTER = ("Cannot center sparse matrices: pass `with_mean=False` instead. "
                  "See docstring for motivation and alternatives.")


# --------------------------------------------------------------------------- statistics

def _pairwise_reduce(count, mean, m2):
    """Chan's merge of k states stacked on axis 0 ((k, p) arrays), pairwise (log2 k levels, so
    the rounding of the merged mean grows like log k, not k): a Moments of shape (p,)."""
    while count.shape[0] > 1:
        k = count.shape[0] // 2
        a = Moments(count[0:2 * k:2], mean[0:2 * k:2], m2[0:2 * k:2])
        a.merge(Moments(count[1:2 * k:2], mean[1:2 * k:2], m2[1:2 * k:2]))
        if count.shape[0] % 2:
            count, mean, m2 = (np.concatenate([v, t[-1:]]) for v, t in
                               ((a.count, count), (a.mean, mean), (a.m2, m2)))
        else:
            count, mean, m2 = a.count, a.mean, a.m2
    return Moments(count[0], mean[0], m2[0])


def weighted_moments(X, sample_weight=None):
    """Weighted per-column ``(count, mean, M2)`` of a 2-d array, NaN entries ignored.

    Parameters
    ----------
    X : (n, p) float array.  sample_weight : (n,) array or None (all ones).

    Returns
    -------
    Moments of shape (p,) with ``count = sum of the weights of the non-NaN entries``,
    ``mean = sum(w x) / count`` and ``M2 = sum(w (x - mean)**2)`` (float64).

    Scalar math per block of rows (corrected two-pass, Chan, Golub & LeVeque 1983)::

        c = sum(w x) / W;  d = x - c;  s = sum(w d)
        mean = c + s / W;  M2 = sum(w d**2) - s**2 / W

    then the blocks are merged pairwise with Chan's formula (weighted: counts are weight sums).
    """
    n, p = X.shape
    rows = max(1, _BLOCK_BYTES // (8 * max(p, 1)))
    parts = []
    for s in range(0, n, rows):
        xb = np.asarray(X[s:s + rows], dtype=np.float64)
        wb = np.ones((xb.shape[0], 1)) if sample_weight is None else \
            np.asarray(sample_weight[s:s + rows], dtype=np.float64)[:, None]
        nan = np.isnan(xb)
        if nan.any():
            wb = np.where(nan, 0.0, wb)
            xb = np.where(nan, 0.0, xb)
        else:
            wb = np.broadcast_to(wb, xb.shape)
        W = wb.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(W != 0, W, 1.0)
            c = (wb * xb).sum(axis=0) / safe
            d = xb - c
            wd = wb * d
            sd = wd.sum(axis=0)
            mean = np.where(W != 0, c + sd / safe, 0.0)
            m2 = np.where(W != 0, (wd * d).sum(axis=0) - sd * sd / safe, 0.0)
        parts.append((W, mean, np.maximum(m2, 0.0)))
    if not parts:
        return Moments(np.zeros(p), np.zeros(p), np.zeros(p))
    return _pairwise_reduce(*(np.stack(v) for v in zip(*parts)))


def batch_moments(X, sample_weight=None):
    """Per-column Moments of one dense batch: normfast's kernel in one read; the columns that
    hold NaN (found from the non-finite results, no extra pass) and weighted batches take
    :func:`weighted_moments`.  Infinite values raise ``ValueError`` (as scikit-learn)."""
    if sample_weight is not None:
        _check_finite_columns(X, np.ones(X.shape[1], bool))
        return weighted_moments(X, sample_weight)
    count, mean, m2, _ = _count_mean_m2(X, 0)
    state = Moments(np.full(X.shape[1], float(count)), mean, m2)
    bad = ~(np.isfinite(mean) & np.isfinite(m2)) if count else np.zeros(X.shape[1], bool)
    if bad.any():
        _check_finite_columns(X, bad)
        sub = weighted_moments(X[:, bad])
        state.count[bad], state.mean[bad], state.m2[bad] = sub.count, sub.mean, sub.m2
    state.mean = np.where(state.count == 0, 0.0, state.mean)
    return state


def _check_finite_columns(X, cols):
    """scikit-learn's error for infinite input (NaN allowed), looking only at ``cols``."""
    from sklearn.utils import assert_all_finite
    assert_all_finite(X[:, cols] if not cols.all() else X, allow_nan=True, input_name="X")


def _is_dask(X):
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


# --------------------------------------------------------------------------- estimator

class StandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardize features by removing the mean and scaling to unit variance, exactly.

    Drop-in for :class:`sklearn.preprocessing.StandardScaler`: ``z = (x - mean_) / scale_``
    with the biased per-feature variance, NaN ignored in ``fit`` and kept in ``transform``,
    constant features scaled by 1.  Statistics are normfast's one-pass float64 mergeable
    moments (see the module docstring), exact where scikit-learn's accumulate rounding.

    Parameters
    ----------
    copy : bool, default=True
        False scales NumPy input in place (when it is already a float array).
    with_mean : bool, default=True
        Center the data (sparse input needs ``with_mean=False``).
    with_std : bool, default=True
        Scale the data to unit variance.

    Attributes
    ----------
    scale_ : (n_features,) float64 or None
        ``sqrt(var_)``, 1 for constant features; None with ``with_std=False``.
    mean_ : (n_features,) float64 or None
        Per-feature (weighted) mean; None when ``with_mean`` and ``with_std`` are both False.
    var_ : (n_features,) float64 or None
        Per-feature biased (weighted) variance; None with ``with_std=False``.
    n_features_in_ : int
    feature_names_in_ : (n_features_in_,) ndarray of str, when fit on a DataFrame with string
        column names.
    n_samples_seen_ : int or (n_features,) ndarray
        Samples (sum of weights with ``sample_weight``) seen per feature, NaN excluded; one
        number when equal for all features.  Accumulates over ``partial_fit`` calls.

    Examples
    --------
    >>> import numpy as np
    >>> from normfast.sklearn import StandardScaler
    >>> X = 1e6 + 1e-2 * np.random.default_rng(0).standard_normal((1000, 3))
    >>> Z = StandardScaler().fit_transform(X)
    >>> bool(np.allclose(Z.std(axis=0), 1.0))
    True
    """

    def __init__(self, *, copy=True, with_mean=True, with_std=True):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std

    # ------------------------------------------------------------------ fitting

    def _reset(self):
        for name in ("scale_", "mean_", "var_", "n_samples_seen_", "_state"):
            if hasattr(self, name):
                delattr(self, name)

    def fit(self, X, y=None, sample_weight=None):
        """Compute the per-feature mean and standard deviation in one read of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Array, DataFrame, sparse matrix (``with_mean=False``) or 2-d Dask array.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), optional
            Weights of the samples (not with Dask input).

        Returns
        -------
        self : StandardScaler
            The fitted estimator.

        Raises
        ------
        ValueError
            Infinite values, sparse input with ``with_mean=True``, a parameter that is not a bool.
        NotImplementedError
            ``sample_weight`` with Dask input.

        Examples
        --------
        >>> import numpy as np
        >>> from normfast.sklearn import StandardScaler
        >>> s = StandardScaler().fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
        >>> s.mean_.tolist(), s.scale_.tolist()
        ([2.0, 20.0], [1.0, 10.0])
        """
        self._reset()
        return self.partial_fit(X, y, sample_weight)

    def partial_fit(self, X, y=None, sample_weight=None):
        """Fold the batch ``X`` into the statistics (Chan's merge with the previous batches).

        The result equals ``fit`` on all the batches stacked, to float64 rounding.

        Parameters
        ----------
        X, y, sample_weight
            As :meth:`fit`; ``X`` has the features of the previous batches.

        Returns
        -------
        self : StandardScaler
            The updated estimator.

        Raises
        ------
        ValueError, NotImplementedError
            As :meth:`fit`, and a batch with another number of features.

        Examples
        --------
        >>> import numpy as np
        >>> from normfast.sklearn import StandardScaler
        >>> s = StandardScaler().partial_fit(np.zeros((2, 1))).partial_fit(np.full((2, 1), 4.0))
        >>> s.mean_.tolist(), s.var_.tolist(), int(s.n_samples_seen_)
        ([2.0], [4.0], 4)
        """
        self._check_params()
        first = not hasattr(self, "n_samples_seen_")
        if _is_dask(X):
            batch, weighted = self._dask_moments(X, sample_weight, first), False
        else:
            X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=FLOAT_DTYPES,
                              ensure_all_finite=False, reset=first)     # finiteness: see batch_moments
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if sparse.issparse(X):
                return self._sparse_partial_fit(X, sample_weight, first)
            batch, weighted = batch_moments(X, sample_weight), sample_weight is not None
        state = batch if first else self._state.merge(batch)
        self._state = state
        self._set_attributes(X.dtype, weighted)
        return self

    def _check_params(self):
        for name in ("copy", "with_mean", "with_std"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"The '{name}' parameter of StandardScaler must be an instance of 'bool'. "
                                 f"Got {getattr(self, name)!r} instead.")

    def _set_attributes(self, dtype, weighted):
        st = self._state
        n = st.count
        if weighted:            # as scikit-learn: weight sums in X's dtype, counts as int64
            seen = n.astype(dtype if np.dtype(dtype).kind == "f" else np.float64)
        else:
            seen = np.rint(n).astype(np.int64)
        self.n_samples_seen_ = seen[0] if seen.size and np.all(seen == seen[0]) else seen
        mean = np.where(n > 0, st.mean, np.nan)
        var = st.var()
        if not self.with_mean and not self.with_std:
            self.mean_ = self.var_ = self.scale_ = None
            return
        self.mean_ = mean
        if self.with_std:
            self.var_ = var
            scale = np.sqrt(var)
            constant = scale <= _CONSTANT_ULPS * np.finfo(np.float64).eps * np.abs(mean)
            self.scale_ = np.where(constant, 1.0, scale)
        else:
            self.var_ = self.scale_ = None

    def _sparse_partial_fit(self, X, sample_weight, first):
        """CSR/CSC with with_mean=False: scikit-learn's sparse routines (float64 results)."""
        if self.with_mean:
            raise ValueError(_SPARSE_CENTER)
        if not self.with_std:
            w = np.ones(X.shape[0]) if sample_weight is None else sample_weight
            isnan = sparse.csr_matrix((np.isnan(X.data), X.indices, X.indptr), shape=X.shape) \
                if X.format == "csr" else sparse.csc_matrix((np.isnan(X.data), X.indices, X.indptr), shape=X.shape)
            seen = np.sum(w) - np.asarray(w @ isnan).ravel()
            prev = 0 if first else self.n_samples_seen_
            seen = prev + (seen if sample_weight is not None else np.rint(seen).astype(np.int64))
            self.n_samples_seen_ = seen[0] if np.all(seen == seen[0]) else seen
            self.mean_ = self.var_ = self.scale_ = None
            return self
        if first:
            mean, var, n = mean_variance_axis(X, axis=0, weights=sample_weight, return_sum_weights=True)
        else:
            last_n = np.broadcast_to(self.n_samples_seen_, (X.shape[1],)).astype(np.float64)
            mean, var, n = incr_mean_variance_axis(X, axis=0, last_mean=self.mean_, last_var=self.var_,
                                                   last_n=last_n, weights=sample_weight)
        self._state = Moments(n, mean, var * n)
        self._set_attributes(X.dtype, sample_weight is not None)
        return self

    def _dask_moments(self, X, sample_weight, first):
        import normfast.dask as nd
        if sample_weight is not None:
            raise NotImplementedError("StandardScaler: sample_weight is not supported with Dask input")
        if X.ndim != 2:
            raise ValueError(f"Expected a 2D Dask array, got {X.ndim}D")
        if X.dtype.kind != "f":
            X = X.astype(np.float64)
        if first:
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but StandardScaler is expecting "
                             f"{self.n_features_in_} features as input.")
        return nd.moments_state(X, axis=0, skipna=True)

    # ------------------------------------------------------------------ transforming

    def transform(self, X, copy=None):
        """Standardize ``X``: ``(X - mean_) / scale_`` (``X - mean_`` in float64).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Array, DataFrame, sparse matrix (``with_mean=False``) or 2-d Dask array.
        copy : bool, optional
            None: ``self.copy``.  False scales a float NumPy ``X`` in place.

        Returns
        -------
        X_tr : array of X's shape and float dtype
            A lazy Dask array for Dask input.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`fit`.
        ValueError
            Another number of features than fitted, sparse input with ``with_mean=True``.

        Examples
        --------
        >>> import numpy as np
        >>> from normfast.sklearn import StandardScaler
        >>> s = StandardScaler().fit(np.array([[0.0], [2.0]]))
        >>> s.transform(np.array([[4.0]])).tolist()
        [[3.0]]
        """
        check_is_fitted(self)
        return self._affine(X, copy, inverse=False)

    def inverse_transform(self, X, copy=None):
        """Undo :meth:`transform`: ``X * scale_ + mean_``.

        Parameters
        ----------
        X, copy
            As :meth:`transform`.

        Returns
        -------
        X_orig : array like the output of :meth:`transform`

        Raises
        ------
        sklearn.exceptions.NotFittedError, ValueError
            As :meth:`transform`.

        Examples
        --------
        >>> import numpy as np
        >>> from normfast.sklearn import StandardScaler
        >>> s = StandardScaler().fit(np.array([[0.0], [2.0]]))
        >>> s.inverse_transform(s.transform(np.array([[4.0]]))).tolist()
        [[4.0]]
        """
        check_is_fitted(self)
        return self._affine(X, copy, inverse=True)

    def _coefficients(self, inverse):
        """(center, weight, bias) with y = (x - center) * weight + bias (None: identity)."""
        p = self.n_features_in_
        mean = self.mean_ if self.with_mean else None
        scale = self.scale_ if self.with_std else None
        if inverse:
            return np.zeros(p), scale, mean
        return (np.zeros(p) if mean is None else mean), (None if scale is None else 1.0 / scale), None

    def _affine(self, X, copy, inverse):
        copy = self.copy if copy is None else copy
        center, w, b = self._coefficients(inverse)
        ones = np.ones(self.n_features_in_)
        if _is_dask(X):
            import normfast.dask as nd
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[-1]} features, but StandardScaler is expecting "
                                 f"{self.n_features_in_} features as input.")
            if X.dtype.kind != "f":
                X = X.astype(np.float64)
            return nd.batch_norm(X, center, ones, w, b, training=False, eps=0.0, channel_axis=-1)
        if inverse:
            X = check_array(X, accept_sparse="csr", copy=False, dtype=FLOAT_DTYPES, ensure_all_finite="allow-nan")
        else:
            X = validate_data(self, X, reset=False, accept_sparse="csr", copy=False, dtype=FLOAT_DTYPES,
                              ensure_all_finite="allow-nan")
        if sparse.issparse(X):
            if self.with_mean:
                raise ValueError(_SPARSE_CENTER if not inverse else _SPARSE_CENTER.replace("center", "uncenter"))
            X = X.copy() if copy else X
            if self.scale_ is not None:
                inplace_column_scale(X, self.scale_ if inverse else 1.0 / self.scale_)
            return X
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead")
        in_place = not copy and X.flags.writeable
        y = normfast.batch_norm(X, center, ones, w, b, training=False, eps=0.0, channel_axis=-1,
                                out=X if in_place else None)
        return y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = not self.with_mean
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
