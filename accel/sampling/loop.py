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
from ..job.scm import expert_masks
from ..job.settings import EXPERTS
from ..model.engine import compile_seconds
from ..model.latent import process_in, process_out
from .runtime import Runtime
from .schedules import expert_of_steps, make_scheduler, place_on, solve_without_sync
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
    device, topology = runtime.device, runtime.topology
    dtype = runtime.experts.high.dtype
    scheduler = make_scheduler(sampler)
    timesteps = scheduler.timesteps  # stays on the CPU (place_on moves the scheduler's own): read without a sync
    experts_of_step = expert_of_steps(timesteps, sampler.boundary)
    masks = expert_masks(settings.scm, experts_of_step) if settings.scm is not None else {}
    plans = {
        expert: ExpertPlan(
            steps=experts_of_step.count(expert),
            config=settings.cache.for_expert(expert) if settings.cache is not None else None,
            mask=masks.get(expert),
            policy=settings.scm.policy if settings.scm is not None else "dynamic",
            separate_cfg=sampler.guidance(expert) > 1.0 and not topology.cfg_parallel,
        )
        for expert in EXPERTS
        if expert in experts_of_step
    }
    runtime.caches.refresh(plans)

    batch = job.latent.shape[0]
    texts = {"cond": job.cond, "uncond": job.uncond}
    texts = {k: None if v is None else v.to(device, dtype).expand(batch, -1, -1) for k, v in texts.items()}
    generator = torch.Generator("cpu").manual_seed(sampler.seed)
    noise = torch.randn(job.latent.shape, generator=generator, dtype=torch.float32)
    sigma0 = float(scheduler.sigmas[0])
    latents = (sigma0 * noise + (1.0 - sigma0) * process_in(job.latent.float())).to(device)
    place_on(scheduler, device)

    trace = Trace(steps=sampler.steps, info={"settings": settings.to_dict(),
                                             "model": dataclasses.asdict(runtime.experts.spec)})
    local_step = {expert: 0 for expert in EXPERTS}
    compile_wall_s = 0.0  # wall time of the forwards that compiled (graph capture and kernel builds)
    stopwatch = Stopwatch(device)
    step_log = StepLog(stopwatch, topology, trace, on_step)
    started = time.perf_counter()
    with torch.no_grad(), patched_similarity(runtime.caches.manager, topology.sp_group):
        for step, t in enumerate(timesteps):
            if should_cancel is not None and should_cancel():
                step_log.flush()  # every finished step is reported
                raise JobCancelled(f"cancelled before step {step} of {sampler.steps}")
            expert = experts_of_step[step]
            guidance = sampler.guidance(expert)
            branches = ["cond", "uncond"] if guidance > 1.0 else ["cond"]
            module = runtime.experts.expert(expert)
            model_in = latents.to(dtype)
            timestep = scheduler.timesteps[step].expand(batch)
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
                    taylorseer=decision.taylorseer, wall_ms=0.0, timestep=float(t), local_step=decision.local_step,
                ))
            step_log.add(step, records, marks)  # the previous step's records, while these forwards run
            preds = topology.exchange(preds, branches)
            pred = preds["cond"].float()
            if guidance > 1.0:
                uncond = preds["uncond"].float()
                pred = uncond + guidance * (pred - uncond)
            with solve_without_sync():
                latents = scheduler.step(pred, scheduler.timesteps[step], latents, return_dict=False)[0]
            local_step[expert] += 1
        step_log.flush()
    synchronize(device)
    trace.info["denoise_s"] = time.perf_counter() - started
    trace.info["compile_s"] = compile_wall_s
    if device.type == "cuda":
        trace.info["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return JobResult(latent=process_out(latents.float()).cpu(), trace=trace)
