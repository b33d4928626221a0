"""Ulysses Parallel Sampler: runs the job in the warm worker group, never in ComfyUI's process."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..accel.diagnostics.render import format_table
from ..accel.errors import JobCancelled, UserInputError
from ..accel.job.job import Job, check_job
from ..accel.job.settings import (
    ATTENTION_BACKENDS,
    SCHEDULERS,
    EngineOptions,
    JobSettings,
    SamplerSettings,
)
from ..accel.parallel.layout import ParallelLayout
from ..accel.parallel.registry import REGISTRY
from . import comfy
from .handles import CACHE_CONFIG, CATEGORY, MODEL, QUANT, SCM_MASK, validation_result
from .routes import STORE

log = logging.getLogger(__name__)

AUTO = "auto"


def parse_layout(gpus: str, ulysses: int, cfg_parallel: bool, gpu_count: int | None = None) -> ParallelLayout:
    """'auto' (every GPU, else one CPU rank), 'cpu' / 'cpu:N' (N CPU ranks on gloo), or '0,1,...'."""
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    text = gpus.strip().lower()
    if text in ("", AUTO):
        devices = tuple(range(gpu_count)) or None
        ranks = gpu_count or 1
    elif text.startswith("cpu"):
        devices, ranks = None, int(text.partition(":")[2] or 1)
    else:
        try:
            devices = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise UserInputError(f"gpus must be 'auto', 'cpu', 'cpu:N' or GPU indices like 0,1; got {gpus!r}") from error
        missing = [d for d in devices if not 0 <= d < gpu_count]
        if missing:
            raise UserInputError(f"GPU {missing} not found: this machine has {gpu_count} GPU(s)")
        ranks = len(devices)
    return ParallelLayout.for_ranks(ranks, ulysses=ulysses or None, cfg_parallel=cfg_parallel, devices=devices)


def conditioning_tensor(conditioning, name: str) -> torch.Tensor:
    if not conditioning:
        raise UserInputError(f"{name} conditioning is empty")
    if len(conditioning) > 1:
        log.warning("%s conditioning has %d entries; the sampler uses the first", name, len(conditioning))
    return conditioning[0][0]


class UlyssesParallelSampler:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "decisions")
    FUNCTION = "sample"
    DESCRIPTION = (
        "Wan2.2 two-expert sampling in a warm worker group (one process per GPU): Ulysses sequence parallel, "
        "optional CFG parallel (cond and uncond on different GPU groups), cache-dit caching with the same "
        "decision on every GPU, FP8 and compile. gpus: 'auto', '0,1', or 'cpu' / 'cpu:2' for CPU ranks. "
        "The second prompt with the same model and layout reuses the loaded weights. Outputs a LATENT for "
        "ComfyUI's VAEDecode (Wan2.1 VAE) and the per-step decision table; the 'cache-dit' panel shows them."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent": ("LATENT", {"tooltip": "e.g. EmptyHunyuanLatentVideo (16 channels, Wan2.1 space)"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "guidance of the high-noise expert; 1.0 turns CFG off"}),
                "cfg_low_noise": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "shift": ("FLOAT", {"default": 12.0, "min": 0.1, "max": 100.0, "step": 0.1}),
                "scheduler": (list(SCHEDULERS), {"default": "unipc"}),
                "gpus": ("STRING", {"default": AUTO}),
                "ulysses_degree": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "0: GPUs / cfg degree"}),
                "cfg_parallel": ("BOOLEAN", {"default": False}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile the transformer blocks; the "
                                        "first prompt pays the compile once (cached on disk)"}),
                "attention_backend": ([AUTO, *ATTENTION_BACKENDS], {"default": AUTO}),
            },
            "optional": {
                "cache_config": (CACHE_CONFIG,),
                "scm_mask": (SCM_MASK,),
                "quantization": (QUANT,),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, gpus, ulysses_degree, cfg_parallel):
        return validation_result(parse_layout, gpus, ulysses_degree, cfg_parallel)

    @staticmethod
    def job_and_engine(model, positive, negative, latent, seed, steps, cfg, cfg_low_noise, shift, scheduler,
                       compile, attention_backend, cache_config=None, scm_mask=None, quantization=None):
        preset = cache_config
        sampler = SamplerSettings(steps=steps, seed=seed, cfg_high=cfg, cfg_low=cfg_low_noise, shift=shift,
                                  scheduler=scheduler, boundary=model.boundary)
        settings = JobSettings(
            sampler=sampler, cache=preset.cache if preset else None,
            scm=scm_mask if scm_mask is not None else (preset.scm_for(steps) if preset else None),
        )
        base = preset.engine if preset else EngineOptions()
        engine = dataclasses.replace(
            base,
            quantize=quantization if quantization is not None else base.quantize,
            compile=compile or base.compile,
            attention_backend=base.attention_backend if attention_backend == AUTO else attention_backend,
        )
        guided = cfg > 1.0 or cfg_low_noise > 1.0
        job = Job(cond=conditioning_tensor(positive, "positive"),
                  uncond=conditioning_tensor(negative, "negative") if guided else None,
                  latent=latent["samples"], settings=settings)
        check_job(model.spec, job)  # before any GPU work
        return job, engine

    def sample(self, model, positive, negative, latent, seed, steps, cfg, cfg_low_noise, shift, scheduler, gpus,
               ulysses_degree, cfg_parallel, compile, attention_backend, cache_config=None, scm_mask=None,
               quantization=None):
        job, engine = self.job_and_engine(model, positive, negative, latent, seed, steps, cfg, cfg_low_noise, shift,
                                          scheduler, compile, attention_backend, cache_config, scm_mask, quantization)
        layout = parse_layout(gpus, ulysses_degree, cfg_parallel)
        prompt_id, node_id = comfy.executing()
        progress = comfy.Progress(steps, node_id)
        group = REGISTRY.acquire(model.spec, layout, engine, compile_cache_dir=comfy.data_dir() / "compile")

        def on_step(step, records) -> None:
            progress.step()
            comfy.send_event("cachedit.step", {"prompt_id": prompt_id, "node": node_id, "steps": steps,
                                               "records": [r.to_dict() for r in records]})

        try:
            result = group.run(job, on_step=on_step, should_cancel=comfy.interrupted)
        except JobCancelled:
            comfy.raise_interrupt()
            raise
        trace = result.trace.to_dict()
        if prompt_id is not None:
            STORE.save(prompt_id, node_id, trace)
        comfy.send_event("cachedit.done", {"prompt_id": prompt_id, "node": node_id, "summary": trace["summary"],
                                           "info": trace["info"]})
        return ({**latent, "samples": result.latent}, format_table(result.trace))
