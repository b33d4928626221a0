"""Where the branches of a step run and how their results meet: one process, or one rank of a
worker group (its CFG branch, its sequence-parallel group)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist

from ..diagnostics.trace import StepRecord
from ..parallel.layout import ParallelLayout
from ..parallel.mesh import Mesh


class Topology(Protocol):
    """Where the branches of a step run and how their results meet."""

    cfg_parallel: bool
    sp_group: object | None
    control: object | None  # a gloo group of every worker (None: one process)

    def branches_here(self, branches: list[str]) -> list[str]: ...

    def exchange(self, preds: dict[str, torch.Tensor], branches: list[str]) -> dict[str, torch.Tensor]: ...

    def gather_records(self, records: list[StepRecord]) -> list[StepRecord]: ...


class LocalTopology:
    """One process runs every branch."""

    cfg_parallel = False
    sp_group = None
    control = None

    def branches_here(self, branches: list[str]) -> list[str]:
        return branches

    def exchange(self, preds: dict[str, torch.Tensor], branches: list[str]) -> dict[str, torch.Tensor]:
        return preds

    def gather_records(self, records: list[StepRecord]) -> list[StepRecord]:
        return records


class GroupTopology:
    def __init__(self, layout: ParallelLayout, mesh: Mesh, control_group):
        self.cfg_parallel = layout.cfg > 1
        self.cfg_rank = mesh.cfg_rank
        self.cfg_group = mesh.group("cfg") if self.cfg_parallel else None
        # The similarity patch reduces over this group.
        self.sp_group = mesh.group("ulysses")
        self.control = control_group
        self.rank = dist.get_rank()

    def branches_here(self, branches: list[str]) -> list[str]:
        if not self.cfg_parallel or len(branches) == 1:
            return branches
        return [branches[self.cfg_rank]]

    def exchange(self, preds: dict[str, torch.Tensor], branches: list[str]) -> dict[str, torch.Tensor]:
        if not self.cfg_parallel or len(branches) == 1:
            return preds
        mine = preds[branches[self.cfg_rank]].contiguous()
        gathered = [torch.empty_like(mine) for _ in branches]
        dist.all_gather(gathered, mine, group=self.cfg_group)
        return dict(zip(branches, gathered))

    def gather_records(self, records: list[StepRecord]) -> list[StepRecord]:
        """On rank 0: one record per forward, marking whether every rank that ran it agreed."""
        per_rank: list | None = [None] * dist.get_world_size() if self.rank == 0 else None
        dist.gather_object([r.to_dict() for r in records], per_rank, dst=0, group=self.control)
        if self.rank != 0:
            return []
        merged: dict[tuple, list[StepRecord]] = {}
        for rank_records in per_rank:
            for data in rank_records:
                record = StepRecord(**data)
                merged.setdefault((record.step, record.expert, record.branch), []).append(record)
        result = []
        for same_forward in merged.values():
            first = same_forward[0]
            first.ranks = len(same_forward)
            first.ranks_agreed = all(
                (r.decision, r.residual_diff) == (first.decision, first.residual_diff) for r in same_forward
            )
            first.wall_ms = max(r.wall_ms for r in same_forward)
            result.append(first)
        return result
