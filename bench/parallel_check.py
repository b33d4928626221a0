"""Worker-group check on GPUs: decision parity with NCCL (tiny model) and Ulysses / CFG-parallel
timing with full-size random Wan2.2-A14B experts.

    python bench/parallel_check.py --gpus 2 [--steps 4] [--height 480 --width 832 --frames 33]

Writes bench/results/<date>-parallel-<gpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from accel.job.settings import CacheSettings, JobSettings, ModelSpec, SamplerSettings  # noqa: E402
from accel.logs import setup_logging  # noqa: E402
from accel.model.loading import save_random_experts  # noqa: E402
from accel.parallel.group import WorkerGroup  # noqa: E402
from accel.parallel.layout import ParallelLayout  # noqa: E402
from accel.sampling.loop import run_job  # noqa: E402
from accel.sampling.runtime import Runtime  # noqa: E402
from accel.job.scm import build_scm  # noqa: E402
from bench.common import WARM_STEPS, device_name, markdown_table, relative_error, tokens, versions, video_job, write_results  # noqa: E402


def parity(gpus: int, root: Path) -> list[list]:
    """Tiny model with as many heads as GPUs, fp32: every layout must decide exactly as one process
    and agree across ranks."""
    spec = save_random_experts(root, num_attention_heads=gpus)
    single_runtime = Runtime.load(spec, "cuda:0")
    rows = []
    layouts = [ParallelLayout(ulysses=gpus, devices=tuple(range(gpus))),
               ParallelLayout(cfg=2, ulysses=gpus // 2, devices=tuple(range(gpus)))]
    for layout in layouts:
        with WorkerGroup(spec, layout) as group:
            for policy in ("dynamic", "static"):
                for hw in ((8, 8), (6, 10)):  # 48 tokens, and 45 (uneven shards)
                    settings = JobSettings(sampler=SamplerSettings(steps=40), cache=CacheSettings(),
                                           scm=build_scm(40, "fast", policy=policy))
                    job = video_job(settings, hw[0] * 8, hw[1] * 8, 9, 32)
                    job.cond, job.uncond = job.cond[:, :16], job.uncond[:, :16]
                    single = run_job(single_runtime, job)
                    parallel = group.run(job)
                    same = sorted((r.step, r.expert, r.branch, r.decision) for r in single.trace.records) == \
                        sorted((r.step, r.expert, r.branch, r.decision) for r in parallel.trace.records)
                    rows.append([f"cfg{layout.cfg} x ulysses{layout.ulysses}", policy, hw[0] * hw[1] * 3 // 4,
                                 same, parallel.trace.summary()["ranks_agreed"],
                                 relative_error(parallel.latent, single.latent),
                                 parallel.trace.summary()["computed"]])
    return rows


def timing(gpus: int, steps: int, height: int, width: int, frames: int) -> tuple[list[list], dict]:
    spec = ModelSpec(source="a14b-random", dtype="bf16")
    settings = JobSettings(sampler=SamplerSettings(steps=steps))
    job = video_job(settings, height, width, frames, 4096)
    warm = video_job(JobSettings(sampler=SamplerSettings(steps=WARM_STEPS)), height, width, frames, 4096)
    layouts = {"1 GPU": ParallelLayout(devices=(0,))}
    if gpus >= 2:
        layouts["Ulysses 2"] = ParallelLayout(ulysses=2, devices=(0, 1))
        layouts["CFG parallel 2"] = ParallelLayout(cfg=2, devices=(0, 1))
    rows, seconds, latents = [], {}, {}
    for name, layout in layouts.items():
        began = time.perf_counter()
        with WorkerGroup(spec, layout) as group:
            start_s = time.perf_counter() - began
            group.run(warm)
            began = time.perf_counter()
            result = group.run(job)
            wall = time.perf_counter() - began
        denoise = result.trace.info["denoise_s"]
        seconds[name] = denoise
        latents[name] = result.latent
        rows.append([name, round(start_s, 1), denoise, denoise / steps, wall - denoise,
                     max(m for m in result.trace.info["peak_mem_gb_per_rank"] if m is not None)])
    base = seconds["1 GPU"]
    for row in rows:
        row.append(base / seconds[row[0]])
        row.append(relative_error(latents[row[0]], latents["1 GPU"]))
    return rows, seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as root:
        parity_rows = parity(args.gpus, Path(root)) if args.gpus >= 2 else []
    table = [f"# Worker group check, {datetime.date.today()}, {device_name()}", "", f"versions: {versions()}", ""]
    table += [f"## Decision parity (tiny random model, {args.gpus} heads, fp32, NCCL, 40 steps, SCM fast, default DBCache)", "",
              markdown_table(["layout", "policy", "tokens", "decisions == 1 process", "ranks agreed",
                              "latent rel. error", "computed forwards"], parity_rows), ""]
    timing_rows: list = []
    if not args.skip_timing:
        timing_rows, _ = timing(args.gpus, args.steps, args.height, args.width, args.frames)
        table += [f"## Timing: random Wan2.2-A14B experts (bf16), {args.height}x{args.width}, {args.frames} frames "
                  f"({tokens(args.height, args.width, args.frames)} tokens), {args.steps} steps, CFG on, no cache", "",
                  markdown_table(["layout", "group start s", "denoise s", "s/step", "job overhead s",
                                  "peak GB/rank", "speedup vs 1 GPU", "latent rel. error vs 1 GPU"], timing_rows), ""]
    text = "\n".join(table)
    print(text)
    gpu = torch.cuda.get_device_name(0).replace(" ", "-") if torch.cuda.is_available() else "cpu"
    write_results(f"parallel-{args.gpus}x{gpu}", {"parity": parity_rows, "timing": timing_rows, "args": vars(args),
                                                  "device": device_name(), "versions": versions()}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
