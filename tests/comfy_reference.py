"""ComfyUI's KSamplerAdvanced on a flow model, written from its semantics on top of the pack's
comfy_sigmas functions: the reference the tests hold the pack's loop and the schedules against
(the real-ComfyUI tests in tests/integration hold the pack against ComfyUI itself)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from accel.sampling.comfy_sigmas import (
    euler_step,
    flow_shift,
    inverse_noise_scaling,
    latent_is_empty,
    noise_scaling,
)


def percent_to_sigma(percent: float, shift: float) -> float:
    """ModelSamplingDiscreteFlow.percent_to_sigma (float64): 1 at 0%, 0 at 100%, else s(1 - p)."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return flow_shift(1.0 - percent, shift)



@dataclass(frozen=True)
class SamplerWindow:
    """What one KSamplerAdvanced samples over.

    sigmas: the sigmas it integrates over, in order (len = steps it runs + 1); empty if skipped.
    skipped: ComfyUI does no sampling and returns the input latent unchanged (start_at_step past
        the end of the window).
    """
    sigmas: tuple[float, ...]
    skipped: bool

    @property
    def steps(self) -> int:
        return max(len(self.sigmas) - 1, 0)

    @property
    def leftover_noise(self) -> bool:
        """The window ends above sigma 0: the returned latent is x / (1 - sigma_last)."""
        return bool(self.sigmas) and self.sigmas[-1] != 0.0


def ksampler_advanced_window(sigmas: Sequence[float], start_at_step: int, end_at_step: int,
                             return_with_leftover_noise: bool = False) -> SamplerWindow:
    """The sigmas a KSamplerAdvanced with that window uses, from the full schedule's sigmas.

    ComfyUI (KSampler.sample): first, if end_at_step < len-1, keep sigmas[:end+1] and, unless
    return_with_leftover_noise, set that last sigma to 0 (force_full_denoise: the last step jumps
    to a clean latent). Then, if start_at_step < len-1 of what is left, keep sigmas[start:];
    otherwise nothing is sampled and the input latent comes back as is. An end_at_step at or past
    the last step (the node's default 10000) changes nothing, so leftover noise is then moot.
    """
    window = [float(s) for s in sigmas]
    if end_at_step < len(window) - 1:
        window = window[:end_at_step + 1]
        if not return_with_leftover_noise:
            window[-1] = 0.0
    if start_at_step < len(window) - 1:
        return SamplerWindow(tuple(window[start_at_step:]), skipped=False)
    return SamplerWindow((), skipped=True)


def add_noise_disabled(shape: Sequence[int]) -> torch.Tensor:
    """KSamplerAdvanced add_noise=disable: the "noise" is zeros (so x starts at (1-sigma0)*latent)."""
    return torch.zeros(tuple(int(n) for n in shape), dtype=torch.float32)


def _identity(latent: torch.Tensor) -> torch.Tensor:
    return latent


def run_ksampler_advanced(denoise: Callable[[torch.Tensor, float], torch.Tensor], latent: torch.Tensor,
                          window: SamplerWindow, noise: torch.Tensor | None, *,
                          process_in: Callable[[torch.Tensor], torch.Tensor] = _identity,
                          process_out: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """Reference for one KSamplerAdvanced(euler) on a flow model, for tests and parity checks.

    denoise(x, sigma) -> x0 after CFG (see comfy_flow_step's pieces). noise None = add_noise
    disabled. latent is the LATENT input as ComfyUI holds it (process_out space); process_in/out
    are the latent format's (Wan2.1: (x - mean)/std and x*std + mean).
    """
    if window.skipped:
        return latent
    latent = latent.float()
    noise = torch.zeros_like(latent) if noise is None else noise.to(latent.device, torch.float32)
    if not latent_is_empty(latent):
        latent = process_in(latent)
    x = noise_scaling(window.sigmas[0], noise, latent)
    for sigma, sigma_next in itertools.pairwise(window.sigmas):
        x = euler_step(x, denoise(x, sigma), sigma, sigma_next, kind="denoised")
    return process_out(inverse_noise_scaling(window.sigmas[-1], x).float())
