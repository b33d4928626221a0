"""Worker side: cache-dit's layerwise offload for torchao Float8Tensor weights ("stream" with FP8).

cache-dit's offload (``cache_dit.offload.layerwise``) moves a target's weight in two steps that a
wrapper tensor subclass does not take:

- it re-points a parameter with ``parameter.data = tensor``, which a Float8Tensor parameter
  ignores (it keeps its own inner qdata and scale: the layer would keep computing with the host
  copy, or with a device copy that has been freed);
- it fences a device copy's lifetime with ``tensor.record_stream(stream)``, an op Float8Tensor
  does not implement (NotImplementedError on the first async onload).

So, scoped to what fails and nothing else:

- ``_assign_direct_state_tensor`` (the one function of cache-dit's that sets a target's tensors)
  is wrapped: a tensor subclass for a parameter becomes a new Parameter of the module, as
  residency.Slot.set does; plain tensors and buffers go to cache-dit's own function unchanged;
- Float8Tensor gets ``aten.record_stream``, recorded on each inner tensor (torchao's own
  ``implements`` table: the extension point its tensor subclasses are built for).

Both are installed once per process, when a stream plan first meets a Float8Tensor weight, and
both are identities for everything cache-dit moved before.
"""

from __future__ import annotations

import functools

import torch

_INSTALLED_MARK = "_accel_moves_tensor_subclasses"


def is_tensor_subclass(tensor: torch.Tensor) -> bool:
    """A wrapper subclass (torchao Float8Tensor: qdata + scale), not a plain tensor or Parameter."""
    return type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__")


def _assign_subclass_aware(original):
    @functools.wraps(original)
    def assign(module: torch.nn.Module, *, kind: str, name: str, tensor: torch.Tensor, requires_grad: bool) -> None:
        if kind == "parameter" and is_tensor_subclass(tensor):
            if name not in module._parameters:
                raise KeyError(f"Missing parameter {name!r} on module {module.__class__.__name__}.")
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
            return
        original(module, kind=kind, name=name, tensor=tensor, requires_grad=requires_grad)

    setattr(assign, _INSTALLED_MARK, True)
    return assign


def _record_stream_on_parts(func, types, args, kwargs):
    tensor, stream = args
    names, _ = tensor.__tensor_flatten__()
    for name in names:
        getattr(tensor, name).record_stream(stream)


def install() -> None:
    """Let cache-dit's layerwise offload move Float8Tensor weights (idempotent)."""
    from cache_dit.offload import layerwise
    from torchao.quantization import Float8Tensor

    if not getattr(layerwise._assign_direct_state_tensor, _INSTALLED_MARK, False):
        layerwise._assign_direct_state_tensor = _assign_subclass_aware(layerwise._assign_direct_state_tensor)
    record_stream = torch.ops.aten.record_stream.default
    if record_stream not in Float8Tensor._ATEN_OP_TABLE.get(Float8Tensor, {}):
        Float8Tensor.implements(record_stream)(_record_stream_on_parts)


def has_subclass_weights(modules) -> bool:
    return any(is_tensor_subclass(p) for module in modules for p in module.parameters(recurse=False))
