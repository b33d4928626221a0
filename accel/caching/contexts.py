"""cache-dit wiring: DBCache + TaylorSeer hooks on both experts, fresh contexts per job.

Hooks are attached once per loaded model (``attach``); each job then gets new cache
contexts (``refresh``), because cache-dit keeps residuals, TaylorSeer history and step
counters across calls and a second identical job would otherwise see the first one's state.
A job with caching off gets contexts that never cache (threshold 0, no mask), which runs
every block in order and so gives the plain forward's output bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..job.settings import EXPERTS, ExpertCacheConfig
from ..model.loading import DualExperts


@dataclass(frozen=True)
class ExpertPlan:
    """One expert's cache settings for one job."""

    steps: int  # how many denoising steps this expert runs
    config: ExpertCacheConfig | None  # None: caching off
    mask: list[int] | None = None
    policy: str = "dynamic"
    separate_cfg: bool = True  # cond and uncond alternate on this module in this process


@dataclass(frozen=True)
class Decision:
    local_step: int
    cached: bool
    residual_diff: float | None  # None where cache-dit computed no diff (warmup, static, limits)
    threshold: float | None
    taylorseer: bool  # TaylorSeer supplied the cached value


def _cache_dit_configs(plan: ExpertPlan):
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    config = plan.config
    common = dict(
        num_inference_steps=plan.steps,
        enable_separate_cfg=plan.separate_cfg,
        cfg_compute_first=False,
        # Each branch computes its own diff: with CFG parallel a rank never sees the other branch.
        cfg_diff_compute_separate=True,
    )
    if config is None:
        cache_config = DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.0,
            max_warmup_steps=0, max_cached_steps=0, **common,
        )
        return cache_config, TaylorSeerCalibratorConfig(enable_calibrator=False, enable_encoder_calibrator=False)
    cache_config = DBCacheConfig(
        Fn_compute_blocks=config.Fn_compute_blocks,
        Bn_compute_blocks=config.Bn_compute_blocks,
        residual_diff_threshold=config.residual_diff_threshold,
        max_warmup_steps=config.max_warmup_steps,
        max_cached_steps=config.max_cached_steps,
        max_continuous_cached_steps=config.max_continuous_cached_steps,
        steps_computation_mask=list(plan.mask) if plan.mask is not None else None,
        steps_computation_policy=plan.policy,
        **common,
    )
    calibrator = TaylorSeerCalibratorConfig(
        enable_calibrator=config.taylorseer,
        enable_encoder_calibrator=config.taylorseer,
        taylorseer_order=config.taylorseer_order,
    )
    return cache_config, calibrator


class ExpertCaches:
    """The cache-dit state of both experts of one loaded model."""

    def __init__(self, experts: DualExperts):
        import cache_dit
        from cache_dit import BlockAdapter, ForwardPattern

        self.experts = experts
        idle = ExpertPlan(steps=1, config=None)
        cache_config, calibrator = _cache_dit_configs(idle)
        modules = [experts.high, experts.low]
        cache_dit.enable_cache(
            BlockAdapter(
                transformer=modules,
                blocks=[m.blocks for m in modules],
                forward_pattern=[ForwardPattern.Pattern_2, ForwardPattern.Pattern_2],
                has_separate_cfg=True,
            ),
            cache_config=cache_config,
            calibrator_config=calibrator,
        )
        self.plans: dict[str, ExpertPlan] = {name: idle for name in EXPERTS}

    @property
    def manager(self):
        return self.experts.high._context_manager

    def _context(self, expert: str):
        module = self.experts.expert(expert)
        return self.manager.get_context(module._context_names[0])

    def refresh(self, plans: dict[str, ExpertPlan]) -> None:
        """New contexts for every expert: nothing of an earlier job survives.

        Not ``cache_dit.refresh_context``: it merges the new config into the old one field by
        field and skips None values, so a job without an SCM mask would inherit the previous
        job's mask. ``reset_context`` builds the context from exactly these settings.
        """
        for expert, plan in plans.items():
            cache_config, calibrator = _cache_dit_configs(plan)
            module = self.experts.expert(expert)
            self.manager.reset_context(
                module._context_names[0], cache_config=cache_config, calibrator_config=calibrator
            )
            self.plans[expert] = plan

    def last_decision(self, expert: str) -> Decision:
        """What cache-dit decided in the forward that just ran on this expert."""
        context = self._context(expert)
        step = context.get_current_step()
        uncond = context.is_separate_cfg_step()
        cached_steps = context.cfg_cached_steps if uncond else context.cached_steps
        diffs = context.cfg_residual_diffs if uncond else context.residual_diffs
        raw = diffs.get(str(step))
        # cache-dit writes -0.0 (threshold off), -1.0 (always cache), -2.0 (shape mismatch): no diff.
        diff = None if raw is None or raw < 0 or math.copysign(1.0, raw) < 0 else float(raw)
        cached = step in cached_steps
        plan = self.plans[expert]
        return Decision(
            local_step=step,
            cached=cached,
            residual_diff=diff,
            threshold=plan.config.residual_diff_threshold if plan.config else None,
            taylorseer=bool(cached and plan.config and plan.config.taylorseer),
        )

    def stats(self, expert: str):
        """cache-dit's own summary of the last job on this expert."""
        import cache_dit

        return cache_dit.summary(self.experts.expert(expert))[0]
