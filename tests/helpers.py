"""Shared test inputs: the tiny random Wan2.2 model (2 layers, 2 heads), a small job for it, its experts as
single files (fp8_scaled too), and PSNR for decoded frames."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from accel.job.job import Job
from accel.job.settings import JobSettings, ModelSpec, SamplerSettings
from accel.job.smoke import smoke_embeddings
from accel.model.files import to_original_layout
from accel.model.fp8_scaled import write_fp8_scaled

TINY = ModelSpec(source="tiny-random", dtype="fp32")
FP8_READY = {"attention_head_dim": 16, "ffn_dim": 64}  # widths FP8 matmuls take


def tiny_job(settings: JobSettings | None = None, latent_hw: tuple[int, int] = (8, 8), frames: int = 3) -> Job:
    return Job(
        cond=smoke_embeddings(1, 32),
        uncond=smoke_embeddings(2, 32),
        latent=torch.zeros(1, 16, frames, *latent_hw),
        settings=settings or JobSettings(sampler=SamplerSettings(steps=12)),
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of frames in [0, 1], in float64."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def gloo_rank(rank: int, port: int, work: Callable[..., Any], queue, *args: Any) -> None:
    """A spawned rank of 2 on gloo: puts ``work(rank, *args)`` on ``queue`` (a SimpleQueue: written
    at once), then ends without Python's shutdown, as the workers do (gloo's threads may still be
    freeing the last collective's tensors, which aborts the process during shutdown)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    queue.put(work(rank, *args))
    dist.destroy_process_group()
    os._exit(0)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative L2 error, in float32."""
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def sub(pack, module: str):
    """A module of the pack imported by path (``pack`` is the conftest fixture's module)."""
    return importlib.import_module(f"{pack.__name__}.{module}")


def single_files(tmp_path, experts, fp8_scaled: bool = False) -> ModelSpec:
    paths = []
    for name in ("high", "low"):
        path = tmp_path / f"{name}.safetensors"
        state = to_original_layout(experts.expert(name).state_dict())
        if fp8_scaled:
            write_fp8_scaled(path, state, return_weights=False)
        else:
            from safetensors.torch import save_file

            save_file(state, str(path))
        paths.append(str(path))
    return ModelSpec(source="single-file", high_path=paths[0], low_path=paths[1], dtype=experts.spec.dtype)
