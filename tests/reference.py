"""A plain Wan2.2 two-expert loop with bare diffusers models: the baseline the pack must equal."""

from __future__ import annotations

import torch

from accel.job.job import Job
from accel.model.latent import process_out
from accel.model.loading import load_experts
from accel.sampling.comfy_sigmas import comfy_noise
from accel.sampling.loop import leftover_noise_round_trip, start_latent
from accel.sampling.schedules import make_sampler


def plain_sample(spec, job: Job) -> torch.Tensor:
    experts = load_experts(spec)
    sampler = job.settings.sampler
    sigmas = sampler.sigmas()
    schedule = make_sampler(sampler, torch.device("cpu"))
    latents = start_latent(job.latent, comfy_noise(sampler.seed, job.latent.shape), sigmas[0])
    with torch.no_grad():
        for step, expert in enumerate(sampler.experts()):
            if step == sampler.switch_step:
                latents = leftover_noise_round_trip(latents, sigmas[step])
            module = experts.expert(expert)
            timestep = schedule.timesteps[step].expand(latents.shape[0])

            def forward(text):
                return module(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                              return_dict=False)[0]

            uncond = forward(job.uncond) if sampler.uses_uncond(expert) else None
            latents = schedule.step(latents, forward(job.cond), uncond, sampler.guidance(expert), step)
    return process_out(latents)
