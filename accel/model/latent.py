"""ComfyUI's Wan2.1 latent space (un-normalised) to the experts' normalised space and back."""

from __future__ import annotations

import torch

# comfy.latent_formats.Wan21.latents_mean / latents_std (16 channels).
WAN21_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
LATENT_CHANNELS = 16


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, LATENT_CHANNELS, 1, 1, 1)
    mean = torch.tensor(WAN21_MEAN, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(WAN21_STD, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def process_in(latent: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(latent)
    return (latent - mean) / std


def process_out(latent: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(latent)
    return latent * std + mean
