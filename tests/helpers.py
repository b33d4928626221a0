"""Shared test inputs: the tiny random Wan2.2 model (2 layers, 2 heads) and a small job for it."""

from __future__ import annotations

import torch

from accel.job.settings import JobSettings, ModelSpec, SamplerSettings
from accel.job.job import Job
from accel.job.smoke import smoke_embeddings

TINY = ModelSpec(source="tiny-random", dtype="fp32")


def tiny_job(settings: JobSettings | None = None, latent_hw: tuple[int, int] = (8, 8), frames: int = 3) -> Job:
    return Job(
        cond=smoke_embeddings(1, 32),
        uncond=smoke_embeddings(2, 32),
        latent=torch.zeros(1, 16, frames, *latent_hw),
        settings=settings or JobSettings(sampler=SamplerSettings(steps=12)),
    )


def write_random_lora(path, config: dict, seed: int, rank: int = 4, alpha: float | None = 2.0, scale: float = 0.05):
    """A LoRA file in ComfyUI's ``diffusion_model.`` layout over every attention and FFN Linear of
    an expert with ``config``'s widths (original Wan names), plus a bias delta and a modulation
    delta; seeded random factors."""
    from safetensors.torch import save_file

    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {}
    for block in range(config["num_layers"]):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"blocks.{block}.{attn}.{proj}"] = (dim, dim)
        shapes[f"blocks.{block}.ffn.0"] = (config["ffn_dim"], dim)
        shapes[f"blocks.{block}.ffn.2"] = (dim, config["ffn_dim"])
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (rows, cols) in shapes.items():
        tensors[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * scale
        tensors[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(rank, cols, generator=generator) * scale
        if alpha is not None:
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
    tensors["diffusion_model.blocks.0.ffn.0.diff_b"] = torch.randn(config["ffn_dim"], generator=generator) * scale
    tensors["diffusion_model.blocks.1.diff_m"] = torch.randn(1, 6, dim, generator=generator) * scale
    save_file(tensors, str(path))
    return path
