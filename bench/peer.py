"""The peers measured beside the pack: the plain diffusers two-expert loop, and cache-dit's own
``enable_cache`` on the same diffusers experts (its dual-transformer BlockAdapter, contexts
refreshed per run as cache-dit's Wan2.2 example does)."""

from __future__ import annotations

import time

import torch

from accel.job.job import Job
from accel.job.scm import expert_masks
from accel.job.settings import CacheSettings, ScmSettings
from accel.model.latent import process_out
from accel.model.loading import DualExperts
from accel.sampling.comfy_sigmas import comfy_noise
from accel.sampling.loop import start_latent, synchronize
from accel.sampling.schedules import make_sampler


def plain_loop(experts: DualExperts, job: Job, device: torch.device) -> tuple[torch.Tensor, float]:
    """The two-expert flow-matching loop with bare modules; returns (latent, denoise seconds)."""
    sampler = job.settings.sampler
    schedule = make_sampler(sampler, device)
    dtype = experts.high.dtype
    latents = start_latent(job.latent, comfy_noise(sampler.seed, job.latent.shape), sampler.sigmas()[0]).to(device)
    cond, uncond = job.cond.to(device, dtype), job.uncond.to(device, dtype)
    synchronize(device)
    began = time.perf_counter()
    with torch.no_grad():
        for step, expert in enumerate(sampler.experts()):
            module = experts.expert(expert)
            x, timestep = latents.to(dtype), schedule.timesteps[step].expand(latents.shape[0])

            def forward(text):
                return module(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

            neg = forward(uncond) if sampler.uses_uncond(expert) else None
            latents = schedule.step(latents, forward(cond), neg, sampler.guidance(expert), step)
    synchronize(device)
    return process_out(latents.float()).cpu(), time.perf_counter() - began


def enable_cachedit_own(experts: DualExperts, cache: CacheSettings, scm: ScmSettings | None, steps_of: dict[str, int],
                        masks: dict[str, list[int]]) -> None:
    """cache-dit's documented route for Wan2.2 without a pipeline."""
    import cache_dit
    from cache_dit import (
        BlockAdapter,
        DBCacheConfig,
        ForwardPattern,
        ParamsModifier,
        TaylorSeerCalibratorConfig,
    )

    def config(expert):
        c = cache.for_expert(expert)
        return DBCacheConfig(
            Fn_compute_blocks=c.Fn_compute_blocks, Bn_compute_blocks=c.Bn_compute_blocks,
            residual_diff_threshold=c.residual_diff_threshold, max_warmup_steps=c.max_warmup_steps,
            max_cached_steps=c.max_cached_steps, max_continuous_cached_steps=c.max_continuous_cached_steps,
            num_inference_steps=steps_of[expert], enable_separate_cfg=True,
            steps_computation_mask=masks.get(expert), steps_computation_policy=scm.policy if scm else "dynamic",
        )

    calibrator = TaylorSeerCalibratorConfig(taylorseer_order=cache.high.taylorseer_order)
    modules = [experts.high, experts.low]
    cache_dit.enable_cache(
        BlockAdapter(transformer=modules, blocks=[m.blocks for m in modules],
                     forward_pattern=[ForwardPattern.Pattern_2] * 2,
                     params_modifiers=[ParamsModifier(cache_config=config("high"), calibrator_config=calibrator),
                                       ParamsModifier(cache_config=config("low"), calibrator_config=calibrator)],
                     has_separate_cfg=True),
        cache_config=config("high"), calibrator_config=calibrator,
    )


def masks_for(job: Job) -> tuple[dict[str, int], dict[str, list[int]]]:
    experts = job.settings.sampler.experts()
    steps_of = {e: experts.count(e) for e in ("high", "low")}
    return steps_of, expert_masks(job.settings.scm, experts) if job.settings.scm else {}
