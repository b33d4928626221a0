"""Flow-matching schedulers from diffusers and the high/low expert split."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..job.settings import SamplerSettings

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
    per UniPC step); here they are read where they already are (the same values). With
    ``solve_without_sync`` as well, the step loop never waits for the GPU."""
    scheduler.timesteps = scheduler.timesteps.to(device)
    scheduler.sigmas = scheduler.sigmas.to(device)


@contextlib.contextmanager
def solve_without_sync() -> Iterator[None]:
    """Within: ``torch.linalg.solve`` is ``solve_ex`` without its error check.

    UniPC's corrector solves a tiny system built from the sigmas at every step. On CUDA,
    ``torch.linalg.solve`` copies the factorisation's status to the CPU to raise on a singular
    matrix, so the CPU waits there for the step's forwards to end and the GPU then idles while
    the CPU issues the next step's first kernels (bench/results/*-step-gaps.md). ``solve_ex``
    runs the same kernels and returns the same solution without that copy; the system is never
    singular (distinct sigmas). Patched only around ``scheduler.step`` (diffusers calls
    ``torch.linalg.solve`` itself there), so nothing else in the process sees it."""
    solve = torch.linalg.solve
    torch.linalg.solve = _solve_unchecked
    try:
        yield
    finally:
        torch.linalg.solve = solve


def _solve_unchecked(A: torch.Tensor, B: torch.Tensor, *, left: bool = True) -> torch.Tensor:
    return torch.linalg.solve_ex(A, B, left=left)[0]


def expert_of_steps(timesteps: torch.Tensor, boundary: float) -> list[str]:
    """As diffusers' WanPipeline: the high-noise expert while t >= boundary * train timesteps."""
    limit = boundary * NUM_TRAIN_TIMESTEPS
    return ["high" if float(t) >= limit else "low" for t in timesteps]


def plan_experts(settings: SamplerSettings) -> list[str]:
    return expert_of_steps(make_scheduler(settings).timesteps, settings.boundary)
