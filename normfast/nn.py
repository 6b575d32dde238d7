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
from ._docs import fill


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
    """What every layer has: its parameters and buffers, the training mode, ``state_dict``, and
    the statistics of the last call, kept for :meth:`backward`."""

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

    def __call__(self, x):
        """Normalize ``x``; the statistics are kept for :meth:`backward`.

        Parameters
        ----------
        x : array of float16, float32 or float64
            NumPy, CuPy or Array API array (as the parameters), laid out as the functional form
            of the layer takes it (``normfast.layer_norm``, ``normfast.batch_norm``, ...).

        Returns
        -------
        y : array like x

        Raises
        ------
        TypeError, ValueError
            As the functional form: non-floating input, shapes that do not match the layer.
        """
        raise NotImplementedError

    def backward(self, grad_out):
        """Gradient of the last call's input; the parameter gradients go to ``self.grads``.

        Parameters
        ----------
        grad_out : array like the last call's output
            Gradient of the loss with respect to that output.

        Returns
        -------
        grad_x : array like the last call's input

        Raises
        ------
        TypeError, ValueError
            No call before, or ``grad_out`` not like the last output.
        """
        raise NotImplementedError

    def train(self, mode=True):
        """Set training mode (batch statistics, running statistics updated) or eval mode.

        Parameters
        ----------
        mode : bool, default True

        Returns
        -------
        self
            The layer, for chaining (``layer = nn.BatchNorm(64).train()``).

        Examples
        --------
        >>> import normfast.nn as nn
        >>> bn = nn.BatchNorm(3).train(False)
        >>> bn.training
        False
        """
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode, ``train(False)``: normalize with the running statistics.

        Returns
        -------
        self
            The layer, with ``training`` False.

        Examples
        --------
        >>> import normfast.nn as nn
        >>> nn.LayerNorm(8).eval().training
        False
        """
        return self.train(False)

    def _ones(self, n):
        return self.xp.ones(n, dtype=self.dtype)

    def _zeros(self, n, dtype=None):
        return self.xp.zeros(n, dtype=dtype or self.dtype)

    def state_dict(self):
        """The parameters and buffers by torch's names (the arrays themselves, not copies).

        Returns
        -------
        dict of str to array
            ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``
            (those the layer has).

        Examples
        --------
        >>> import normfast.nn as nn
        >>> sorted(nn.BatchNorm(3).state_dict())
        ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
        """
        d = {}
        for k in self._params + self._buffers:
            v = getattr(self, k, None)
            if v is not None:
                d[k] = v
        return d

    def load_state_dict(self, state):
        """Copy the entries of ``state`` into this layer's arrays (in place, cast to their dtype).

        Parameters
        ----------
        state : mapping of str to array
            Exactly the keys of :meth:`state_dict`; NumPy or CuPy arrays, torch tensors (a
            ``torch.nn`` module's ``state_dict()`` loads as it is), anything ``numpy.asarray`` takes.

        Returns
        -------
        self

        Raises
        ------
        KeyError
            Missing or unexpected keys.
        ValueError
            An entry of the wrong shape.
        TypeError
            An entry that is not a real array.  Nothing is changed when anything is raised.

        Examples
        --------
        >>> import numpy as np, normfast.nn as nn
        >>> ln = nn.LayerNorm(3).load_state_dict({"weight": np.full(3, 2.0), "bias": np.zeros(3)})
        >>> ln.weight.tolist(), ln.weight.dtype
        ([2.0, 2.0, 2.0], dtype('float32'))
        """
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


@fill
class LayerNorm(_Norm):
    """Layer normalization over the trailing ``normalized_shape`` dimensions (``torch.nn.LayerNorm``).

    {nn_ln_params}

    Examples
    --------
    >>> import numpy as np, normfast.nn as nn
    >>> ln = nn.LayerNorm(4)
    >>> y = ln(np.arange(8, dtype=np.float32).reshape(2, 4))
    >>> gx = ln.backward(np.ones_like(y))
    >>> ln.grads["bias"].tolist(), y.dtype
    ([2.0, 2.0, 2.0, 2.0], dtype('float32'))
    """

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


@fill
class RMSNorm(_Norm):
    """RMS normalization over the trailing ``normalized_shape`` dimensions (``torch.nn.RMSNorm``).

    ``y = x / sqrt(mean(x**2) + eps) * weight``: no centering, no bias.

    {nn_rms_params}

    Examples
    --------
    >>> import numpy as np, normfast.nn as nn
    >>> rms = nn.RMSNorm(2, eps=0.0, dtype=np.float64)
    >>> rms(np.array([[3.0, 4.0]])).round(4).tolist()
    [[0.8485, 1.1314]]
    >>> rms.backward(np.ones((1, 2))).shape, rms.grads["weight"].shape
    ((1, 2), (2,))
    """

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


@fill
class GroupNorm(_Norm):
    """Group normalization (``torch.nn.GroupNorm``): statistics per sample and group of channels.

    Parameters
    ----------
    num_groups : int
        Groups the channels are split into; divides ``num_channels``.
    num_channels : int
        C, the size of the channel axis.
    {eps}
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    channel_axis : int, default 1
        1 for (N, C, ...), -1 for channels-last (N, ..., C).
    {nn_device}

    Raises
    ------
    ValueError
        ``num_groups`` or ``num_channels`` not a positive int, ``num_groups`` not dividing
        ``num_channels``, an unknown ``device``.

    Examples
    --------
    >>> import numpy as np, normfast.nn as nn
    >>> gn = nn.GroupNorm(2, 4, channel_axis=-1)
    >>> x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    >>> gx = gn.backward(np.ones_like(gn(x)))
    >>> gx.shape, gn.grads["weight"].shape
    ((3, 5, 4), (4,))
    """

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
    """BatchNorm and InstanceNorm: per-channel parameters and torch's running-statistics buffers."""

    _buffers = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 channel_axis=1, device=None, dtype=np.float32):
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


@fill
class BatchNorm(_RunningNorm):
    """``torch.nn.BatchNorm1d/2d/3d`` in one class (any spatial rank, ``channel_axis`` 1 or -1).

    Training mode normalizes with the batch statistics and updates the running ones; eval mode
    (or ``track_running_stats=False``: always the batch statistics) uses the running ones.

    {nn_running}

    Examples
    --------
    >>> import numpy as np, normfast.nn as nn
    >>> bn = nn.BatchNorm(2, dtype=np.float64)
    >>> x = np.arange(12.0).reshape(3, 2, 2)
    >>> y = bn(x)
    >>> bn.running_mean.round(3).tolist(), int(bn.num_batches_tracked)
    ([0.45, 0.65], 1)
    >>> bn.backward(np.ones_like(y)).shape
    (3, 2, 2)
    """

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


@fill
class InstanceNorm(_RunningNorm):
    """``torch.nn.InstanceNorm1d/2d/3d`` in one class: statistics per sample and channel.

    Defaults ``affine=False`` and ``track_running_stats=False``, as torch.  With running
    statistics, eval mode normalizes with them (its :meth:`backward` is not provided).

    {nn_running}

    Examples
    --------
    >>> import numpy as np, normfast.nn as nn
    >>> inorm = nn.InstanceNorm(3, affine=True)
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
    >>> bool(np.allclose(inorm(x).mean(axis=-1), 0.0, atol=1e-6))
    True
    >>> gx = inorm.backward(np.ones_like(x))
    >>> sorted(inorm.grads), gx.shape
    (['bias', 'weight'], (2, 3, 6))
    """

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
