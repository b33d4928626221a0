"""Command line: ``python -m accel demo`` (tiny random model, decision table), ``queue`` and
``make-smoke-lora``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .errors import UserInputError
from .job.settings import (
    SCM_POLICIES,
    SCM_PRESETS,
    CacheSettings,
    EngineOptions,
    JobSettings,
    ModelSpec,
    SamplerSettings,
)
from .logs import setup_logging


def _demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="run the tiny random Wan2.2 model and print its cache decisions")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="where trace.json and decisions.png go")
    demo.add_argument("--steps", type=int, default=40)
    demo.add_argument("--preset", choices=(*SCM_PRESETS, "none"), default="fast", help="SCM step mask preset")
    demo.add_argument("--policy", choices=SCM_POLICIES, default="dynamic")
    demo.add_argument("--no-cache", action="store_true", help="plain sampling, no cache-dit")
    demo.add_argument("--config", help="a preset from configs/ (name or YAML path); replaces --preset/--policy")
    demo.add_argument("--ranks", type=int, default=1, help="worker processes (CPU: gloo)")
    demo.add_argument("--ulysses", type=int, default=None, help="Ulysses degree (default: all ranks)")
    demo.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different rank groups")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--frames", type=int, default=9, help="video frames (latent frames = (frames-1)/4+1)")
    demo.add_argument("--height", type=int, default=64)
    demo.add_argument("--width", type=int, default=64)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .diagnostics.render import format_table, write_chart
    from .job.presets import load_preset
    from .job.scm import build_scm
    from .job.smoke import smoke_embeddings

    spec = ModelSpec(source="tiny-random", dtype="fp32")
    sampler = SamplerSettings(steps=args.steps, seed=args.seed)
    engine = EngineOptions()
    if args.config:
        preset = load_preset(args.config)
        settings = JobSettings(sampler=sampler, cache=preset.cache, scm=preset.scm_for(args.steps))
        engine = preset.engine
    else:
        settings = JobSettings(
            sampler=sampler,
            cache=None if args.no_cache else CacheSettings(),
            scm=None if args.no_cache or args.preset == "none" else build_scm(args.steps, args.preset,
                                                                             policy=args.policy),
        )
    latent = torch.zeros(1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    cond, uncond = smoke_embeddings(args.seed, 32), smoke_embeddings(args.seed + 1, 32)
    print("tiny-random Wan2.2 (2 layers, random weights): the output is noise; this shows the cache decisions.")
    result = _run(spec, engine, settings, cond, uncond, latent, args)
    args.out.mkdir(parents=True, exist_ok=True)
    result.trace.write_json(args.out / "trace.json")
    write_chart(result.trace, args.out / "decisions.png")
    print(format_table(result.trace))
    print(f"\nwrote {args.out / 'trace.json'} and {args.out / 'decisions.png'}")
    return 0


@contextlib.contextmanager
def _progress(steps: int):
    from tqdm import tqdm

    with tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr) as bar:
        yield lambda step, records: bar.update(1)


def _run(spec, engine, settings, cond, uncond, latent, args):
    from .job.job import Job
    from .sampling.loop import run_job
    from .sampling.runtime import Runtime

    job = Job(cond=cond, uncond=uncond, latent=latent, settings=settings)
    if args.ranks <= 1:
        runtime = Runtime.load(spec, "cpu", engine)
        with _progress(settings.sampler.steps) as on_step:
            return run_job(runtime, job, on_step=on_step)
    from .parallel.group import ParallelLayout, WorkerGroup

    layout = ParallelLayout.for_ranks(args.ranks, ulysses=args.ulysses, cfg_parallel=args.cfg_parallel)
    with WorkerGroup(spec, layout, engine) as group, _progress(settings.sampler.steps) as on_step:
        return group.run(job, on_step=on_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accel", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    queue = sub.add_parser("queue", help="run an API-format workflow on a ComfyUI server and print its decisions")
    queue.add_argument("workflow", type=Path)
    queue.add_argument("--server", default="http://127.0.0.1:8188")
    lora = sub.add_parser("make-smoke-lora", help="write a tiny random LoRA for the smoke workflows (noise, no download)")
    lora.add_argument("path", type=Path, help="e.g. ComfyUI/models/loras/cachedit_tiny_random_lora.safetensors")
    lora.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "queue":
        from .client import queue_command

        return queue_command(args.workflow, args.server)
    if args.command == "make-smoke-lora":
        from .model.files import TINY_CONFIG
        from .model.lora import write_random_lora

        print(f"wrote {write_random_lora(args.path, TINY_CONFIG, args.seed)} (the tiny random models' widths)")
        return 0
    try:
        return _demo(args)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

