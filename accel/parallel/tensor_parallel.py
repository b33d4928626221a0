"""Residency "shard" (worker side): each expert's blocks split over the sequence-parallel group's
ranks with cache-dit's tensor parallelism for Wan, in place of Ulysses on those ranks.

cache-dit's Wan planner (``WanTensorParallelismPlanner.parallelize_transformer``) makes q, k, v
and the FFN's first layer column-wise and the attention outputs and the FFN's second layer
row-wise (DTensor), divides the heads, and replaces the q / k RMSNorms with ones over the split
channels. Every rank then holds 1/N of the blocks' Linear weights and all tokens; the rest of
the model (embeddings, norms, modulation) is replicated. The planner is called with the group's
own sub-mesh (its ``apply`` would build one over every rank from the GPU type).

One scoped patch: cache-dit's ``DistributedRMSNorm.forward`` averages with
``all_reduce(ReduceOp.AVG)``, which gloo lacks (cache-dit asserts a GPU there); on CPU ranks
(tests) each such norm instance computes the same with a SUM and a division.
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist

from ..model.loading import DualExperts
from .mesh import Mesh


def _rms_norm_summed(self, x: torch.Tensor) -> torch.Tensor:
    """cache-dit's DistributedRMSNorm.forward with the mean of squares reduced by SUM / N."""
    group = self.tp_mesh.get_group()
    mean_square = torch.mean(x * x, dim=-1, keepdim=True)
    dist.all_reduce(mean_square, op=dist.ReduceOp.SUM, group=group)
    normed = x / torch.sqrt(mean_square / dist.get_world_size(group) + self.eps)
    return normed * self.weight.to(device=x.device) if self.elementwise_affine else normed


def enable_tensor_parallelism(experts: DualExperts, mesh: Mesh, device: torch.device) -> None:
    """Both experts split over the mesh's "ulysses" dimension (the sequence-parallel group), then
    on ``device`` (the experts were loaded into host memory so that no rank holds them whole)."""
    from cache_dit.distributed.transformers.wan import (
        DistributedRMSNorm,
        WanTensorParallelismPlanner,
    )

    tp_mesh = mesh.mesh["ulysses"]
    for module in (experts.high, experts.low):
        WanTensorParallelismPlanner().parallelize_transformer(transformer=module, tp_mesh=tp_mesh)
        for sub in module.modules():
            if isinstance(sub, DistributedRMSNorm):
                if sub.weight is not None:  # a plain tensor (a slice), which module.to would not move
                    sub.weight = sub.weight.to(device)
                if device.type == "cpu":
                    sub.forward = types.MethodType(_rms_norm_summed, sub)
        module.to(device)
