"""Device mesh (cfg, ring, ulysses) and cache-dit's context parallelism on the Ulysses sub-mesh.

cache-dit's public ``enable_parallelism`` builds its mesh over the whole world, which is wrong
once CFG parallel splits the world into two sequence-parallel groups. So the mesh is preset
here and handed to cache-dit's own context-parallel runtime (its Wan plan, its Ulysses
all-to-all); nothing of the parallel attention is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .layout import ParallelLayout


@dataclass
class Mesh:
    mesh: DeviceMesh

    @property
    def cfg_rank(self) -> int:
        return self.mesh.get_local_rank("cfg")

    @property
    def sp_rank(self) -> int:
        return self.mesh.get_local_rank("ulysses")

    def group(self, dim: str):
        return self.mesh.get_group(dim)


def build_mesh(layout: ParallelLayout, device_type: str) -> Mesh:
    return Mesh(init_device_mesh(device_type, (layout.cfg, 1, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")))


def enable_ulysses(transformer: torch.nn.Module, mesh: Mesh, degree: int, overlap: bool = False,
                   float8_comm: bool = False):
    """Shard the sequence of ``transformer`` over the mesh's Ulysses dimension (after cache hooks).

    Returns cache-dit's context-parallel config, read at every call: its ``ulysses_anything``
    switches uneven shards on for a job whose token count the degree does not divide.
    """
    from cache_dit import ParallelismConfig
    from cache_dit.distributed.core import _ContextParallelConfig, _enable_context_parallelism
    from cache_dit.distributed.transformers.dispatch import _ensure_cp_planners_activated
    from cache_dit.distributed.transformers.register import ContextParallelismPlannerRegister

    _ensure_cp_planners_activated()
    config = _ContextParallelConfig(ulysses_degree=degree, ulysses_async=overlap, ulysses_float8=float8_comm)
    config._mesh = mesh.mesh["ring", "ulysses"]
    # Describes the run to cache-dit's Wan planner and summary; its own mesh building is not used.
    parallelism = ParallelismConfig(ulysses_size=degree, ulysses_async=overlap, ulysses_float8=float8_comm)
    plan = ContextParallelismPlannerRegister.get_planner(transformer)().apply(
        transformer=transformer, parallelism_config=parallelism
    )
    _enable_context_parallelism(transformer, config=config, cp_plan=plan)
    transformer._is_parallelized = True
    transformer._parallelism_config = parallelism
    return config
