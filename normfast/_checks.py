"""Argument validation shared by every public function: clear TypeError/ValueError
messages that name the argument and what was expected."""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def is_device_array(x):
    """A CuPy array (reaches the operators only through the GPU route of the dispatcher)."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def check_float_array(x, name="x"):
    """x must be a NumPy (or, on the GPU route, CuPy) array of float16/32/64 (bfloat16 on the
    GPU); returns it (never copies)."""
    if not isinstance(x, np.ndarray) and not is_device_array(x):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.dtype.type not in FLOAT_DTYPES and not (is_device_array(x) and x.dtype.name == "bfloat16"):
        raise TypeError(f"{name} must have a floating dtype (float16, float32 or float64), got {x.dtype}")
    return x


def same_dtype(a, b):
    """The same element type in any byte order (byte-swapped views are read and written right)."""
    return np.dtype(a).newbyteorder("=") == np.dtype(b).newbyteorder("=")


def check_eps(eps, name="eps"):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {eps}")
    return eps


def check_momentum(momentum):
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1] or None, got {type(momentum).__name__}")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


def check_int(v, name, minimum=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def normalize_axis(axis, ndim, name="axis"):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def normalize_axes(axis, ndim, name="axis"):
    """int or tuple of ints -> sorted tuple of distinct non-negative axes (non-empty)."""
    if isinstance(axis, (tuple, list)):
        axes = tuple(normalize_axis(a, ndim, name) for a in axis)
    else:
        axes = (normalize_axis(axis, ndim, name),)
    if not axes:
        raise ValueError(f"{name} must name at least one axis")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name} contains repeated axes: {axis}")
    return tuple(sorted(axes))


def check_param(p, shape, name, xp_dtype=None):
    """weight / bias: None or an array-like of exactly `shape` and a float dtype.

    Returned as a private C-contiguous float64 NumPy copy: any strided, reversed, zero-stride,
    misaligned or byte-swapped view is read correctly, and the kernels never see memory that an
    output of the same call may overwrite (a weight that is a row of ``out``)."""
    if p is None:
        return None
    if is_device_array(p):
        p = p.get()                      # parameters are small: host float64 for the coefficients
    if not isinstance(p, np.ndarray):
        if isinstance(p, (list, tuple, numbers.Real)):
            p = np.asarray(p, dtype=np.float64)
        else:
            raise TypeError(f"{name} must be an array or None, got {type(p).__name__}")
    if p.dtype.kind != "f" and p.dtype.name != "bfloat16":      # (ml_dtypes' bfloat16 is kind 'V')
        raise TypeError(f"{name} must have a floating dtype, got {p.dtype}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(p.shape)}")
    return np.array(p, dtype=np.float64, order="C", copy=True)


def check_out(out, shape, dtype, x, name="out"):
    """out: None or a writable array of x's shape and dtype, either x itself or not overlapping it."""
    if out is None:
        return None
    if type(out) is not type(x):
        raise TypeError(f"{name} must be an array of x's type ({type(x).__name__}) or None, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if not same_dtype(out.dtype, dtype):
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    check_no_self_overlap(out, name)
    if out is not x and _overlap(out, x) and not _same_view(out, x):
        raise ValueError(f"{name} overlaps x partially; pass {name}=x for in-place or a separate array")
    return out


# np.shares_memory solves an integer program whose worst case is exponential in the number of
# dimensions; 2**16 steps answer every realistic pair of views in microseconds, and a pair that
# is "too hard" is treated as overlapping (a clear ValueError instead of a hang).
MAX_OVERLAP_WORK = 1 << 16


def check_no_self_overlap(a, name):
    """An array the call writes must not have two elements at one address (zero strides,
    ``as_strided`` views): ValueError.  Sufficient test: with the dimensions sorted by
    |stride|, each stride must step over the whole extent spanned by the smaller ones."""
    if not isinstance(a, np.ndarray) or a.size <= 1 or a.flags.c_contiguous or a.flags.f_contiguous:
        return
    extent = a.itemsize
    for stride, n in sorted((abs(st), n) for n, st in zip(a.shape, a.strides) if n > 1):
        if stride < extent:
            raise ValueError(f"{name} has overlapping elements (zero or overlapping strides) and cannot be "
                             "written safely; pass an array without internal overlap")
        extent = stride * (n - 1) + extent


def _ptr(a):
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr


def _overlap(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        try:
            return np.shares_memory(a, b, max_work=MAX_OVERLAP_WORK)
        except np.exceptions.TooHardError:
            return True
    # device arrays: conservative extent test
    lo_a, lo_b = _ptr(a), _ptr(b)
    return lo_a < lo_b + b.nbytes and lo_b < lo_a + a.nbytes


def _same_view(a, b):
    return _ptr(a) == _ptr(b) and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype


def check_separate(fname, reads, writes):
    """Memory shared between the arrays of one call.

    writes : (name, array or None) pairs the call updates (out, residual_out, running stats...);
    reads : (name, array or None) pairs of x-sized inputs it reads.  Two written arrays may not
    share memory, and a read array may be a written one exactly (in place) but not overlap it
    otherwise: ValueError naming both.  Small parameters (weight, bias, saved statistics) need
    no check: they are copied before any kernel runs."""
    writes = [(n, a) for n, a in writes if isinstance(a, np.ndarray) or is_device_array(a)]
    for i, (na, a) in enumerate(writes):
        check_no_self_overlap(a, f"{fname}: {na}")
        for nb, b in writes[i + 1:]:
            if _overlap(a, b):
                raise ValueError(f"{fname}: {na} and {nb} share memory; pass separate arrays")
        for nr, r in reads:
            if type(r) is type(a) and r is not a and _overlap(a, r) and not _same_view(a, r):
                raise ValueError(f"{fname}: {na} overlaps {nr} partially; pass {na}={nr} (the same array, "
                                 "in place) or a separate array")


def check_buffer(buf, shape, name):
    """Running statistics buffers: writable float arrays of `shape`, updated in place."""
    if buf is None:
        return None
    if not isinstance(buf, np.ndarray) and not is_device_array(buf):
        raise TypeError(f"{name} must be an array or None, got {type(buf).__name__}")
    if buf.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {buf.dtype}")
    if tuple(buf.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(buf.shape)}")
    return buf


def check_writable(buf, name):
    if isinstance(buf, np.ndarray) and not buf.flags.writeable:
        raise ValueError(f"{name} is read-only but must be updated in place")
