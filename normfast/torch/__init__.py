"""normfast for PyTorch: drop-in norm modules, functions and registered ops (CPU tensors).

Switch a model with two lines::

    import normfast.torch as nft
    model = nft.patch(model)            # every torch norm module now runs normfast's kernels

or build with the classes directly (same constructors, parameters and state_dict keys as
torch's): ``nft.LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``BatchNorm1d/2d/3d``,
``InstanceNorm1d/2d/3d``, plus the fused residual add + norm ``AddLayerNorm`` /
``AddRMSNorm``.  Functions follow ``torch.nn.functional``: ``layer_norm``, ``rms_norm``,
``batch_norm``, ``group_norm``, ``instance_norm``, and ``normalize``, ``add_layer_norm``,
``add_rms_norm``.  Every operator and its backward is registered as
``torch.ops.normfast.<name>`` (fake kernels, autograd), so ``torch.compile(fullgraph=True)``
and ``torch.export`` work.  Imported only on request (``import normfast`` never imports torch).

Threads: normfast's kernels and torch's CPU ops run on the same OpenMP runtime (torch's
``libgomp``).  ``normfast.get_num_threads()`` follows ``torch.set_num_threads`` (both read
``omp_get_max_threads()``) unless ``normfast.set_num_threads(n)`` overrides
it; ``normfast.set_num_threads`` never changes torch's count.  Calls run one after the
other on the same pool, so the two never oversubscribe the cores.
"""
from ._functional import (add_layer_norm, add_rms_norm, batch_norm, group_norm, instance_norm, layer_norm,
                          normalize, rms_norm)
from ._modules import (AddLayerNorm, AddRMSNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                       InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm, patch, unpatch)

__all__ = [
    "AddLayerNorm", "AddRMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm", "add_layer_norm", "add_rms_norm", "batch_norm",
    "group_norm", "instance_norm", "layer_norm", "normalize", "patch", "rms_norm", "unpatch",
]
