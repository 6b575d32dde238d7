"""Layer objects holding parameters and running statistics, with torch-compatible state_dict keys.

    >>> bn = normfast.nn.BatchNorm(64)            # like torch.nn.BatchNorm2d(64), any spatial rank
    >>> y = bn(x)                                  # training mode: batch stats, running stats updated
    >>> gx = bn.backward(gy)                       # uses the statistics saved by the last forward
    >>> bn.grads["weight"], bn.grads["bias"]
    >>> bn.load_state_dict(torch_module.state_dict())   # tensors or arrays; same keys as torch

``device='cpu'`` creates NumPy parameters, ``device='cuda'`` CuPy ones; or pass an Array API
namespace as ``device``.
"""
import numpy as np

import normfast as _nf


def _xp(device):
    if device is None or device == "cpu":
        return np
    if device == "cuda":
        import cupy
        return cupy
    if hasattr(device, "asarray"):
        return device
    raise ValueError(f"device must be 'cpu', 'cuda' or an array namespace, got {device!r}")


def _to_host(v):
    if hasattr(v, "detach"):
        v = v.detach().cpu()
    if hasattr(v, "__dlpack__") and not isinstance(v, np.ndarray) and type(v).__module__.split(".")[0] != "cupy":
        return np.from_dlpack(v)
    if type(v).__module__.split(".")[0] == "cupy":
        return v.get()
    return np.asarray(v)


class _Norm:
    _params = ("weight", "bias")
    _buffers = ()

    def __init__(self, device=None, dtype=np.float32):
        self.xp = _xp(device)
        self.dtype = dtype
        self.training = True
        self.grads = {}
        self._saved = None

    def __getstate__(self):
        """Picklable and deep-copyable: the array namespace is stored by its module name."""
        state = self.__dict__.copy()
        state["xp"] = self.xp.__name__
        return state

    def __setstate__(self, state):
        import importlib
        state = dict(state)
        state["xp"] = importlib.import_module(state["xp"])
        self.__dict__.update(state)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _ones(self, n):
        return self.xp.ones(n, dtype=self.dtype)

    def _zeros(self, n, dtype=None):
        return self.xp.zeros(n, dtype=dtype or self.dtype)

    def state_dict(self):
        d = {}
        for k in self._params + self._buffers:
            v = getattr(self, k, None)
            if v is not None:
                d[k] = v
        return d

    def load_state_dict(self, state):
        """Copy entries (NumPy, CuPy, torch tensors...) into this layer's arrays; keys as torch."""
        expected = {k for k in self._params + self._buffers if getattr(self, k, None) is not None}
        missing = expected - set(state)
        unexpected = set(state) - expected
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
        new = {}
        for k in sorted(expected):            # check every entry before changing any (no partial load)
            cur = getattr(self, k)
            v = _to_host(state[k])
            if tuple(v.shape) != tuple(cur.shape):
                raise ValueError(f"load_state_dict: {k} must have shape {tuple(cur.shape)}, got {tuple(v.shape)}")
            if v.dtype.kind not in "fiub":
                raise TypeError(f"load_state_dict: {k} must be a real array, got dtype {v.dtype}")
            new[k] = self.xp.asarray(v.astype(cur.dtype))
        for k, v in new.items():
            getattr(self, k)[...] = v
        return self


class LayerNorm(_Norm):
    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
                 dtype=np.float32):
        super().__init__(device, dtype)
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = self._ones(self.normalized_shape) if elementwise_affine else None
        self.bias = self._zeros(self.normalized_shape) if elementwise_affine and bias else None

    def __call__(self, x):
        y, mean, rstd = _nf.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, return_stats=True)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, grad_out):
        x, mean, rstd = self._saved
        gx, gw, gb = _nf.layer_norm_backward(grad_out, x, mean, rstd, self.normalized_shape, self.weight)
        self.grads = {"weight": gw, "bias": gb if self.bias is not None else None}
        return gx


class RMSNorm(_Norm):
    _params = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=np.float32):
        super().__init__(device, dtype)
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = self._ones(self.normalized_shape) if elementwise_affine else None

    def __call__(self, x):
        y, rstd = _nf.rms_norm(x, self.normalized_shape, self.weight, self.eps, return_stats=True)
        self._saved = (x, rstd)
        return y

    def backward(self, grad_out):
        x, rstd = self._saved
        gx, gw = _nf.rms_norm_backward(grad_out, x, rstd, self.normalized_shape, self.weight)
        self.grads = {"weight": gw}
        return gx


class GroupNorm(_Norm):
    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, channel_axis=1, device=None,
                 dtype=np.float32):
        super().__init__(device, dtype)
        for name, v in (("num_groups", num_groups), ("num_channels", num_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GroupNorm: {name} must be a positive int, got {v!r}")
        if num_channels % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_groups, self.eps, self.channel_axis = num_groups, eps, channel_axis
        self.weight = self._ones(num_channels) if affine else None
        self.bias = self._zeros(num_channels) if affine else None

    def __call__(self, x):
        y, mean, rstd = _nf.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                       channel_axis=self.channel_axis, return_stats=True)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, grad_out):
        x, mean, rstd = self._saved
        gx, gw, gb = _nf.group_norm_backward(grad_out, x, mean, rstd, self.num_groups, self.weight,
                                             channel_axis=self.channel_axis)
        self.grads = {"weight": gw, "bias": gb}
        return gx


class _RunningNorm(_Norm):
    _buffers = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, channel_axis, device, dtype):
        super().__init__(device, dtype)
        self.num_features, self.eps, self.momentum, self.channel_axis = num_features, eps, momentum, channel_axis
        self.weight = self._ones(num_features) if affine else None
        self.bias = self._zeros(num_features) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.running_mean = self._zeros(num_features)
            self.running_var = self._ones(num_features)
            self.num_batches_tracked = np.zeros((), dtype=np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None


class BatchNorm(_RunningNorm):
    """torch.nn.BatchNorm1d/2d/3d in one class (any spatial rank, ``channel_axis`` 1 or -1)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 channel_axis=1, device=None, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, channel_axis, device, dtype)

    def __call__(self, x):
        use_batch = self.training or self.running_mean is None
        y, mean, rstd = _nf.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, use_batch, self.momentum, self.eps,
            channel_axis=self.channel_axis, return_stats=True,
            num_batches_tracked=self.num_batches_tracked if self.training and self.track_running_stats else None)
        self._saved = (x, mean, rstd, use_batch)
        return y

    def backward(self, grad_out):
        x, mean, rstd, use_batch = self._saved
        gx, gw, gb = _nf.batch_norm_backward(grad_out, x, mean, rstd, self.weight, use_batch,
                                             channel_axis=self.channel_axis)
        self.grads = {"weight": gw, "bias": gb}
        return gx


class InstanceNorm(_RunningNorm):
    """torch.nn.InstanceNorm1d/2d/3d (defaults affine=False, track_running_stats=False, as torch)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 channel_axis=1, device=None, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, channel_axis, device, dtype)

    def __call__(self, x):
        use_input = self.training or self.running_mean is None
        y, mean, rstd = _nf.instance_norm(x, self.running_mean if self.training or not use_input else None,
                                          self.running_var if self.training or not use_input else None,
                                          self.weight, self.bias, use_input, self.momentum, self.eps,
                                          channel_axis=self.channel_axis, return_stats=True)
        self._saved = (x, mean, rstd, use_input)     # (torch's InstanceNorm never bumps num_batches_tracked)
        return y

    def backward(self, grad_out):
        x, mean, rstd, use_input = self._saved
        if not use_input:
            raise NotImplementedError("InstanceNorm.backward with running statistics (eval mode) is not provided")
        gx, gw, gb = _nf.instance_norm_backward(grad_out, x, mean, rstd, self.weight, channel_axis=self.channel_axis)
        self.grads = {"weight": gw, "bias": gb}
        return gx
