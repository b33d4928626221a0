"""Seeded stand-ins for text embeddings, so a whole run needs no text encoder (smoke tests only)."""

from __future__ import annotations

import torch

SMOKE_TOKENS = 16


def smoke_embeddings(seed: int, text_dim: int, tokens: int = SMOKE_TOKENS) -> torch.Tensor:
    """[1, tokens, text_dim] of seeded noise: a conditioning of the right width, meaning nothing."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(1, tokens, text_dim, generator=generator)


def smoke_image(seed: int, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded stand-in for WanImageToVideo's (concat_latent_image, concat_mask): a random image
    latent of the latent's size, the first latent frame marked known."""
    batch, channels, frames, height, width = latent_shape
    generator = torch.Generator("cpu").manual_seed(seed + 1)
    image = torch.randn(1, channels, frames, height, width, generator=generator)
    mask = torch.ones(1, 1, frames, height, width)
    mask[:, :, 0] = 0.0
    return image, mask
