"""The denoising loop of one job, in one process or on one rank of a worker group."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch

from ..caching.contexts import ExpertPlan
from ..caching.similarity import patched_similarity
from ..diagnostics.trace import StepRecord, Trace
from ..errors import JobCancelled
from ..job.job import Job, JobResult, validate_for_model
from ..job.memory import job_tokens
from ..job.scm import expert_masks
from ..job.settings import EXPERTS
from ..model.engine import compile_seconds
from ..model.latent import process_in, process_out
from .comfy_sigmas import (
    comfy_noise,
    inverse_noise_scaling,
    latent_is_empty,
    noise_scaling,
)
from .runtime import Runtime
from .schedules import make_sampler
from .topology import Topology

log = logging.getLogger(__name__)


def expert_forward(module: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                   text: torch.Tensor) -> torch.Tensor:
    return module(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """GPU time of each forward without a sync per forward (which would idle the GPU while the
    CPU issues the next one): CUDA events, read by StepLog one step late."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        if not self.cuda:
            return (end - start) * 1e3
        end.synchronize()
        return start.elapsed_time(end)


class StepLog:
    """Each step's records, finished one step late. Reading a step's GPU times waits for its work;
    done once the next step's forwards are queued, neither that wait nor gathering the records
    across ranks and reporting progress leaves the GPU idle."""

    def __init__(self, stopwatch: Stopwatch, topology: Topology, trace: Trace,
                 on_step: Callable[[int, list[StepRecord]], None] | None):
        self.stopwatch, self.topology, self.trace, self.on_step = stopwatch, topology, trace, on_step
        self.pending: tuple[int, list[StepRecord], list] | None = None

    def add(self, step: int, records: list[StepRecord], marks: list) -> None:
        self.flush()
        self.pending = (step, records, marks)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, records, marks = self.pending
        self.pending = None
        for record, (start, end) in zip(records, marks):
            record.wall_ms = self.stopwatch.ms(start, end)
        step_records = self.topology.gather_records(records)
        self.trace.add(step_records)
        if self.on_step is not None:
            self.on_step(step, step_records)


def run_job(
    runtime: Runtime,
    job: Job,
    *,
    on_step: Callable[[int, list[StepRecord]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> JobResult:
    settings = job.settings
    sampler = settings.sampler
    validate_for_model(job, dict(runtime.experts.config))
    started_loras = time.perf_counter()
    changed_loras = settings.loras != runtime.loras.chain
    runtime.apply_loras(settings.loras)
    device, topology = runtime.device, runtime.topology
    dtype = runtime.experts.high.dtype
    experts_of_step = sampler.experts()
    masks = expert_masks(settings.scm, experts_of_step) if settings.scm is not None else {}
    plans = {
        expert: ExpertPlan(
            steps=experts_of_step.count(expert),
            config=settings.cache.for_expert(expert) if settings.cache is not None else None,
            mask=masks.get(expert),
            policy=settings.scm.policy if settings.scm is not None else "dynamic",
            separate_cfg=sampler.uses_uncond(expert) and not topology.cfg_parallel,
        )
        for expert in EXPERTS
        if expert in experts_of_step
    }
    runtime.caches.refresh(plans)
    # The job's first expert onto the device (swap / stream plans; the next one too if it fits).
    runtime.residency.begin_job(experts_of_step, job_tokens(job.latent.shape, runtime.experts.config["patch_size"]))

    batch = job.latent.shape[0]
    texts = {"cond": job.cond, "uncond": job.uncond}
    texts = {k: None if v is None else v.to(device, dtype).expand(batch, -1, -1) for k, v in texts.items()}
    sigmas = sampler.sigmas()
    latents = start_latent(job.latent, comfy_noise(sampler.seed, job.latent.shape), sigmas[0]).to(device)
    schedule = make_sampler(sampler, device)
    model_input = ModelInput(job.image, latents, dtype)
    # The templates' two KSamplerAdvanced nodes hand the latent over at the switch step.
    hand_over = sampler.switch_step if sampler.switch_step is not None and 0 < sampler.switch_step < sampler.steps \
        else None

    trace = Trace(steps=sampler.steps, info={"settings": settings.to_dict(),
                                             "model": dataclasses.asdict(runtime.experts.spec),
                                             "switch": switch_of(sampler, experts_of_step),
                                             "notes": runtime.notes})
    if changed_loras:
        trace.info["lora_change_s"] = time.perf_counter() - started_loras
    local_step = {expert: 0 for expert in EXPERTS}
    compile_wall_s = 0.0  # wall time of the forwards that compiled (graph capture and kernel builds)
    stopwatch = Stopwatch(device)
    step_log = StepLog(stopwatch, topology, trace, on_step)
    started = time.perf_counter()
    with torch.no_grad(), patched_similarity(runtime.caches.manager, topology.sp_group):
        for step, sigma in enumerate(sigmas[:-1]):
            if should_cancel is not None and should_cancel():
                step_log.flush()  # every finished step is reported
                raise JobCancelled(f"cancelled before step {step} of {sampler.steps}")
            if step == hand_over:
                latents = leftover_noise_round_trip(latents, sigma)
            expert = experts_of_step[step]
            if step and expert != experts_of_step[step - 1]:
                runtime.residency.switch_to(expert)  # the expert switch: its weights onto the device
            branches = ["cond", "uncond"] if sampler.uses_uncond(expert) else ["cond"]
            module = runtime.experts.expert(expert)
            model_in = model_input.of(latents)
            timestep = schedule.timesteps[step].expand(batch)
            scm_bit = masks[expert][local_step[expert]] if masks else None
            preds: dict[str, torch.Tensor] = {}
            records: list[StepRecord] = []
            marks = []
            for branch in topology.branches_here(branches):
                begin, compiled_before = time.perf_counter(), compile_seconds()
                start = stopwatch.mark()
                preds[branch] = expert_forward(module, model_in, timestep, texts[branch])
                marks.append((start, stopwatch.mark()))
                if compile_seconds() > compiled_before:
                    compile_wall_s += time.perf_counter() - begin
                decision = runtime.caches.last_decision(expert)
                records.append(StepRecord(
                    step=step, expert=expert, branch=branch, scm=scm_bit,
                    decision="cache" if decision.cached else "compute",
                    residual_diff=decision.residual_diff, threshold=decision.threshold,
                    taylorseer=decision.taylorseer, wall_ms=0.0, timestep=sigma * 1000.0,
                    local_step=decision.local_step,
                ))
            step_log.add(step, records, marks)  # the previous step's records, while these forwards run
            preds = topology.exchange(preds, branches)
            latents = schedule.step(latents, preds["cond"], preds.get("uncond"), sampler.guidance(expert), step)
            local_step[expert] += 1
        step_log.flush()
    synchronize(device)
    trace.info["denoise_s"] = time.perf_counter() - started
    trace.info["compile_s"] = compile_wall_s
    trace.info["residency"] = runtime.residency.end_job()  # the plan and what moved, when
    if device.type == "cuda":
        trace.info["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return JobResult(latent=process_out(inverse_noise_scaling(sigmas[-1], latents.float())).cpu(), trace=trace)


class ModelInput:
    """The experts' input of a step: the latent in the compute dtype, and for image-to-video the
    job's image channels after it, written into one buffer once per job."""

    def __init__(self, image: torch.Tensor | None, latents: torch.Tensor, dtype: torch.dtype):
        self.dtype = dtype
        self.buffer = None
        if image is not None:
            channels = latents.shape[1]
            self.buffer = torch.empty((latents.shape[0], channels + image.shape[1], *latents.shape[2:]),
                                      dtype=dtype, device=latents.device)
            self.buffer[:, channels:] = image.to(latents.device, dtype)

    def of(self, latents: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            return latents.to(self.dtype)
        self.buffer[:, :latents.shape[1]] = latents
        return self.buffer


def start_latent(latent: torch.Tensor, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
    """ComfyUI's start: the LATENT into the model's space (an all-zero one is left as it is, as
    ComfyUI does), then noised to the first sigma."""
    latent = latent.float()
    if not latent_is_empty(latent):
        latent = process_in(latent)
    return noise_scaling(sigma0, noise, latent)


def leftover_noise_round_trip(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """What happens between the templates' two KSamplerAdvanced nodes: the first returns its
    noisy latent un-scaled and in ComfyUI's latent space, the second (add_noise off) takes it back
    in and scales it to sigma again. The same values up to float32 rounding, kept here so that a
    bf16 model sees the very inputs it sees in ComfyUI."""
    handed = process_out(inverse_noise_scaling(sigma, x.float()))
    return noise_scaling(sigma, torch.zeros_like(handed), process_in(handed))


def switch_of(sampler, experts_of_step: list[str]) -> dict:
    """Which step the low-noise expert took over at, and by which rule (for the decision table)."""
    step = experts_of_step.index("low") if "low" in experts_of_step else None
    rule = "switch_step" if sampler.switch_step is not None else f"boundary {sampler.boundary}"
    return {"step": step, "rule": rule}

