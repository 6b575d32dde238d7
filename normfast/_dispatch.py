"""One API for every array type.

The backend is picked from the type of the first array argument:
  numpy.ndarray                      -> CPU kernels (no conversion at all)
  dask.array.Array                   -> normfast.dask (lazy, chunk-wise kernels)
  cupy.ndarray / CUDA DLPack tensors -> CuPy (GPU)
  CPU DLPack objects (torch, JAX...) -> zero-copy NumPy view (np.from_dlpack), CPU kernels,
                                        results returned as the caller's type (zero-copy back)
  other Array API arrays             -> portable implementation (normfast._portable)
Other array arguments (weight, bias, running stats, out, ...) are converted the same way;
a tensor on another device than x is rejected with TypeError, never moved silently.
Nothing here imports torch, CuPy or Dask unless such an array arrives.
"""
import functools
import sys

import numpy as np

DL_CPU, DL_CUDA = 1, 2


def _module(obj):
    return type(obj).__module__.split(".", 1)[0]


def get_backend(x):
    """The backend a call with ``x`` would use.

    Parameters
    ----------
    x : object
        The first array argument of a call.

    Returns
    -------
    str
        'numpy', 'dask', 'cupy', 'dlpack-cpu' (torch, JAX, ... through DLPack) or 'array-api'.

    Raises
    ------
    TypeError
        x is not an array of a supported kind.

    Examples
    --------
    >>> import numpy as np, normfast as nf
    >>> nf.get_backend(np.ones(3))
    'numpy'
    """
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = _module(x)
    if mod == "dask":
        return "dask"
    if mod == "cupy":
        return "cupy"
    if mod == "torch" and x.device.type != "cuda":   # meta/sparse: a clear error from _torch_to_numpy
        return "dlpack-cpu"
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        try:
            dev = x.__dlpack_device__()[0]
        except Exception:
            dev = None
        if dev == DL_CPU:
            return "dlpack-cpu"
        if dev == DL_CUDA and "cupy" in _available_modules():
            return "cupy"
    if hasattr(x, "__array_namespace__"):
        return "array-api"
    if isinstance(x, (list, tuple)):
        return "numpy"
    raise TypeError(f"x must be an array (NumPy, CuPy, torch, Dask or Array API), got {type(x).__name__}")


def _available_modules():
    import importlib.util
    return {m for m in ("torch", "cupy", "dask", "array_api_compat", "jax")
            if m in sys.modules or importlib.util.find_spec(m) is not None}


def backends():
    """Backends available in this environment.

    Returns
    -------
    list of str
        'numpy' always; 'cupy' with a usable CUDA device; 'torch', 'dask', 'array-api' when importable.

    Examples
    --------
    >>> import normfast as nf
    >>> nf.backends()[0]
    'numpy'
    """
    found = ["numpy"]
    mods = _available_modules()
    if "cupy" in mods:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() > 0:
                found.append("cupy")
        except Exception:
            pass
    if "torch" in mods:
        found.append("torch")
    if "dask" in mods:
        found.append("dask")
    if "array_api_compat" in mods:
        found.append("array-api")
    return found


def _device_of(v):
    try:
        return v.__dlpack_device__()[0]
    except Exception:
        return None


def _detached(v):
    """torch tensors that require grad cannot be exported through DLPack: export their data."""
    return v.detach() if _module(v) == "torch" and getattr(v, "requires_grad", False) else v


def to_numpy(v, name, dev):
    """Zero-copy NumPy view of a CPU DLPack object (torch tensors are detached first)."""
    if v is None or isinstance(v, (np.ndarray, int, float, bool, str, tuple, list, slice)):
        return v
    if not hasattr(v, "__dlpack__"):
        return v
    if _module(v) == "torch" and dev == DL_CPU:
        return _torch_to_numpy(v, name)
    d = _device_of(v)
    if d != dev:
        raise TypeError(f"{name} is on another device than x (DLPack device {d} vs {dev}); move it first")
    return np.from_dlpack(_detached(v))


def _torch_to_numpy(t, name):
    """Zero-copy NumPy view of a CPU torch tensor; a tensor with the negative or conjugate
    bit is resolved first (one copy: the view alone would read the wrong values)."""
    if str(t.layout) != "torch.strided" or t.is_meta or t.device.type != "cpu":
        what = "a meta tensor (it has no data)" if t.is_meta else f"a {t.layout} tensor on {t.device}"
        raise TypeError(f"{name} is {what}; normfast needs a dense CPU tensor (e.g. .to_dense() / .cpu())")
    if str(t.dtype) == "torch.bfloat16":
        raise TypeError(f"{name} is bfloat16, which the NumPy kernels cannot read; use normfast.torch's "
                        "functions or modules (bfloat16 supported) or convert to float32")
    t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_conj():
        t = t.resolve_conj()
    return np.from_dlpack(t)


def _wrap_back(res, views, ours, convert):
    """Results of our array type (`ours`) -> the caller's: an argument's view comes back as the
    caller's own object (e.g. out=), any other result through `convert` (zero-copy DLPack)."""
    if isinstance(res, tuple):
        return tuple(_wrap_back(r, views, ours, convert) for r in res)
    if not ours(res):
        return res
    for view, orig in views:
        if res is view:
            return orig
    return convert(res)


def _to_caller_cpu(x, fname):
    """NumPy -> x's array type, on x's device (Array API arrays need array-api-compat: without
    it the call is refused before any work, never answered with NumPy arrays).  A result the
    caller's library stores in a narrower dtype (JAX without x64: float64 statistics in
    float32) comes back with a warning, not silently truncated."""
    if _module(x) == "torch":
        import torch
        return torch.from_dlpack
    try:
        import array_api_compat
    except ImportError:
        raise TypeError(f"{fname}: results for {type(x).__module__}.{type(x).__name__} arrays need "
                        "array-api-compat: pip install array-api-compat (or pass NumPy arrays)") from None
    xp = array_api_compat.array_namespace(x)
    device = getattr(x, "device", None)

    def convert(res):
        r = xp.from_dlpack(np.ascontiguousarray(res))      # (JAX takes compact strides only)
        if device is not None and getattr(r, "device", device) != device:
            r = array_api_compat.to_device(r, device)
        if getattr(r, "dtype", None) is not None and np.dtype(res.dtype).itemsize > getattr(r.dtype, "itemsize", 8):
            import warnings
            warnings.warn(f"{fname}: a {res.dtype} result was stored as {r.dtype} by {xp.__name__} (for JAX: "
                          "enable x64 to keep float64 statistics)", RuntimeWarning, stacklevel=4)
        return r
    return convert


def _check_same_device(v, x, name):
    """Array API arrays (not torch: DLPack says its device) on another device than x: TypeError."""
    dx, dv = getattr(x, "device", None), getattr(v, "device", None)
    if dx is not None and dv is not None and _module(v) == _module(x) and _module(x) != "torch" and dv != dx:
        raise TypeError(f"{name} is on device {dv}, x on {dx}: move it to x's device first")


def _torch_route(fn, args, kwargs, x):
    """A torch call that needs autograd (a tensor requires grad), bfloat16 or the registered ops
    (torch.compile / torch.export tracing): normfast.torch."""
    import torch
    if x.dtype is torch.bfloat16 or torch.compiler.is_compiling() or torch.is_grad_enabled() and any(
            getattr(a, "requires_grad", False) for a in (*args, *kwargs.values())):
        from .torch import _route
        return _route.call(fn.__name__, args, kwargs)
    return NotImplemented


def _route_dlpack(fn, args, kwargs, x):
    if _module(x) == "torch":
        res = _torch_route(fn, args, kwargs, x)
        if res is not NotImplemented:
            return res
    dev = DL_CPU
    views = []
    convert = _to_caller_cpu(x, fn.__name__)

    def conv(v, name):
        _check_same_device(v, x, name)
        nv = to_numpy(v, name, dev)
        if isinstance(nv, np.ndarray):
            views.append((nv, v))     # a caller's NumPy array (e.g. out=) comes back as itself
        return nv

    nargs = [conv(a, f"argument {i}") for i, a in enumerate(args)]
    nkw = {k: conv(v, k) for k, v in kwargs.items()}
    return _wrap_back(fn(*nargs, **nkw), views, lambda r: isinstance(r, np.ndarray), convert)


def _route_cupy(fn, args, kwargs, x):
    if _module(x) != "cupy":                      # a CUDA DLPack tensor (e.g. torch on CUDA)
        import cupy
        views = []

        def conv(v):
            if v is not None and hasattr(v, "__dlpack__") and _module(v) != "cupy" and not isinstance(v, np.ndarray):
                c = cupy.from_dlpack(_detached(v))
                views.append((c, v))
                return c
            return v
        res = _route_cupy(fn, [conv(a) for a in args], {k: conv(v) for k, v in kwargs.items()}, conv(x))
        import torch
        return _wrap_back(res, views, lambda r: _module(r) == "cupy", torch.from_dlpack)
    try:
        from ._gpu import dispatch as gpu_dispatch
    except ImportError:
        return _route_portable(fn, args, kwargs)
    return gpu_dispatch.call(fn, args, kwargs, x)


def _route_dask(fn, args, kwargs):
    from . import dask as nf_dask
    impl = getattr(nf_dask, fn.__name__, None)
    if impl is None:
        raise TypeError(f"{fn.__name__} does not accept Dask arrays; compute the array first")
    return impl(*args, **kwargs)


def _route_portable(fn, args, kwargs):
    from . import _portable
    impl = _portable.FORWARD.get(fn.__name__)
    if impl is None:
        raise TypeError(f"{fn.__name__}: this array type is only supported for forward operations "
                        "(convert to NumPy, torch or CuPy for gradients)")
    return impl(*args, **kwargs)


def _named(fname, err):
    """The same exception with the public function's name in front (argument checks deep in
    the call name the argument; this names the function), chained to the original."""
    msg = str(err)
    if type(err) not in (TypeError, ValueError) or msg.startswith(fname):
        return err
    new = type(err)(f"{fname}: {msg}")
    new.__cause__ = err.__cause__
    return new


def dispatch(position=0):
    """Decorator: route by the type of the array argument at `position` (x)."""
    def deco(fn):
        fname = fn.__name__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return _route(args, kwargs)
            except (TypeError, ValueError) as err:
                new = _named(fname, err)
                if new is err:
                    raise
                raise new from None

        def _route(args, kwargs):
            x = args[position] if len(args) > position else kwargs.get("x", kwargs.get("h"))
            if type(x) is np.ndarray:
                return fn(*args, **kwargs)
            if isinstance(x, np.generic):           # NumPy scalars: 0-d arrays
                args = list(args)
                if len(args) > position:
                    args[position] = np.asarray(x)
                else:
                    kwargs["x" if "x" in kwargs else "h"] = np.asarray(x)
                return fn(*args, **kwargs)
            kind = get_backend(x)
            if kind == "numpy":
                return fn(*args, **kwargs)
            if kind == "dask":
                return _route_dask(fn, args, kwargs)
            if kind == "cupy":
                return _route_cupy(fn, args, kwargs, x)
            if kind == "dlpack-cpu":
                return _route_dlpack(fn, args, kwargs, x)
            return _route_portable(fn, args, kwargs)
        wrapper.__wrapped__ = fn
        wrapper.__module__ = "normfast"      # public name: pickles by reference as normfast.<name>
        return wrapper
    return deco


def with_fast_path(general, rms):
    """layer_norm / rms_norm: the C-level fast path of the common call (contiguous float32/64
    NumPy or torch CPU input, see normfast._cpu._normalize.rows_fast) first, the dispatched
    general path (every check, every array type) when it declines."""
    from ._cpu._normalize import rows_fast

    if rms:
        @functools.wraps(general)
        def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
            r = rows_fast(x, normalized_shape, weight, None, eps, out, return_stats, True)
            if r is NotImplemented:
                return general(x, normalized_shape, weight, eps, out=out, return_stats=return_stats)
            return r
        return rms_norm

    @functools.wraps(general)
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
        r = rows_fast(x, normalized_shape, weight, bias, eps, out, return_stats, False)
        if r is NotImplemented:
            return general(x, normalized_shape, weight, bias, eps, out=out, return_stats=return_stats)
        return r
    return layer_norm
