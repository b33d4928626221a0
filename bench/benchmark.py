"""What the pack buys on GPUs, measured side by side in one run.

    python bench/benchmark.py --part eager      # cache presets, peers
    python bench/benchmark.py --part scaling    # 1 GPU vs Ulysses 2 vs CFG parallel 2 (needs 2 GPUs)
    python bench/benchmark.py --part compiled   # compile, FP8 + compile, everything on 2 GPUs
    python bench/benchmark.py --part ulysses --height 720 --width 1280 --frames 81   # all GPUs, as SGLang's run
    python bench/benchmark.py --part ulysses --baseline ...   # the same size: 1 GPU against all GPUs, short jobs
    python bench/benchmark.py --part eager --tiny   # the same code on CPU with the tiny model (a dry run)

Full-size random Wan2.2-A14B experts (bf16, built on the GPU) unless --model-path names a diffusers
directory. Each part writes bench/results/<date>-<gpu>-<part>.json; bench/report.py merges the
parts into bench/results/<date>-<gpu>.{json,md}. Ratios are only ever formed between numbers of
the same part, i.e. the same machine and the same run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from accel.job.presets import load_preset  # noqa: E402
from accel.job.settings import (  # noqa: E402
    EngineOptions,
    JobSettings,
    ModelSpec,
    QuantSettings,
    SamplerSettings,
)
from accel.logs import setup_logging  # noqa: E402
from accel.model.loading import load_experts  # noqa: E402
from accel.parallel.group import WorkerGroup  # noqa: E402
from accel.parallel.layout import ParallelLayout  # noqa: E402
from bench.common import (  # noqa: E402
    RESULTS,
    WARM_STEPS,
    device_name,
    relative_error,
    tokens,
    versions,
    video_job,
)
from bench.peer import enable_cachedit_own, masks_for, plain_loop  # noqa: E402


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tiny = args.tiny
        if args.model_path:
            self.spec = ModelSpec(source="diffusers", path=args.model_path, dtype="bf16")
        else:
            self.spec = ModelSpec(source="tiny-random" if self.tiny else "a14b-random", dtype="fp32" if self.tiny else "bf16")
        self.text_dim = 32 if self.tiny else 4096
        self.gpus = 0 if self.tiny else torch.cuda.device_count()
        self.rows: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}  # per started group: start, warm-up and compile seconds
        self.notes: list[str] = []
        self.latents: dict[str, torch.Tensor] = {}

    def layout(self, ulysses: int = 1, cfg: int = 1) -> ParallelLayout:
        world = ulysses * cfg
        return ParallelLayout(ulysses=ulysses, cfg=cfg, devices=None if self.tiny else tuple(range(world)))

    def job(self, steps: int, preset: str = "none"):
        chosen = load_preset(preset)
        settings = JobSettings(sampler=SamplerSettings(steps=steps, seed=self.args.seed, sampler="wan_flow_unipc"),
                               cache=chosen.cache,
                               scm=chosen.scm_for(steps))
        if self.tiny:
            job = video_job(settings, 64, 64, 9, self.text_dim)
            job.cond, job.uncond = job.cond[:, :16], job.uncond[:, :16]
            return job
        return video_job(settings, self.args.height, self.args.width, self.args.frames, self.text_dim)

    def record(self, name: str, steps: int, result=None, seconds: float | None = None, wall: float | None = None,
               **extra) -> None:
        info = result.trace.info if result is not None else {}
        denoise = info.get("denoise_s", seconds)
        row = {"steps": steps, "denoise_s": denoise, "s_per_step": denoise / steps,
               "job_overhead_s": None if wall is None else wall - denoise,
               "peak_mem_gb": max((m for m in info.get("peak_mem_gb_per_rank", []) if m is not None), default=None),
               "compile_s": info.get("compile_s"), **extra}
        if result is not None:
            summary = result.trace.summary()
            row.update(computed=summary["computed"], forwards=summary["forwards"],
                       ranks_agreed=summary["ranks_agreed"], cached_step_cost_ratio=cached_cost(result.trace))
            self.latents[name] = result.latent
        self.rows[name] = row
        print(f"{name:<34} {json.dumps(row, default=str)}", flush=True)

    def group_runs(self, label: str, layout: ParallelLayout, engine: EngineOptions, runs: list[tuple[str, int, str]],
                   warm_steps: int = WARM_STEPS) -> None:
        """Start a group, warm it (and compile), then time each (name, steps, preset) job."""
        began = time.perf_counter()
        try:
            with WorkerGroup(self.spec, layout, engine, start_timeout_s=900) as group:
                start_s = time.perf_counter() - began
                began = time.perf_counter()
                warm = group.run(self.job(warm_steps))
                warm_s = time.perf_counter() - began
                self.groups[label] = {"start_s": start_s, "warmup_s": warm_s,
                                      "warmup_compile_s": warm.trace.info.get("compile_s")}
                print(f"{label}: {self.groups[label]}", flush=True)
                for name, steps, preset in runs:
                    began = time.perf_counter()
                    result = group.run(self.job(steps, preset))
                    self.record(name, steps, result, wall=time.perf_counter() - began, group_start_s=start_s,
                                warmup_s=warm_s, warmup_compile_s=warm.trace.info.get("compile_s"))
        except Exception as error:  # noqa: BLE001 (a failed variant is a note, the others still run)
            traceback.print_exc()
            self.notes.append(f"{label}: failed: {error!r}"[:500])

    def peers(self, steps_short: int, steps_full: int | None) -> None:
        """In this process, on diffusers' own (unfused) forward: the plain two-expert loop and, given
        steps_full, cache-dit's own enable_cache with the sglang-fast settings."""
        device = torch.device("cpu" if self.tiny else f"cuda:{min(1, self.gpus - 1)}")
        try:
            experts = load_experts(self.spec, device)
            plain_loop(experts, self.job(2), device)  # warm the kernels
            latent, seconds = plain_loop(experts, self.job(steps_short), device)
            self.record("plain diffusers loop", steps_short, seconds=seconds)
            if steps_full is not None:
                job = self.job(steps_full, "sglang-fast")
                steps_of, masks = masks_for(job)
                enable_cachedit_own(experts, job.settings.cache, job.settings.scm, steps_of, masks)
                latent, seconds = plain_loop(experts, job, device)
                self.record("cache-dit enable_cache (sglang-fast)", steps_full, seconds=seconds)
                self.latents["cache-dit enable_cache (sglang-fast)"] = latent
            del experts
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.notes.append(f"peers failed: {error!r}"[:500])
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def part_eager(self) -> None:
        full, short = self.args.steps, self.args.short_steps
        self.group_runs("1 GPU eager", self.layout(), EngineOptions(),
                        [("1 GPU bf16 eager, no cache", full, "none"), ("1 GPU bf16 eager, sglang-fast", full, "sglang-fast"),
                         ("1 GPU bf16 eager, sglang-dynamic", full, "sglang-dynamic"),
                         ("1 GPU bf16 eager, no cache (short)", short, "none")])
        self.peers(short, full)

    def part_scaling(self) -> None:
        """Per-step time of 1 GPU, Ulysses 2 (all-to-alls by copy engines, the same in two head
        chunks, then by NCCL) and CFG parallel 2, bf16 eager, no cache."""
        short = self.args.short_steps
        if not self.tiny and self.gpus < 2:
            self.group_runs("1 GPU eager", self.layout(), EngineOptions(),
                            [("1 GPU bf16 eager, no cache (short)", short, "none")])
            self.notes.append("Ulysses 2 and CFG 2: one GPU only")
            return
        self.one_gpu_against_ulysses(2)
        self.group_runs("Ulysses 2, two head chunks", self.layout(ulysses=2), EngineOptions(ulysses_head_chunks=2),
                        [("Ulysses 2 bf16 eager, two head chunks, no cache (short)", short, "none")])
        self.group_runs("Ulysses 2, NCCL all-to-all", self.layout(ulysses=2), EngineOptions(ulysses_copy_engine=False),
                        [("Ulysses 2 bf16 eager, NCCL all-to-all, no cache (short)", short, "none")])
        self.group_runs("CFG parallel 2", self.layout(cfg=2), EngineOptions(),
                        [("CFG 2 bf16 eager, no cache (short)", short, "none")])

    def part_compiled(self) -> None:
        full, short = self.args.steps, self.args.short_steps
        fp8 = EngineOptions(quantize=QuantSettings("float8_per_row"), compile=True)
        self.group_runs("1 GPU eager", self.layout(), EngineOptions(),
                        [("1 GPU bf16 eager, no cache (short)", short, "none")])
        self.group_runs("1 GPU compiled", self.layout(), EngineOptions(compile=True),
                        [("1 GPU bf16 compile, no cache (short)", short, "none")])
        if self.tiny:
            self.notes.append("FP8 needs a CUDA GPU: not run on CPU")
            return
        self.group_runs("1 GPU fp8 compiled (cold compile cache)", self.layout(), fp8,
                        [("1 GPU fp8 compile, no cache (short)", short, "none")])
        if not self.args.skip_restart:
            self.group_runs("1 GPU fp8 compiled (warm compile cache)", self.layout(), fp8, [])
        if self.gpus >= 2:
            self.group_runs("all-in: Ulysses 2 + fp8 + compile + sglang-fast", self.layout(ulysses=2), fp8,
                            [("Ulysses 2 fp8 compile, sglang-fast", full, "sglang-fast")])
        self.peers(short, None)  # compile against diffusers' own eager forward too

    def decoded_psnr(self, bases: dict[int, str]) -> dict[str, float]:
        """With real weights: PSNR of each run's decoded frames against the unaccelerated run's."""
        from bench.quality import decode, load_vae, psnr

        vae = load_vae(self.args.model_path, torch.device("cuda:0" if torch.cuda.is_available() else "cpu"))
        reference = {steps: decode(vae, self.latents[name]) for steps, name in bases.items()}
        return {name: psnr(decode(vae, latent), reference[self.rows[name]["steps"]])
                for name, latent in self.latents.items()
                if name in self.rows and self.rows[name]["steps"] in reference and name not in bases.values()}

    def part_ulysses(self) -> None:
        """SGLang's comparison on all GPUs: Ulysses N, no cache vs sglang-fast vs sglang-dynamic, full steps
        (SGLang, 4 GPUs, 720x1280x81, 40 steps: 8.33 s/step -> 6.09 s/step, 1.37x)."""
        degree = self.ulysses_degree
        if self.args.baseline:
            self.one_gpu_against_ulysses(degree)
            return
        self.group_runs(f"Ulysses {degree}", self.layout(ulysses=degree), EngineOptions(),
                        [(f"Ulysses {degree} bf16 eager, {preset}", self.args.steps, preset)
                         for preset in self.args.presets.split(",")])

    def one_gpu_against_ulysses(self, degree: int) -> None:
        """Per-step time of 1 GPU, then of Ulysses ``degree``: short jobs, bf16 eager, no cache."""
        short = self.args.short_steps
        self.group_runs("1 GPU eager", self.layout(), EngineOptions(),
                        [("1 GPU bf16 eager, no cache (short)", short, "none")])
        self.group_runs(f"Ulysses {degree}", self.layout(ulysses=degree), EngineOptions(),
                        [(f"Ulysses {degree} bf16 eager, no cache (short)", short, "none")])

    @property
    def ulysses_degree(self) -> int:
        """Part ulysses spans every GPU (2 CPU ranks for the dry run)."""
        return 2 if self.tiny else self.gpus

    def write(self, part: str) -> Path:
        # Each accelerated run against the unaccelerated 1-GPU eager bf16 run of the same step count.
        bases = {self.rows[n]["steps"]: n for n in ("1 GPU bf16 eager, no cache", "1 GPU bf16 eager, no cache (short)",
                                                    f"Ulysses {self.ulysses_degree} bf16 eager, none")
                 if n in self.latents}
        errors = {}
        for name, latent in self.latents.items():
            base = bases.get(self.rows[name]["steps"]) if name in self.rows else None
            if base is not None and base != name:
                errors[name] = {"vs": base, "rel_error": relative_error(latent, self.latents[base])}
        quality = self.decoded_psnr(bases) if self.args.model_path else {}
        payload = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device_name(),
            "versions": versions(), "part": part,
            "settings": {"height": self.args.height, "width": self.args.width, "frames": self.args.frames,
                         "tokens": tokens(self.args.height, self.args.width, self.args.frames), "steps": self.args.steps,
                         "short_steps": self.args.short_steps, "cfg": "on (4.0 / 3.0)", "model": self.spec.source,
                         "tiny": self.tiny},
            "rows": self.rows, "groups": self.groups, "latent_rel_error_vs_uncached": errors,
            "psnr_db_vs_uncached": quality, "notes": self.notes,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        gpu = "cpu" if self.tiny else torch.cuda.get_device_name(0).replace(" ", "-")
        if part == "ulysses":  # one file per call: a long run is split across calls by preset
            runs = "baseline" if self.args.baseline else self.args.presets.replace(",", "_")
            part = f"ulysses{self.ulysses_degree}-{runs}"
        path = RESULTS / f"{datetime.date.today()}-{gpu}-{part}.json"
        path.write_text(json.dumps(payload, indent=1, default=str))
        return path


def cached_cost(trace) -> float | None:
    """Mean wall time of a cached forward over a computed one (Fn blocks still run when cached)."""
    cached = [r.wall_ms for r in trace.records if r.decision == "cache"]
    computed = [r.wall_ms for r in trace.records if r.decision == "compute"]
    if not cached or not computed:
        return None
    return (sum(cached) / len(cached)) / (sum(computed) / len(computed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("eager", "scaling", "compiled", "ulysses"), required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with the tiny model")
    parser.add_argument("--model-path", help="a diffusers Wan2.2-T2V-A14B directory (real weights)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--short-steps", type=int, default=4, help="steps of the per-step timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-restart", action="store_true",
                        help="part compiled: skip the FP8 group restart that times a warm compile cache")
    parser.add_argument("--presets", default="none,sglang-fast,sglang-dynamic",
                        help="part ulysses: presets to time (split a long run across calls)")
    parser.add_argument("--baseline", action="store_true",
                        help="part ulysses: instead, 1 GPU against Ulysses over all GPUs, --short-steps, no cache")
    args = parser.parse_args()
    setup_logging()
    bench = Bench(args)
    getattr(bench, f"part_{args.part}")()
    print(f"wrote {bench.write(args.part)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
