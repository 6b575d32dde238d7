"""A small CuPy stand-in whose kernels run in the emulator (test-only).

`make_module()` returns a module object named ``cupy``; the GPU tests put it in
``sys.modules["cupy"]`` while they run, so every ``import cupy`` (the GPU engine,
the dispatcher's GPU route, normfast's running-stat update) gets it, and the real
planning / launch code of normfast/_gpu/engine.py runs unchanged.

What it models, and checks more strictly than CuPy does:
- Device memory: every array lives in emulator memory (nf_emu_alloc: 256-byte
  aligned like cudaMalloc, a guard page after it, canary bytes in the slack; fresh
  `empty` memory is filled with NaN bytes).  Host <-> device moves are explicit, as
  with CuPy: `np.asarray(device_array)` raises TypeError, so does arithmetic between a
  device array and a NumPy array.
- RawModule(code, options, name_expressions): the code must be the source the
  emulator was built from; get_function takes a name expression or an extern "C"
  name; a launch checks the block against the kernel's __launch_bounds__, the grid
  and block limits, and every argument against the kernel's C++ parameter types
  (numpy scalars: int64 / int32 / uint64 / float64 ...; Python numbers and NumPy
  arrays are refused).  Launches are synchronous and recorded in `launches`.
- One device with `EMU_SMS` multiprocessors (3 by default: small grids, so
  grid-stride loops and multi-block reductions run at small sizes).
Only the API normfast and its tests use is provided; anything else raises
AttributeError, which is the point: a new CuPy call has to be added here on purpose.
"""
import ctypes
import numbers
import operator
import os
import re
import time
import types
import weakref

import numpy as np

from . import build

EMU_SMS = int(os.environ.get("NF_EMU_SMS", "3"))
POISON_MAX = 64 << 20          # fill fresh `empty` buffers up to this size with NaN bytes


class EmulatorError(RuntimeError):
    """A kernel launch the device would reject or that misbehaved (bad arguments, invalid
    memory access, divergent barrier, ...)."""


# ------------------------------------------------------------------ library

class _Lib:
    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        lib.nf_emu_alloc.restype = ctypes.c_void_p
        lib.nf_emu_alloc.argtypes = [ctypes.c_size_t]
        lib.nf_emu_free.restype = ctypes.c_int
        lib.nf_emu_free.argtypes = [ctypes.c_void_p]
        lib.nf_emu_error.restype = ctypes.c_char_p
        lib.nf_emu_kernel_names.restype = ctypes.c_char_p
        lib.nf_emu_launch.restype = ctypes.c_int
        lib.nf_emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                      ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        self.lib = lib
        self.names = set(n for n in lib.nf_emu_kernel_names().decode().split("\n") if n)

    def error(self):
        return self.lib.nf_emu_error().decode()


_LIB = None


def _lib():
    global _LIB
    if _LIB is None:
        _LIB = _Lib(build.library_path())
    return _LIB


class _Memory:
    """One device allocation (freed when the last array using it goes)."""

    __slots__ = ("ptr", "nbytes", "buf", "__weakref__")

    def __init__(self, nbytes):
        lib = _lib().lib
        ptr = lib.nf_emu_alloc(max(0, int(nbytes)))
        if not ptr:
            raise MemoryError(f"emulator: cannot allocate {nbytes} bytes")
        self.ptr, self.nbytes = ptr, int(nbytes)
        self.buf = (ctypes.c_char * max(1, self.nbytes)).from_address(ptr)
        weakref.finalize(self, lib.nf_emu_free, ptr)


class MemoryPointer:
    def __init__(self, mem, ptr):
        self.mem, self.ptr = mem, ptr


class _Flags:
    def __init__(self, a):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = False

    def __getitem__(self, k):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous}[k]


def _new(shape, dtype, poison=True):
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mem = _Memory(nbytes)
    a = np.ndarray(shape, dtype=dtype, buffer=mem.buf, offset=0) if nbytes else np.empty(shape, dtype)
    if poison and 0 < nbytes <= POISON_MAX:
        a.view(np.uint8).reshape(-1)[...] = 0xFF
    return ndarray._wrap(a, mem)


def _ptr(a):
    return a.__array_interface__["data"][0]


class ndarray:
    """Device array: a NumPy view of emulator memory, with CuPy's explicit transfers."""

    __module__ = "cupy"
    __array_priority__ = 100

    @classmethod
    def _wrap(cls, a, mem):
        self = object.__new__(cls)
        self._a, self._mem = a, mem
        return self

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("emulator ndarray(): memptr / strides")
        t = _new(shape, dtype)
        self._a, self._mem = t._a, t._mem

    # views of the same memory stay device arrays; anything NumPy copied is moved back
    def _view(self, a):
        if a.size == 0 or self._mem.nbytes == 0:
            return self._wrap(a, self._mem) if a.base is not None else _from_host(a)
        lo, hi = self._mem.ptr, self._mem.ptr + self._mem.nbytes
        if not a.flags.owndata and lo <= _ptr(a) < hi:
            return self._wrap(a, self._mem)
        return _from_host(a)

    # ---- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: MemoryPointer(self._mem, _ptr(self._a)))
    device = property(lambda self: cuda.Device(0))
    T = property(lambda self: self._view(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"emulated cupy.ndarray({self._a!r})"

    # ---- no implicit host conversion (as CuPy)
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types_, args, kwargs):
        impl = _MODULE_FUNCS.get(func.__name__)
        if impl is None:
            return NotImplemented
        return impl(*args, **kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or ufunc.__name__ not in _UFUNCS:
            return NotImplemented
        return _ufunc(ufunc, *inputs, **kwargs)

    def get(self, stream=None, order="C", out=None):
        return np.array(self._a, order=order)

    def item(self):
        return self._a.item()

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def tolist(self):
        return self._a.tolist()

    # ---- shape / views
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = tuple(shape[0])
        v = self._a.view()
        try:
            v.shape = np.empty(self._a.shape, np.bool_).reshape(shape, order=order).shape
            return self._wrap(v, self._mem) if order == "C" else self._view(self._a.reshape(shape, order=order))
        except AttributeError:
            return ascontiguousarray(self).reshape(*shape)

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def transpose(self, *axes):
        return self._view(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return self._view(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return self._view(self._a.squeeze(axis))

    def view(self, dtype=None):
        return self._wrap(self._a.view() if dtype is None else self._a.view(dtype), self._mem)

    def __getitem__(self, idx):
        idx = _host_index(idx)
        r = self._a[idx]
        if not isinstance(r, np.ndarray):                 # a scalar: CuPy gives a 0-d array
            return _from_host(np.array(r, dtype=self._a.dtype))
        return self._view(r)

    def __setitem__(self, idx, value):
        self._a[_host_index(idx)] = _operand(value, allow_host_array=True)

    # ---- copies / conversions
    def copy(self, order="C"):
        out = _new(self.shape, self.dtype, poison=False)
        out._a[...] = self._a
        return out

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        dtype = np.dtype(dtype)
        if not copy and dtype == self.dtype:
            return self
        out = _new(self.shape, dtype, poison=False)
        out._a[...] = self._a.astype(dtype)
        return out

    def fill(self, value):
        self._a.fill(value)

    # ---- arithmetic (device op device / scalar; a NumPy operand is refused as by CuPy)
    def _bin(self, op, other, reflect=False):
        o = _operand(other)
        r = op(o, self._a) if reflect else op(self._a, o)
        return _from_host(np.asarray(r))

    def _ibin(self, op, other):
        o = _operand(other)
        op(self._a, o)
        return self

    __add__ = lambda s, o: s._bin(operator.add, o)
    __radd__ = lambda s, o: s._bin(operator.add, o, True)
    __sub__ = lambda s, o: s._bin(operator.sub, o)
    __rsub__ = lambda s, o: s._bin(operator.sub, o, True)
    __mul__ = lambda s, o: s._bin(operator.mul, o)
    __rmul__ = lambda s, o: s._bin(operator.mul, o, True)
    __truediv__ = lambda s, o: s._bin(operator.truediv, o)
    __rtruediv__ = lambda s, o: s._bin(operator.truediv, o, True)
    __pow__ = lambda s, o: s._bin(operator.pow, o)
    __eq__ = lambda s, o: s._bin(operator.eq, o)
    __ne__ = lambda s, o: s._bin(operator.ne, o)
    __lt__ = lambda s, o: s._bin(operator.lt, o)
    __le__ = lambda s, o: s._bin(operator.le, o)
    __gt__ = lambda s, o: s._bin(operator.gt, o)
    __ge__ = lambda s, o: s._bin(operator.ge, o)
    __iadd__ = lambda s, o: s._ibin(operator.iadd, o)
    __isub__ = lambda s, o: s._ibin(operator.isub, o)
    __imul__ = lambda s, o: s._ibin(operator.imul, o)
    __itruediv__ = lambda s, o: s._ibin(operator.itruediv, o)
    __neg__ = lambda s: _from_host(-s._a)
    __abs__ = lambda s: _from_host(np.abs(s._a))
    __hash__ = None

    def max(self, axis=None):
        return _from_host(np.asarray(self._a.max(axis=axis)))

    def min(self, axis=None):
        return _from_host(np.asarray(self._a.min(axis=axis)))

    def sum(self, axis=None, dtype=None):
        return _from_host(np.asarray(self._a.sum(axis=axis, dtype=dtype)))

    def all(self):
        return _from_host(np.asarray(self._a.all()))

    def any(self):
        return _from_host(np.asarray(self._a.any()))


def _host_index(idx):
    if isinstance(idx, ndarray):
        return idx._a
    if isinstance(idx, tuple):
        return tuple(i._a if isinstance(i, ndarray) else i for i in idx)
    return idx


def _operand(v, allow_host_array=False):
    if isinstance(v, ndarray):
        return v._a
    if isinstance(v, np.ndarray):
        if allow_host_array:
            return v
        raise TypeError(f"Unsupported type {type(v)}")
    if isinstance(v, (numbers.Number, np.generic)):
        return v
    if allow_host_array and isinstance(v, (list, tuple)):
        return np.asarray(v)
    raise TypeError(f"Unsupported type {type(v)}")


def _from_host(a, dtype=None):
    """A device copy of host data."""
    a = np.asarray(a, dtype=dtype)
    out = _new(a.shape, a.dtype, poison=False)
    out._a[...] = a
    return out


# ------------------------------------------------------------------ module functions

def asarray(a, dtype=None, order=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return _from_host(a, dtype)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        return a.astype(a.dtype if dtype is None else dtype)
    return _from_host(a, dtype)


def ascontiguousarray(a, dtype=None):
    a = asarray(a)
    dt = a.dtype if dtype is None else np.dtype(dtype)
    if a._a.flags.c_contiguous and dt == a.dtype:
        return a
    out = _new(a.shape, dt, poison=False)
    out._a[...] = a._a
    return out


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a, order=order)


def empty(shape, dtype=float, order="C"):
    return _new(shape, dtype)


def zeros(shape, dtype=float, order="C"):
    return _new(shape, dtype, poison=False)    # fresh pages are zero: a huge buffer stays sparse


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype)


def full(shape, fill_value, dtype=None, order="C"):
    out = _new(shape, np.float64 if dtype is None else dtype, poison=False)
    out._a[...] = fill_value
    return out


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return zeros(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return ones(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    return full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype)


def arange(*args, dtype=None):
    return _from_host(np.arange(*args, dtype=dtype))


def copyto(dst, src, casting="same_kind", where=True):
    if not isinstance(dst, ndarray):
        raise TypeError("copyto: dst must be a cupy.ndarray")
    np.copyto(dst._a, _operand(src), casting=casting, where=_operand(where))


_UFUNCS = {"add", "subtract", "multiply", "true_divide", "divide", "negative", "absolute", "sqrt", "maximum",
           "minimum", "isnan", "isfinite", "equal", "less", "greater"}


def _ufunc(uf, *inputs, out=None, **kwargs):
    ops = [_operand(i) for i in inputs]
    if out is not None:
        o = out[0] if isinstance(out, tuple) else out
        if o is not None:
            if not isinstance(o, ndarray):
                raise TypeError("out must be a cupy.ndarray")
            uf(*ops, out=o._a, **kwargs)
            return o
    return _from_host(np.asarray(uf(*ops, **kwargs)))


def _make_ufunc(name):
    uf = getattr(np, name)

    def f(*inputs, out=None, **kwargs):
        return _ufunc(uf, *inputs, out=out, **kwargs)
    f.__name__ = name
    return f


# ------------------------------------------------------------------ cuda namespace

class _Device:
    def __init__(self, device=None):
        if device not in (None, 0):
            raise ValueError("the emulator has one device (0)")
        self.id = 0
        self.attributes = {"MultiProcessorCount": EMU_SMS, "MaxThreadsPerBlock": 1024,
                           "MaxSharedMemoryPerBlock": 48 << 10, "WarpSize": 32}
        self.compute_capability = "90"

    @property
    def mem_info(self):
        return (64 << 30, 64 << 30)

    def synchronize(self):
        pass

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    def synchronize(self):
        pass

    ptr = 0


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


class _RuntimeNS:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def runtimeGetVersion():
        return 12090

    @staticmethod
    def getDeviceProperties(dev):
        return {"name": b"normfast CUDA emulator", "multiProcessorCount": EMU_SMS}


cuda = types.SimpleNamespace(Device=_Device, Event=_Event, get_elapsed_time=_elapsed, runtime=_RuntimeNS(),
                             Stream=types.SimpleNamespace(null=_Stream()), get_current_stream=lambda: _Stream())


# ------------------------------------------------------------------ kernels

_ARG_CODES = {np.dtype(np.int64): b"q", np.dtype(np.int32): b"i", np.dtype(np.uint64): b"Q",
              np.dtype(np.uint32): b"I", np.dtype(np.float64): b"d", np.dtype(np.float32): b"f",
              np.dtype(np.bool_): b"?"}


def _launch_bounds(code):
    """{kernel name: max threads per block} from the __launch_bounds__ of the source."""
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"__launch_bounds__\(\s*(\d+)[^)]*\)\s*(\w+)\s*\(", code)}


class _Function:
    def __init__(self, name, max_threads=1024):
        self.name, self.max_threads = name, max_threads

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if not isinstance(grid, tuple) or not isinstance(block, tuple) or not isinstance(args, tuple):
            raise TypeError("grid, block and args must be tuples")
        g = [int(v) for v in grid] + [1] * (3 - len(grid))
        b = [int(v) for v in block] + [1] * (3 - len(block))
        if len(g) != 3 or len(b) != 3:
            raise ValueError("grid / block: at most 3 dimensions")
        if b[0] * b[1] * b[2] > self.max_threads:
            raise EmulatorError(f"{self.name}: block of {b[0] * b[1] * b[2]} threads exceeds its "
                                f"__launch_bounds__({self.max_threads}) (too many resources requested for launch)")
        if shared_mem:
            raise EmulatorError(f"{self.name}: dynamic shared memory is not emulated")
        slots = (ctypes.c_uint64 * max(1, len(args)))()
        codes = bytearray()
        keep = []
        for i, a in enumerate(args):
            if isinstance(a, ndarray):
                slots[i] = _ptr(a._a) if a.nbytes else a._mem.ptr
                codes += b"P"
                keep.append(a)
            elif isinstance(a, np.generic) and a.dtype in _ARG_CODES:
                slots[i] = int.from_bytes(a.tobytes(), "little")
                codes += _ARG_CODES[a.dtype]
            else:
                raise TypeError(f"{self.name}: argument {i} has an unsupported type {type(a).__name__} "
                                "(use a cupy.ndarray or a NumPy scalar of the parameter's exact type)")
        gu = (ctypes.c_uint * 3)(*g)
        bu = (ctypes.c_uint * 3)(*b)
        lib = _lib()
        STATE["launches"].append(self.name)
        rc = lib.lib.nf_emu_launch(self.name.encode(), gu, bu, slots, bytes(codes), len(args),
                                   1 if STATE["reverse"] else 0)
        if rc:
            raise EmulatorError(lib.error())


class RawModule:
    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("emulator RawModule: only code=")
        if code != build._kernels().source():
            raise EmulatorError("RawModule code is not the source the emulator was built from")
        if not all(isinstance(o, str) for o in options):
            raise TypeError("options must be strings")
        lib = _lib()
        self.names = set(name_expressions or ())
        missing = [n for n in self.names if n not in lib.names]
        if missing:
            raise EmulatorError(f"not compiled into the emulator: {missing[:3]}")
        self.bounds = _launch_bounds(code)
        self.extern_c = set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
                                       r"(\w+)\s*\(", code))

    def get_function(self, name):
        if name not in self.names and name not in self.extern_c:
            raise EmulatorError(f"get_function({name!r}): not a name expression of this module")
        if name not in _lib().names:
            raise EmulatorError(f"{name!r} is not compiled into the emulator")
        return _Function(name, self.bounds.get(name.split("<", 1)[0], 1024))


def kernel(name, max_threads=1024):
    """A launcher for any kernel compiled into the emulator (the self-test kernels)."""
    if name not in _lib().names:
        raise EmulatorError(f"{name!r} is not compiled into the emulator")
    return _Function(name, max_threads)


# ------------------------------------------------------------------ the module

STATE = {"launches": [], "reverse": os.environ.get("NF_EMU_ORDER", "") == "reverse"}

_MODULE_FUNCS = {}


def make_module():
    """A fresh `cupy` module object over the emulator (builds / loads the library)."""
    _lib()
    m = types.ModuleType("cupy", "normfast's CUDA emulator posing as CuPy (tests/cuda_emu)")
    m.__version__ = "0+emulator"
    m.__file__ = __file__
    names = ["ndarray", "asarray", "array", "ascontiguousarray", "asnumpy", "empty", "zeros", "ones", "full",
             "empty_like", "zeros_like", "ones_like", "full_like", "arange", "copyto", "RawModule", "cuda",
             "EmulatorError"]
    g = globals()
    for n in names:
        setattr(m, n, g[n])
    for n in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
              "bool_", "dtype", "result_type", "isscalar"):
        setattr(m, n, getattr(np, n))
    for n in _UFUNCS:
        setattr(m, n, _make_ufunc(n))
    m.abs = m.absolute
    m.get_array_module = lambda *args: m if any(isinstance(a, ndarray) for a in args) else np
    m.emulator = STATE
    _MODULE_FUNCS.clear()
    _MODULE_FUNCS.update({n: getattr(m, n) for n in dir(m) if callable(getattr(m, n)) and not n.startswith("_")})
    return m
