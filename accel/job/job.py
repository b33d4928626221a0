"""Host-safe: one job (conditioning, latent, settings) and its result, and the check of a job
against a model's architecture without loading weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diagnostics.trace import Trace
from ..model.files import model_config_for
from .settings import JobSettings
from .validate import validate_job


@dataclass
class Job:
    cond: torch.Tensor  # [B, L, text_dim]
    uncond: torch.Tensor | None
    latent: torch.Tensor  # [B, 16, T, H/8, W/8], ComfyUI's un-normalised Wan2.1 space
    settings: JobSettings
    # Image-to-video: the mask and image latent channels after the 16 noisy ones (image_to_video.py)
    image: torch.Tensor | None = None


@dataclass
class JobResult:
    latent: torch.Tensor
    trace: Trace


def validate_for_model(job: Job, model_config: dict) -> None:
    validate_job(job.settings, model_config, tuple(job.latent.shape), tuple(job.cond.shape),
                 None if job.uncond is None else tuple(job.uncond.shape),
                 None if job.image is None else tuple(job.image.shape))


def check_job(spec, job: Job) -> None:
    """Validate a job against a model spec without loading weights (host side)."""
    validate_for_model(job, model_config_for(spec))
