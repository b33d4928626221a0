"""Real-weight quality: decode latents with the model's own Wan VAE and compare frames (PSNR)."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def load_vae(model_path: str | Path, device: torch.device):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(Path(model_path) / "vae", torch_dtype=torch.float32).to(device).eval()


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1] from a latent in the Wan2.1 (un-normalised) space the sampler returns."""
    device = next(vae.parameters()).device
    with torch.no_grad():
        frames = vae.decode(latent.to(device, torch.float32)).sample
    return ((frames.clamp(-1, 1) + 1) / 2).cpu()


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((frames - reference) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
