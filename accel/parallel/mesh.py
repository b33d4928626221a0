"""The device mesh (cfg, ring, ulysses) of a worker group (worker side).

cache-dit's public ``enable_parallelism`` builds its mesh over the whole world, which is wrong
once CFG parallel splits the world into two sequence-parallel groups, so the mesh is built
here and handed to cache-dit (ulysses/enable.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .layout import ParallelLayout


@dataclass
class Mesh:
    mesh: DeviceMesh

    @property
    def cfg_rank(self) -> int:
        return self.mesh.get_local_rank("cfg")

    def group(self, dim: str):
        return self.mesh.get_group(dim)


def build_mesh(layout: ParallelLayout, device_type: str) -> Mesh:
    return Mesh(init_device_mesh(device_type, (layout.cfg, 1, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")))
