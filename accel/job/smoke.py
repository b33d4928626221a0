"""Seeded stand-ins for text embeddings, so a whole run needs no text encoder (smoke tests only)."""

from __future__ import annotations

import torch

SMOKE_TOKENS = 16


def smoke_embeddings(seed: int, text_dim: int, tokens: int = SMOKE_TOKENS) -> torch.Tensor:
    """[1, tokens, text_dim] of seeded noise: a conditioning of the right width, meaning nothing."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(1, tokens, text_dim, generator=generator)
