"""The similarity patch against cache-dit's own test, on 2 gloo ranks: with CFG parallel the world
mixes the cond and uncond ranks' diffs, and uneven shards average means; the patch reduces
sums over the sequence-parallel group only, so each rank gets the diff one process would."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import gloo_rank

from accel.parallel.launch import free_port


class Context:
    """The few CachedContextManager methods its similarity calls, without a real context."""

    def __init__(self):
        self.diffs: list[float] = []

    def add_residual_diff(self, diff: float) -> None:
        self.diffs.append(float(diff))

    def enable_separate_cfg(self) -> bool:
        return False

    is_separate_cfg_step = cfg_diff_compute_separate = enable_separate_cfg

    def get_current_step_residual_diff(self):
        return None

    def get_important_condition_threshold(self) -> float:
        return 0.0


def residuals(seed: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    before = torch.randn(1, tokens, 8, generator=generator)
    return before, before + 0.1 * (seed + 1) * torch.randn(1, tokens, 8, generator=generator)


def one_process_diff(t1: torch.Tensor, t2: torch.Tensor) -> float:
    return float((t1 - t2).abs().sum(dtype=torch.float64) / t1.abs().sum(dtype=torch.float64))


def _diffs(rank: int, layout: str) -> tuple:
    from cache_dit.caching.cache_contexts.cache_manager import CachedContextManager

    from accel.caching.similarity import SP_GROUP_ATTR, group_similarity

    own = [dist.new_group([0]), dist.new_group([1])][rank]
    if layout == "cfg2":  # each rank one branch of the whole sequence; its SP group is itself
        t1, t2 = residuals(rank, 12)
        expected, sp_group = one_process_diff(t1, t2), own
    else:  # ulysses 2 over 8 tokens split 3 / 5 (uneven, as cache-dit's "anything" mode shards)
        full1, full2 = residuals(7, 8)
        part = slice(0, 3) if rank == 0 else slice(3, 8)
        t1, t2 = full1[:, part], full2[:, part]
        expected, sp_group = one_process_diff(full1, full2), dist.group.WORLD
    unpatched, patched = Context(), Context()
    CachedContextManager.similarity(unpatched, t1, t2, threshold=0.5, parallelized=True)
    setattr(patched, SP_GROUP_ATTR, sp_group)
    group_similarity(patched, t1, t2, threshold=0.5, parallelized=True)
    return rank, expected, unpatched.diffs[0], patched.diffs[0]


@pytest.mark.parametrize("layout", ["cfg2", "uneven-ulysses2"])
def test_patched_similarity_is_the_one_process_diff_where_cache_dits_is_not(layout):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(gloo_rank, args=(free_port(), _diffs, queue, layout), nprocs=2, start_method="spawn")
    for rank, expected, unpatched, patched in sorted(queue.get() for _ in range(2)):
        assert patched == pytest.approx(expected, rel=1e-6), rank
        assert unpatched != pytest.approx(expected, rel=1e-3), rank
