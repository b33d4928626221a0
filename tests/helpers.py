"""Shared test inputs: the tiny random Wan2.2 model (2 layers, 2 heads) and a small job for it."""

from __future__ import annotations

import importlib

import torch

from accel.job.job import Job
from accel.job.settings import JobSettings, ModelSpec, SamplerSettings
from accel.job.smoke import smoke_embeddings

TINY = ModelSpec(source="tiny-random", dtype="fp32")


def tiny_job(settings: JobSettings | None = None, latent_hw: tuple[int, int] = (8, 8), frames: int = 3) -> Job:
    return Job(
        cond=smoke_embeddings(1, 32),
        uncond=smoke_embeddings(2, 32),
        latent=torch.zeros(1, 16, frames, *latent_hw),
        settings=settings or JobSettings(sampler=SamplerSettings(steps=12)),
    )


def sub(pack, module: str):
    """A module of the pack imported by path (``pack`` is the conftest fixture's module)."""
    return importlib.import_module(f"{pack.__name__}.{module}")
