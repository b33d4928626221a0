"""The one patch of cache-dit: a residual-diff test reduced over the run's sequence-parallel group.

cache-dit 1.5.3's ``CachedContextManager.similarity`` all-reduces the mean |t1 - t2| and the
mean |t1| over the *world* group (op=AVG) whenever the process group has more than one rank.
That is wrong twice for this pack: with CFG parallel the world mixes the cond and uncond
branches (each rank then decides on a blend of both, unlike a single-GPU run, and a rank whose
branch skips the test leaves the others waiting in the collective), and an average of per-shard
means is exact only for equal shards. The replacement reduces the *sums* of |t1 - t2| and |t1|
over the group bound to the manager (the SP group, or none), in float64, so every rank of a
group takes the same branch and the diff equals the single-process diff for any shard sizes.
The cond/uncond diff reuse (``cfg_diff_compute_separate=False``) is not supported: the pack
always computes each branch's diff separately (see ``cache.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

SP_GROUP_ATTR = "_accel_sp_group"


@torch.compiler.disable
def group_similarity(self, t1: torch.Tensor, t2: torch.Tensor, *, threshold: float, parallelized: bool = False,
                     prefix: str = "Fn") -> bool:
    # Same special values as cache-dit: -0.0 threshold off, -1.0 always similar, -2.0 shape mismatch.
    if threshold <= 0.0:
        self.add_residual_diff(-0.0)
        return False
    if threshold >= 1.0:
        self.add_residual_diff(-1.0)
        return True
    if t1.shape != t2.shape:
        self.add_residual_diff(-2.0)
        return False
    sums = torch.stack([(t1 - t2).abs().sum(dtype=torch.float64), t1.abs().sum(dtype=torch.float64)])
    group = getattr(self, SP_GROUP_ATTR, None)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    diff = (sums[0] / sums[1]).item()
    self.add_residual_diff(diff)
    return diff < threshold


@contextlib.contextmanager
def patched_similarity(manager, sp_group=None) -> Iterator[None]:
    """Install ``group_similarity`` on cache-dit's manager class for one job, then restore it."""
    from cache_dit.caching.cache_contexts.cache_manager import CachedContextManager

    original = CachedContextManager.similarity
    setattr(manager, SP_GROUP_ATTR, sp_group)
    CachedContextManager.similarity = group_similarity
    try:
        yield
    finally:
        CachedContextManager.similarity = original
        setattr(manager, SP_GROUP_ATTR, None)
