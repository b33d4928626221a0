"""A plain Wan2.2 two-expert loop with bare diffusers models: the baseline the pack must equal."""

from __future__ import annotations

import torch

from accel.model.latent import process_in, process_out
from accel.model.loading import load_experts
from accel.sampling.schedules import expert_of_steps, make_scheduler
from accel.job.job import Job


def plain_sample(spec, job: Job) -> torch.Tensor:
    experts = load_experts(spec)
    sampler = job.settings.sampler
    scheduler = make_scheduler(sampler)
    noise = torch.randn(job.latent.shape, generator=torch.Generator("cpu").manual_seed(sampler.seed))
    sigma0 = float(scheduler.sigmas[0])
    latents = sigma0 * noise + (1 - sigma0) * process_in(job.latent.float())
    with torch.no_grad():
        for t, expert in zip(scheduler.timesteps, expert_of_steps(scheduler.timesteps, sampler.boundary)):
            module = experts.expert(expert)
            guidance = sampler.guidance(expert)
            timestep = t.expand(latents.shape[0])

            def forward(text):
                return module(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                              return_dict=False)[0].float()

            pred = forward(job.cond)
            if guidance > 1.0:
                uncond = forward(job.uncond)
                pred = uncond + guidance * (pred - uncond)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return process_out(latents)
