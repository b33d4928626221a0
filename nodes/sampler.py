"""Ulysses Parallel Sampler: runs the job in the warm worker group, never in ComfyUI's process.

The node's inputs are one dict from schema to execute: to add an input, declare it in
``sampler_inputs`` (with a tooltip) and read it by name in ``job_and_engine`` or ``layout_of``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..accel.diagnostics.render import format_table
from ..accel.errors import JobCancelled, UserInputError
from ..accel.job.image_to_video import conditioning_image, image_channels
from ..accel.job.job import Job, check_job
from ..accel.job.settings import (
    ATTENTION_BACKENDS,
    RESIDENCY_CHOICES,
    SAMPLERS,
    SCHEDULERS,
    EngineOptions,
    JobSettings,
    SamplerSettings,
)
from ..accel.parallel.layout import ParallelLayout
from ..accel.parallel.registry import REGISTRY
from . import comfy
from .comfy import io, ui
from .handles import (
    AUTO_SHIFT,
    CATEGORY,
    NODE_PREFIX,
    CacheConfig,
    Quantization,
    ScmMask,
    WanDualModel,
    schema_check,
    validation_result,
)
from .routes import STORE

log = logging.getLogger(__name__)

AUTO = "auto"
EXPERT_SWITCHES = ("step", "boundary")


def sampler_inputs() -> list:
    model = [
        WanDualModel.Input("model", tooltip="the two experts, from Load Wan2.2 Dual Transformer"),
        io.Conditioning.Input("positive", tooltip="the prompt's conditioning: CLIPTextEncode (umt5), or for "
                                                  "image-to-video WanImageToVideo's positive (it carries the image)"),
        io.Conditioning.Input("negative", tooltip="the negative prompt's conditioning; unused when both cfg are 1.0"),
        io.Latent.Input("latent", tooltip="EmptyHunyuanLatentVideo (text-to-video) or WanImageToVideo's latent "
                                          "(16 channels, Wan2.1 space)"),
    ]
    # Defaults: the official Wan2.2 14B template's 20-step path (euler / simple, cfg 3.5, split in half).
    sampling = [
        io.Int.Input("seed", default=SamplerSettings.seed, min=0, max=2**63 - 1, control_after_generate=True,
                     tooltip="seed of the initial noise (ComfyUI's: the same seed gives the same noise)"),
        io.Int.Input("steps", default=20, min=1, max=1000,
                     tooltip="denoising steps of both experts together (templates: 20, Lightning LoRA: 4)"),
        io.Float.Input("cfg", default=3.5, min=0.0, max=30.0, step=0.1,
                       tooltip="guidance of the high-noise expert; 1.0 turns CFG off (one forward per step)"),
        io.Float.Input("cfg_low_noise", default=3.5, min=0.0, max=30.0, step=0.1,
                       tooltip="guidance of the low-noise expert; 1.0 turns CFG off"),
        io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.1,
                       tooltip="ModelSamplingSD3's shift; 0 = auto: 8 for T2V, 5 for I2V (the templates' 20-step "
                               "paths; their Lightning paths use 5)"),
        io.Combo.Input("sampler_name", options=list(SAMPLERS), default=SamplerSettings.sampler,
                       tooltip="euler: ComfyUI's euler, step for step; wan_flow_unipc: diffusers' flow UniPC, the "
                               "solver of Wan's own pipelines (not ComfyUI's uni_pc)"),
        io.Combo.Input("scheduler", options=list(SCHEDULERS), default=SamplerSettings.scheduler,
                       tooltip="ComfyUI's sigma schedule of the steps (templates: simple)"),
        io.Combo.Input("expert_switch", options=list(EXPERT_SWITCHES), default="step",
                       tooltip="step: the low-noise expert from switch_step on (the templates' two "
                               "KSamplerAdvanced split); boundary: Wan's rule, by the loader's boundary"),
        io.Int.Input("switch_step", default=-1, min=-1, max=1000,
                     tooltip="with expert_switch 'step': the first low-noise step; -1 = half the steps (10 of "
                             "20, 2 of 4, as the templates split)"),
    ]
    parallel = [
        io.String.Input("gpus", default=AUTO,
                        tooltip="'auto' (every GPU ComfyUI sees, else one CPU rank), GPU indices like '0,1', "
                                "or 'cpu' / 'cpu:N' for N CPU ranks (tests)"),
        io.Int.Input("ulysses_degree", default=0, min=0, max=64,
                     tooltip="GPUs that share one sequence; 0: the preset's, else GPUs / cfg degree"),
        io.Boolean.Input("cfg_parallel", default=False,
                         tooltip="cond and uncond on different GPU groups (needs an even number of GPUs)"),
    ]
    engine = [
        io.Boolean.Input("compile", default=False,
                         tooltip="torch.compile the transformer blocks; the first prompt pays the compile once "
                                 "(cached on disk)"),
        io.Combo.Input("attention_backend", options=[AUTO, *ATTENTION_BACKENDS], default=AUTO,
                       tooltip="the workers' attention kernel; auto: the preset's, else PyTorch's SDPA"),
    ]
    handles = [
        CacheConfig.Input("cache_config", optional=True, tooltip="from Cache-DiT Config; empty: no caching"),
        ScmMask.Input("scm_mask", optional=True, tooltip="from SCM Mask; empty: the preset's mask, if any"),
        Quantization.Input("quantization", optional=True, tooltip="from FP8 Quantize; empty: the preset's, if any"),
        # Optional and last: the frontend stores optional widgets after the required ones, so
        # workflows saved before it keep their values in place.
        io.Combo.Input("residency", options=list(RESIDENCY_CHOICES), default=AUTO, optional=True,
                       tooltip="where the experts' weights live on each GPU. auto: the fastest plan that fits the "
                               "GPU's free memory for this prompt; resident: both experts on the GPU; swap: only the "
                               "running expert (the other in host RAM, copied in at the switch); stream: the running "
                               "expert's blocks streamed from host RAM (cards smaller than one expert); shard: both experts "
                               "on the GPUs, their blocks split over the Ulysses group's GPUs by tensor parallelism "
                               "(2+ GPUs; bf16, or FP8 per row or per tensor; host RAM only while loading)"),
    ]
    return [*model, *sampling, *parallel, *engine, *handles]


def parse_layout(gpus: str, ulysses: int, cfg_parallel: bool, gpu_count: int | None = None) -> ParallelLayout:
    """'auto' (every GPU, else one CPU rank), 'cpu' / 'cpu:N' (N CPU ranks on gloo), or '0,1,...'."""
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    text = gpus.strip().lower()
    if text in ("", AUTO):
        devices = tuple(range(gpu_count)) or None
        ranks = gpu_count or 1
    elif text.startswith("cpu"):
        try:
            ranks = int(text.partition(":")[2] or 1)
        except ValueError as error:
            raise UserInputError(f"gpus must be 'auto', 'cpu', 'cpu:N' or GPU indices like 0,1; got {gpus!r}") from error
        devices = None
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


def layout_of(inputs: Mapping[str, Any]) -> ParallelLayout:
    """The layout; a degree of 0 takes the preset's parallelism_config.ulysses_size, if it has one."""
    preset = inputs.get("cache_config")
    degree = inputs["ulysses_degree"] or (getattr(preset, "ulysses_size", None) or 0)
    return parse_layout(inputs["gpus"], degree, inputs["cfg_parallel"])


def conditioning_tensor(conditioning, name: str) -> torch.Tensor:
    if not conditioning:
        raise UserInputError(f"{name} conditioning is empty")
    if len(conditioning) > 1:
        log.warning("%s conditioning has %d entries; the sampler uses the first", name, len(conditioning))
    return conditioning[0][0]


def sampler_settings(inputs: Mapping[str, Any], kind: str) -> SamplerSettings:
    model, steps = inputs["model"], inputs["steps"]
    switch = inputs["switch_step"]
    return SamplerSettings(
        steps=steps, seed=inputs["seed"], cfg_high=inputs["cfg"], cfg_low=inputs["cfg_low_noise"],
        shift=inputs["shift"] or AUTO_SHIFT[kind], sampler=inputs["sampler_name"], scheduler=inputs["scheduler"],
        boundary=model.boundary_or_auto(),
        switch_step=None if inputs["expert_switch"] == "boundary" else (steps // 2 if switch < 0 else switch),
    )


def image_of(positive, negative, latent_shape, uses_negative: bool) -> torch.Tensor | None:
    """The image channels of WanImageToVideo's conditioning, which puts the same image on both sides.
    The pack builds them once for both branches, so sides that differ are refused (ComfyUI would
    build each branch's own, zeros where a side has none)."""
    found, other = conditioning_image(positive), conditioning_image(negative)
    if uses_negative and not _same_image(found, other):
        raise UserInputError(
            "positive and negative carry different start images (or only one of them carries one): connect both "
            "the positive and the negative output of WanImageToVideo (or WanFirstLastFrameToVideo) to the sampler"
        )
    found = found or other
    return None if found is None else image_channels(*found, latent_shape)


def _same_image(a, b) -> bool:
    if a is None or b is None:
        return a is b
    (image_a, mask_a), (image_b, mask_b) = a, b
    masks_equal = mask_a is mask_b if mask_a is None or mask_b is None else torch.equal(mask_a, mask_b)
    return torch.equal(image_a, image_b) and masks_equal


def job_and_engine(inputs: Mapping[str, Any]) -> tuple[Job, EngineOptions]:
    """The job and the engine options from the node's inputs, checked against the model (no GPU work)."""
    model, steps = inputs["model"], inputs["steps"]
    preset, scm_mask, quantization = (inputs.get(k) for k in ("cache_config", "scm_mask", "quantization"))
    sampler = sampler_settings(inputs, model.kind)
    settings = JobSettings(
        sampler=sampler, cache=preset.cache if preset else None,
        scm=scm_mask if scm_mask is not None else (preset.scm_for(steps) if preset else None),
        loras=model.loras,
    )
    base = preset.engine if preset else EngineOptions()
    attention = inputs["attention_backend"]
    engine = dataclasses.replace(
        base,
        quantize=quantization if quantization is not None else base.quantize,
        compile=inputs["compile"] or base.compile,
        attention_backend=base.attention_backend if attention == AUTO else attention,
        residency=inputs.get("residency") or AUTO,
    )
    guided = sampler.uses_uncond("high") or sampler.uses_uncond("low")
    latent = inputs["latent"]["samples"]
    job = Job(cond=conditioning_tensor(inputs["positive"], "positive"),
              uncond=conditioning_tensor(inputs["negative"], "negative") if guided else None,
              latent=latent, settings=settings,
              image=image_of(inputs["positive"], inputs["negative"], latent.shape, guided))
    check_job(model.spec, job)  # before any GPU work
    return job, engine


def check_widgets(node: type, gpus, ulysses_degree, cfg_parallel, sampler_name, scheduler, expert_switch,
                  attention_backend) -> None:
    schema_check(node, ulysses_degree=ulysses_degree, sampler_name=sampler_name, scheduler=scheduler,
                 expert_switch=expert_switch, attention_backend=attention_backend)
    if None not in (gpus, ulysses_degree, cfg_parallel):
        parse_layout(gpus, ulysses_degree, cfg_parallel)


def run(inputs: Mapping[str, Any]) -> tuple[dict, str]:
    """Run the job in the warm worker group: per-step events and progress to the client that queued
    the prompt, the trace saved for the panel's routes. Returns the latent and the decision table."""
    job, engine = job_and_engine(inputs)
    layout = layout_of(inputs)
    now = comfy.executing()  # here, in the prompt worker's thread
    steps = job.settings.sampler.steps
    progress = comfy.Progress(steps, now.node_id)
    group = REGISTRY.acquire(inputs["model"].spec, layout, engine, loras=job.settings.loras,
                             compile_cache_dir=comfy.data_dir() / "compile", latent_shape=tuple(job.latent.shape))

    def on_step(step, records) -> None:
        progress.step()
        comfy.send_event("cachedit.step", {"prompt_id": now.prompt_id, "node": now.node_id, "steps": steps,
                                           "records": [r.to_dict() for r in records]}, now.client_id)

    try:
        result = group.run(job, on_step=on_step, should_cancel=comfy.interrupted)
    except JobCancelled:
        comfy.raise_interrupt()
        raise
    trace = result.trace.to_dict()
    if now.prompt_id is not None:
        STORE.save(now.prompt_id, now.node_id, trace)
    comfy.send_event("cachedit.done", {"prompt_id": now.prompt_id, "node": now.node_id, "summary": trace["summary"],
                                       "info": trace["info"]}, now.client_id)
    return {**inputs["latent"], "samples": result.latent}, format_table(result.trace)


class UlyssesParallelSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}UlyssesParallelSampler",
            display_name="Ulysses Parallel Sampler",
            category=CATEGORY,
            description=(
                "Wan2.2 two-expert sampling in a warm worker group (one process per GPU): Ulysses sequence "
                "parallel, optional CFG parallel (cond and uncond on different GPU groups), cache-dit caching with "
                "the same decision on every GPU, FP8 and compile. gpus: 'auto', '0,1', or 'cpu' / 'cpu:2' for CPU "
                "ranks. The second prompt with the same model and layout reuses the loaded weights. Outputs a "
                "LATENT for ComfyUI's VAEDecode (Wan2.1 VAE) and the per-step decision table; the 'cache-dit' "
                "panel shows them."
            ),
            inputs=sampler_inputs(),
            outputs=[io.Latent.Output(display_name="latent"), io.String.Output(display_name="decisions")],
        )

    @classmethod
    def validate_inputs(cls, gpus, ulysses_degree, cfg_parallel, sampler_name, scheduler, expert_switch,
                        attention_backend) -> bool | str:
        """The layout must fit this machine (the model and latent are links: checked in execute)."""
        return validation_result(check_widgets, cls, gpus, ulysses_degree, cfg_parallel, sampler_name, scheduler,
                                 expert_switch, attention_backend)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        check_widgets(cls, *(inputs[k] for k in ("gpus", "ulysses_degree", "cfg_parallel", "sampler_name", "scheduler",
                                                  "expert_switch", "attention_backend")))  # linked: not validated
        latent, table = run(inputs)
        return io.NodeOutput(latent, table, ui=ui.PreviewText(table))
