"""Helpers shared by the benchmark scripts: jobs of a given size, timing, result tables."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

from accel.job.job import Job
from accel.job.settings import JobSettings
from accel.job.smoke import smoke_embeddings

RESULTS = Path(__file__).resolve().parent / "results"
# Warm-up job length: from step 2 on UniPC's corrector solves a small system (torch.linalg.solve),
# and the first solve in a process starts cuSOLVER (12 ms on an H200), which a timed job should not carry.
WARM_STEPS = 3


def video_job(settings: JobSettings, height: int, width: int, frames: int, text_dim: int) -> Job:
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    return Job(cond=smoke_embeddings(1, text_dim, 512), uncond=smoke_embeddings(2, text_dim, 512),
               latent=latent, settings=settings)


def tokens(height: int, width: int, frames: int) -> int:
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def device_name() -> str:
    if not torch.cuda.is_available():
        return f"cpu ({platform.processor() or platform.machine()})"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


def versions() -> dict[str, str]:
    import cache_dit
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "cache_dit": cache_dit.__version__}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def write_results(name: str, payload: dict, table: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    path = RESULTS / f"{stamp}-{name}"
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    path.with_suffix(".md").write_text(table + "\n")
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) + " |")
    return "\n".join(lines)
