"""The samplers of a job (worker side): ComfyUI's euler, and Wan's flow UniPC from diffusers,
both on ComfyUI's sigma schedules (comfy_sigmas.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch

from ..job.settings import SamplerSettings
from .comfy_sigmas import comfy_flow_step, timestep_of_sigma

NUM_TRAIN_TIMESTEPS = 1000


class Sampler(Protocol):
    """``timesteps``: the model's timestep input per step, on the sampling device."""

    timesteps: torch.Tensor

    def step(self, x: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor | None, cfg: float,
             index: int) -> torch.Tensor: ...


class ComfyEuler:
    """ComfyUI's euler on a flow model: the denoised prediction x - v*sigma per branch, CFG on the
    denoised predictions, x + (x - denoised)/sigma * (sigma_next - sigma); all in float32 with the
    sigmas as float32 tensors on the device, as ComfyUI computes it."""

    def __init__(self, sigmas: list[float], device: torch.device):
        on_device = torch.tensor(sigmas, dtype=torch.float32, device=device)
        self.sigmas = list(on_device)  # 0-dim device tensors: no host copy per step
        self.timesteps = timestep_of_sigma(on_device[:-1])

    def step(self, x, v_cond, v_uncond, cfg, index):
        return comfy_flow_step(x, v_cond, v_uncond, cfg, self.sigmas[index], self.sigmas[index + 1])


class WanFlowUniPC:
    """diffusers' UniPC with flow sigmas (Wan's own solver), CFG on the velocity as Wan's pipelines
    apply it, on ComfyUI's schedule: diffusers shifts the sigmas it is given, so it gets them
    unshifted."""

    def __init__(self, settings: SamplerSettings, device: torch.device):
        from diffusers import UniPCMultistepScheduler

        self.scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=settings.shift,
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        )
        import numpy as np  # diffusers' schedulers compute in numpy

        shifted = settings.sigmas()[:-1]
        self.scheduler.set_timesteps(sigmas=np.array([unshift(s, settings.shift) for s in shifted]), device="cpu")
        place_on(self.scheduler, device)
        self.timesteps = self.scheduler.timesteps

    def step(self, x, v_cond, v_uncond, cfg, index):
        pred = v_cond.float()
        if v_uncond is not None:
            uncond = v_uncond.float()
            pred = uncond + cfg * (pred - uncond)
        with solve_without_sync():
            return self.scheduler.step(pred, self.timesteps[index], x, return_dict=False)[0]


def unshift(sigma: float, shift: float) -> float:
    """The inverse of ModelSamplingSD3's shift (flow_shift)."""
    return sigma / (shift - (shift - 1) * sigma)


def make_sampler(settings: SamplerSettings, device: torch.device) -> Sampler:
    """A fresh sampler for one job (UniPC keeps per-run state)."""
    if settings.sampler == "euler":
        return ComfyEuler(settings.sigmas(), device)
    return WanFlowUniPC(settings, device)


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
