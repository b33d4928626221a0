"""Ulysses on both experts of a worker (after cache hooks): cache-dit's context parallelism on
the mesh's Ulysses sub-mesh (its Wan plan shards the sequence), the pack's self-attention with
its transport, and the copy engines where every rank of the group can use them."""

from __future__ import annotations

from datetime import timedelta

import torch

from ...job.settings import EngineOptions
from ...model.attention import self_attention_processors
from ...model.loading import DualExperts
from ..mesh import Mesh
from .copy_engine import copy_engine_for
from .processor import UlyssesSelfAttention


def enable_context_parallelism(transformer: torch.nn.Module, mesh: Mesh, degree: int, engine: EngineOptions):
    """Shard the sequence of ``transformer`` over the mesh's Ulysses dimension with cache-dit.

    Returns cache-dit's context-parallel config, read at every call: its ``ulysses_anything``
    switches uneven shards on for a job whose token count the degree does not divide.
    """
    from cache_dit import ParallelismConfig
    from cache_dit.distributed.core import (
        _ContextParallelConfig,
        _enable_context_parallelism,
    )
    from cache_dit.distributed.transformers.dispatch import (
        _ensure_cp_planners_activated,
    )
    from cache_dit.distributed.transformers.register import (
        ContextParallelismPlannerRegister,
    )

    _ensure_cp_planners_activated()
    options = dict(ulysses_async=engine.ulysses_async, ulysses_float8=engine.ulysses_float8)
    config = _ContextParallelConfig(ulysses_degree=degree, **options)
    config._mesh = mesh.mesh["ring", "ulysses"]
    # Describes the run to cache-dit's Wan planner and summary; its own mesh building is not used.
    parallelism = ParallelismConfig(ulysses_size=degree, **options)
    plan = ContextParallelismPlannerRegister.get_planner(transformer)().apply(
        transformer=transformer, parallelism_config=parallelism
    )
    _enable_context_parallelism(transformer, config=config, cp_plan=plan)
    transformer._is_parallelized = True
    transformer._parallelism_config = parallelism
    return config


def enable_ulysses(experts: DualExperts, mesh: Mesh, degree: int, engine: EngineOptions, device: torch.device,
                   timeout: timedelta) -> list:
    """Returns the experts' cache-dit context-parallel configs (see above)."""
    modules = (experts.high, experts.low)
    configs = [enable_context_parallelism(module, mesh, degree, engine) for module in modules]
    group = mesh.group("ulysses")
    copy_engine = copy_engine_for(group, device, timeout) \
        if engine.ulysses_copy_engine and device.type == "cuda" else None
    attention = UlyssesSelfAttention(group, engine.ulysses_head_chunks, copy_engine)
    for processor in self_attention_processors(modules):
        processor.ulysses = attention
    return configs


def outside_allocator_bytes(experts: DualExperts) -> int:
    """GPU memory the Ulysses attention holds outside PyTorch's allocator (the copy engines' receive
    buffers, one set shared by both experts), for the peak-memory figures."""
    engines = {id(p.ulysses.copies.engine): p.ulysses.copies.engine
               for p in self_attention_processors((experts.high, experts.low))
               if p.ulysses is not None and p.ulysses.copies is not None}
    return sum(engine.buffer_bytes for engine in engines.values())
