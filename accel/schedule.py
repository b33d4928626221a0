"""Flow-matching schedulers from diffusers and the high/low expert split."""

from __future__ import annotations

import torch

from .config import SamplerSettings

NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(settings: SamplerSettings):
    """A fresh scheduler with its timesteps set (schedulers keep per-run state)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if settings.scheduler == "unipc":
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=settings.shift,
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=settings.shift, num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    scheduler.set_timesteps(settings.steps, device="cpu")
    return scheduler


def place_on(scheduler, device: torch.device) -> None:
    """Timesteps and sigmas on the sampling device. diffusers keeps the sigmas on the CPU and
    copies each one it uses to the GPU, and each such copy waits for all queued GPU work (about six
    per UniPC step); here they are read where they already are (the same values). On 2x H200 the
    step time did not measurably change (bench/results/*-findings.md): UniPC's corrector still
    waits for the GPU once per step (torch.linalg.solve), after the step's forwards. These copies
    would be the next waits once that one is gone."""
    scheduler.timesteps = scheduler.timesteps.to(device)
    scheduler.sigmas = scheduler.sigmas.to(device)


def expert_of_steps(timesteps: torch.Tensor, boundary: float) -> list[str]:
    """As diffusers' WanPipeline: the high-noise expert while t >= boundary * train timesteps."""
    limit = boundary * NUM_TRAIN_TIMESTEPS
    return ["high" if float(t) >= limit else "low" for t in timesteps]


def plan_experts(settings: SamplerSettings) -> list[str]:
    return expert_of_steps(make_scheduler(settings).timesteps, settings.boundary)
