"""Docstring fragments the operators share (numpydoc), written once and filled in by ``fill``:
a ``{name}`` placeholder on a line of its own is replaced by FRAGMENTS[name], indented as the
placeholder (a fragment may hold placeholders itself, and whole sections with their header).
The NumPy operators, their Dask counterparts (``normfast.dask``), the torch functions and
modules (``normfast.torch``) and the layer objects (``normfast.nn``) take their common
parameter descriptions from here."""
import re

FRAGMENTS = {
    # ---------------------------------------------------------------- forward parameters
    "x_rows": """x : array of float16, float32 or float64, shape ``(..., *normalized_shape)``
    Any array type the package takes (NumPy, torch, CuPy, Dask, Array API); any strides.""",
    "x_channels": """x : array of float16, float32 or float64, shape (N, C, *spatial) or channels-last
    Any array type the package takes; any spatial rank, any strides.""",
    "normalized_shape": """normalized_shape : int or sequence of int
    The trailing dimensions normalized together.""",
    "eps": """eps : float, default 1e-5
    Added to the variance.""",
    "eps_rms": """eps : float, optional
    None (default) uses the machine epsilon of the input's dtype, as torch does.""",
    "weight_bias_rows": """weight, bias : arrays of shape ``normalized_shape``, optional
    Elementwise affine (any float dtype; read as float64).""",
    "weight_bias_C": """weight, bias : arrays of shape (C,), optional
    Per-channel affine (any float dtype; read as float64).""",
    "channel_axis": """channel_axis : int, default 1
    1 for (N, C, ...), -1 for channels-last (N, ..., C) (no transposing copy).""",
    "momentum": """momentum : float in [0, 1], default 0.1
    Weight of the new statistics in the running ones: ``r = (1 - m) * r + m * stat``.""",
    "out_y": """out : array like x, optional
    Where to write y; may be x itself (in place).  Must not overlap x otherwise.""",
    "raises_add": """Raises
------
TypeError, ValueError
    As the norm alone, and residual not matching x, out and residual_out sharing memory.""",
    "returns_y": """Returns
-------
y : array of x's shape, dtype and type (``out`` when given)
mean, rstd : float64 arrays, only with ``return_stats``""",
    "residual": """x, residual : arrays of the same shape and dtype (float16, float32, float64)
    ``h = x + residual`` is rounded in that dtype, exactly as the unfused add.""",
    "out_residual": """out, residual_out : arrays like x, optional
    Where to write y and h; ``out=x`` and ``residual_out=residual`` are allowed (in place).""",
    # ---------------------------------------------------------------- backward
    "grad_out_x": """grad_out : array like x
    Gradient of the loss with respect to the forward's output.
x : array
    The forward's input.""",
    "weight_bwd": """weight : array, optional
    The forward's weight (None: no weight; grad_weight and grad_bias are then None).""",
    "needs_out": """needs_input_grad : tuple of bool, default all True
    Gradients not requested are returned as None and not computed.
out : array like x, optional
    Where to write grad_x; may be grad_out or x itself (in place).""",
    "returns_bwd_C": """Returns
-------
grad_x : array like x, or None
grad_weight, grad_bias : arrays of shape (C,) in the weight's dtype, or None""",
    "bwd_tail_rows": """{normalized_shape}
{weight_bwd}
{needs_out}""",
    "bwd_tail_C": """{channel_axis}
{needs_out}

{returns_bwd_C}

{raises_bwd}""",
    "raises_bwd": """Raises
------
TypeError, ValueError
    Non-floating arrays, shapes that do not match x, statistics of the wrong size, a bad ``out``.""",
    "grad_add": """grad_y : array like h
    Gradient of the loss with respect to y.
grad_h : array like h, or None
    Gradient reaching h from its later uses (the residual stream); added in the same pass.
h : array
    The forward's ``h = x + residual``.""",
    "add_bwd_tail": """{normalized_shape}
weight : array, optional
    The forward's weight.
out : array like h, optional
    Where to write grad_input; may be grad_y, grad_h or h (in place).""",
    "raises_add_bwd": """Raises
------
TypeError, ValueError
    Shapes or dtypes that do not match h, a bad ``out``.""",
    # ---------------------------------------------------------------- normfast.dask
    "dask_x": """x : dask.array.Array of float16, float32 or float64
    Any chunking (a NumPy array is taken as one chunk).""",
    "split_every": """split_every : int or dict, optional
    Fan-in of the tree reduction of the chunks' statistics (as in Dask's reductions).""",
    "dask_stats": """compute_stats : bool, default False
    Compute the statistics now (``dask.compute``) and use them as constants: x is read twice
    but never held in memory (for larger-than-memory arrays; see the module docstring).
{split_every}""",
    "dask_y": """Returns
-------
y : dask.array.Array
    Lazy, of x's shape, dtype and chunks.""",
    "dask_rows_y": """Returns
-------
y : dask.array.Array
    Lazy, of x's shape and dtype (whole rows per chunk).

{dask_raises}""",
    "dask_raises": """Raises
------
TypeError, ValueError
    As the NumPy operator: non-floating arrays, shapes that do not match, bad parameters.""",
    "dask_tail_C": """{channel_axis}
{dask_stats}

{dask_y}

{dask_raises}""",
    "dask_needs": """needs_input_grad : tuple of bool, default all True
    Gradients not requested are returned as None and not computed.""",
    "dask_grads": """Returns
-------
grad_x : dask.array.Array or None
    Lazy, of x's shape and dtype.
grad_weight, grad_bias : dask.array.Array or None
    Lazy, in the weight's dtype (x's without a weight array); None when not requested or
    without a weight.""",
    "dask_bwd_tail": """{dask_needs}

{dask_grads}

{dask_raises}""",
    "dask_examples": """Examples
--------
>>> import numpy as np, dask, dask.array as da
>>> import normfast as nf, normfast.dask as nd""",
    # ---------------------------------------------------------------- layer constructors (nn and torch)
    "ln_affine": """elementwise_affine : bool, default True
    Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
bias : bool, default True
    With ``elementwise_affine``: also the ``bias``.""",
    "rms_affine": """elementwise_affine : bool, default True
    A learnable ``weight`` (ones) of shape ``normalized_shape``.""",
    "running_module": """num_features : int
    C, the size of the channel axis.
{eps}
momentum : float or None, default 0.1
    Weight of the batch statistics in the running ones (None: cumulative average).
affine : bool
    Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
track_running_stats : bool
    Keep ``running_mean``, ``running_var`` and ``num_batches_tracked`` (torch's buffers).""",
    # ---------------------------------------------------------------- normfast.torch
    "input": """input : torch.Tensor
    On the CPU; float16, bfloat16, float32 or float64, any strides.""",
    "torch_wb_rows": """weight, bias : torch.Tensor of shape ``normalized_shape``, optional
    Elementwise affine (may have another float dtype than input).""",
    "torch_ln_args": """{normalized_shape}
{torch_wb_rows}
{eps}""",
    "torch_rms_args": """{normalized_shape}
weight : torch.Tensor of shape ``normalized_shape``, optional
    Elementwise scale.
{eps_rms}""",
    "torch_wb_C": """weight, bias : torch.Tensor of shape (C,), optional
    Per-channel affine (may have another float dtype than input).""",
    "torch_raises": """Raises
------
TypeError
    A tensor not on the CPU (normfast.torch runs CPU tensors; use CuPy arrays on CUDA).
ValueError
    Shapes or parameters that do not match, as the NumPy operator.""",
    "torch_tail": """Returns
-------
torch.Tensor
    Of input's shape and dtype; gradients reach every tensor argument that requires them.

{torch_raises}""",
    "torch_running_tail": """momentum : float, default 0.1
    Weight of the new statistics in the running update.
{eps}

{torch_tail}""",
    "torch_add_tail": """Returns
-------
y, h : torch.Tensor
    The normalized sum and the sum itself, of input's shape and dtype.

{torch_raises}""",
    "torch_examples": """Examples
--------
>>> import torch, normfast.torch as nft""",
    "torch_factory": """device, dtype : optional
    torch's factory arguments, for the parameters and buffers.""",
    "module_raises": """Raises
------
TypeError, ValueError
    On calling: as the functional form (CPU tensors only, shapes that do not match).""",
    "torch_ln_params": """Parameters
----------
{normalized_shape}
{eps}
{ln_affine}
{torch_factory}

{module_raises}""",
    "torch_rms_params": """Parameters
----------
{normalized_shape}
{eps_rms}
{rms_affine}
{torch_factory}

{module_raises}""",
    "torch_running": """Parameters
----------
{running_module}
{torch_factory}

{module_raises}""",
    "forward": """Parameters
----------
input : torch.Tensor
    On the CPU, laid out as the functional form takes it.

Returns
-------
torch.Tensor
    Of input's shape, dtype and memory format.""",
    "forward_add": """Parameters
----------
x, residual : torch.Tensor
    CPU tensors of the same shape.

Returns
-------
y, h : torch.Tensor
    The normalized sum and the sum ``x + residual`` (feed h to the next block).""",
    # ---------------------------------------------------------------- normfast.nn
    "nn_device": """device : {'cpu', 'cuda'} or array namespace, optional
    Where the parameters live: NumPy ('cpu', default), CuPy ('cuda') or the namespace given.
dtype : dtype, default float32
    dtype of the parameters and running statistics.""",
    "nn_ln_params": """Parameters
----------
{normalized_shape}
{eps}
{ln_affine}
{nn_tail}""",
    "nn_rms_params": """Parameters
----------
{normalized_shape}
{eps_rms}
{rms_affine}
{nn_tail}""",
    "nn_running": """Parameters
----------
{running_module}
channel_axis : int, default 1
    1 for (N, C, ...), -1 for channels-last (N, ..., C).
{nn_tail}""",
    "nn_tail": """{nn_device}

{nn_raises}""",
    "nn_raises": """Raises
------
ValueError
    An unknown ``device``.""",
}

_PLACEHOLDER = re.compile(r"^([ \t]*)\{([A-Za-z_]\w*)\}[ \t]*$", re.M)


def fill_text(doc):
    """``doc`` with every ``{name}`` placeholder line replaced by its fragment, indented as the
    placeholder (repeated until none is left, so fragments may hold placeholders)."""
    def sub(m):
        indent, name = m.group(1), m.group(2)
        if name not in FRAGMENTS:
            raise KeyError(f"docstring placeholder {{{name}}} has no fragment in normfast._docs.FRAGMENTS")
        return "\n".join(indent + line if line else line for line in FRAGMENTS[name].split("\n"))
    while True:
        new = _PLACEHOLDER.sub(sub, doc)
        if new == doc:
            return doc
        doc = new


def fill(obj):
    """Decorator for functions and classes: fill the placeholders of ``obj.__doc__`` in place."""
    if obj.__doc__:                      # None under ``python -OO``
        obj.__doc__ = fill_text(obj.__doc__)
    return obj
