"""Residency "shard" (worker side): each expert's blocks split over the sequence-parallel group's
ranks by cache-dit's tensor-parallel plan for Wan, in place of Ulysses on those ranks.

cache-dit's Wan planner (``WanTensorParallelismPlanner.parallelize_transformer``) decides the
split: q, k, v and the FFN's first layer column-wise, the attention outputs and the FFN's second
layer row-wise, the heads divided, the q / k RMSNorms replaced by ones over the split channels.
It is called with the group's own sub-mesh (its ``apply`` would build one over every rank from
the GPU type). Every rank then holds 1/N of the blocks' Linear weights and all tokens; the rest
(embeddings, norms, modulation) is replicated.

The split runs on plain local tensors, not the planner's DTensors: the planner is shown empty
(meta) stand-ins of the block Linears' weights, then each rank cuts its own share of the real
ones (torch.chunk's split, as DTensor's Shard; no weight crosses the group) and the planner's
DTensor hooks are dropped. Why: ``torch._scaled_mm`` on DTensors takes no bias and every Wan
Linear has one (cache-dit's own quantizer skips such layers, so FP8 would quantize nothing), and
the blocks compile as plain tensors. FP8 weights (an fp8_scaled file's as stored, or quantized
per row before the split) are cut with their scales, so each rank holds exactly its part of what
the resident plan computes with. A column-wise layer needs nothing more. A row-wise layer's
partial outputs are summed over the group (its bias on the group's first rank only); with FP8
weights its input is quantized with the scale of the whole input (the maximum over the ranks'
parts), as the resident layer quantizes it, instead of each part's own.

One scoped patch: cache-dit's ``DistributedRMSNorm.forward`` averages with
``all_reduce(ReduceOp.AVG)``, which gloo lacks (cache-dit asserts a GPU there); on CPU ranks
(tests) each such norm instance computes the same with a SUM and a division.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..model.loading import DualExperts
from .mesh import Mesh


@dataclass(frozen=True)
class Share:
    """This rank's part of a dimension split ``parts`` ways as torch.chunk splits it."""

    index: int
    parts: int

    def of(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        size = tensor.shape[dim]
        chunk = -(-size // self.parts)
        start = min(self.index * chunk, size)
        # narrow keeps a float8 weight's scales with it (torchao slices them); contiguous drops the rest
        return tensor.narrow(dim, start, min(chunk, size - start)).contiguous()


@dataclass
class _Held:
    """A block Linear's real weight and bias while the planner sees its stand-ins, and the hooks it had."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    hooks: tuple[set[int], set[int]]


def _rms_norm_summed(self, x: torch.Tensor) -> torch.Tensor:
    """cache-dit's DistributedRMSNorm.forward with the mean of squares reduced by SUM / N."""
    group = self.tp_mesh.get_group()
    mean_square = torch.mean(x * x, dim=-1, keepdim=True)
    dist.all_reduce(mean_square, op=dist.ReduceOp.SUM, group=group)
    normed = x / torch.sqrt(mean_square / dist.get_world_size(group) + self.eps)
    return normed * self.weight.to(device=x.device) if self.elementwise_affine else normed


def _stand_ins(module: torch.nn.Module) -> dict[torch.nn.Linear, _Held]:
    """Meta tensors in place of every block Linear's weight and bias (what the planner distributes)."""
    held = {}
    for block in module.blocks:
        for linear in block.modules():
            if isinstance(linear, torch.nn.Linear):
                held[linear] = _Held(linear.weight, linear.bias,
                                     (set(linear._forward_pre_hooks), set(linear._forward_hooks)))
                for name in ("weight", "bias"):
                    real = getattr(linear, name)
                    if real is not None:
                        setattr(linear, name, torch.nn.Parameter(
                            torch.empty(real.shape, dtype=real.dtype, device="meta"), requires_grad=False))
    return held


def _drop_planner_hooks(linear: torch.nn.Linear, before: tuple[set[int], set[int]]) -> None:
    """The DTensor input / output hooks the planner registered (the Linear's own ones stay)."""
    pre, post = before
    for key in set(linear._forward_pre_hooks) - pre:
        del linear._forward_pre_hooks[key]
    for key in set(linear._forward_hooks) - post:
        del linear._forward_hooks[key]


def _float8_input_kwargs(weight: torch.Tensor) -> Any:
    """How torchao quantizes this float8 weight's input in F.linear (None: not a float8 weight, or weight-only)."""
    from torchao.quantization import Float8Tensor

    return weight.act_quant_kwargs if isinstance(weight, Float8Tensor) else None


def _without_input_quantization(weight: torch.Tensor) -> torch.Tensor:
    """The same float8 weight, taking inputs already quantized (by _quantize_with_group_scale)."""
    from torchao.quantization import Float8Tensor

    return Float8Tensor(weight.qdata, weight.scale, block_size=weight.block_size, mm_config=weight.mm_config,
                        act_quant_kwargs=None, kernel_preference=weight.kernel_preference, dtype=weight.dtype)


def _quantize_with_group_scale(group: dist.ProcessGroup, kwargs: Any, module: torch.nn.Module,
                               args: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of a row-wise float8 layer: its input part quantized as torchao quantizes a
    whole input (``Float8Tensor.from_hp``'s torch path), with the scale of the whole input: the
    largest of the ranks' scales, each taken over its part of every scaling block."""
    from torchao.quantization import Float8Tensor
    from torchao.quantization.quant_primitives import (
        _choose_scale_float8,
        _quantize_affine_float8,
    )
    from torchao.quantization.utils import get_block_size

    x, *rest = args
    block_size = list(get_block_size(x.shape, kwargs.granularity))
    scale = _choose_scale_float8(x, block_size=block_size, float8_dtype=kwargs.float8_dtype,
                                 hp_value_lb=kwargs.hp_value_lb, hp_value_ub=kwargs.hp_value_ub)
    dist.all_reduce(scale, op=dist.ReduceOp.MAX, group=group)
    data = _quantize_affine_float8(x, scale, kwargs.float8_dtype)
    quantized = Float8Tensor(data, scale, block_size=block_size, mm_config=kwargs.mm_config,
                             kernel_preference=kwargs.kernel_preference, dtype=x.dtype)
    return (quantized, *rest)


def _sum_partials(group: dist.ProcessGroup, module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a row-wise layer: the ranks' partial products summed (the bias is on one rank)."""
    dist.all_reduce(output, group=group)
    return output


def _place_share(linear: torch.nn.Linear, held: _Held, dim: int | None, share: Share,
                 group: dist.ProcessGroup) -> None:
    """The Linear's own share of its weight (``dim`` 0: column-wise, 1: row-wise, None: not split)."""
    _drop_planner_hooks(linear, held.hooks)
    if dim is None:
        linear.weight = torch.nn.Parameter(held.weight, requires_grad=False)
        linear.bias = None if held.bias is None else torch.nn.Parameter(held.bias, requires_grad=False)
        return
    weight = share.of(held.weight, dim)
    if dim == 0:
        bias = None if held.bias is None else share.of(held.bias, 0)
    else:
        bias = held.bias if share.index == 0 else None
        kwargs = _float8_input_kwargs(weight)
        if kwargs is not None:
            weight = _without_input_quantization(weight)
            linear.register_forward_pre_hook(functools.partial(_quantize_with_group_scale, group, kwargs))
        linear.register_forward_hook(functools.partial(_sum_partials, group))
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    linear.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)


def enable_tensor_parallelism(experts: DualExperts, mesh: Mesh, device: torch.device) -> None:
    """Both experts split over the mesh's "ulysses" dimension (the sequence-parallel group), then
    on ``device`` (the experts were loaded, and quantized, in host memory so that no rank holds
    them whole on its GPU)."""
    from cache_dit.distributed.transformers.wan import (
        DistributedRMSNorm,
        WanTensorParallelismPlanner,
    )
    from torch.distributed.tensor.parallel import ColwiseParallel

    tp_mesh = mesh.mesh["ulysses"]
    group = tp_mesh.get_group()
    share = Share(tp_mesh.get_local_rank(), tp_mesh.size())
    for module in (experts.high, experts.low):
        held = _stand_ins(module)
        _, plans = WanTensorParallelismPlanner().parallelize_transformer(transformer=module, tp_mesh=tp_mesh)
        split = {block.get_submodule(name): 0 if isinstance(style, ColwiseParallel) else 1
                 for block, plan in zip(module.blocks, plans, strict=True) for name, style in plan.items()}
        for linear, real in held.items():
            _place_share(linear, real, split.get(linear), share, group)
        for sub in module.modules():
            if isinstance(sub, DistributedRMSNorm):
                if sub.weight is not None:  # a plain tensor (a slice), which module.to would not move
                    sub.weight = sub.weight.to(device)
                if device.type == "cpu":
                    sub.forward = types.MethodType(_rms_norm_summed, sub)
        module.to(device)
