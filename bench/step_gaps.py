"""Where a job's time goes beyond its forwards, 1 GPU against Ulysses 2 (bf16 eager, no cache).

    python bench/step_gaps.py [--steps 8] [--height 480 --width 832 --frames 33]

For each layout one warm worker group runs an N-step job with ACCEL_PROFILE_DIR set: per step, the
job's time against its forwards' GPU time (CUDA events), rank 0's GPU timeline (idle, communication
and copies with nothing beside them, the longest idle gaps with the kernels around them) and the
lines where the CPU waited for the GPU. The profiler slows the job: a diagnosis, not a timing.
Writes bench/results/<date>-<gpu>-step-gaps.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from accel.job.settings import JobSettings, ModelSpec, SamplerSettings  # noqa: E402
from accel.logs import setup_logging  # noqa: E402
from accel.parallel.group import WorkerGroup  # noqa: E402
from accel.parallel.layout import ParallelLayout  # noqa: E402
from bench.common import WARM_STEPS, device_name, markdown_table, tokens, versions, video_job, write_results  # noqa: E402


def diagnose(label: str, layout: ParallelLayout, args: argparse.Namespace, root: Path) -> dict:
    os.environ["ACCEL_PROFILE_DIR"] = str(root / label)  # read by the workers this group starts
    spec = ModelSpec(source="a14b-random", dtype="bf16")
    job = lambda steps: video_job(JobSettings(sampler=SamplerSettings(steps=steps)),  # noqa: E731
                                  args.height, args.width, args.frames, 4096)
    with WorkerGroup(spec, layout, start_timeout_s=900) as group:
        group.run(job(WARM_STEPS))  # job 1: warm-up
        result = group.run(job(args.steps))  # job 2
    timeline = json.loads((root / label / "rank0-job2.json").read_text())
    forwards_ms = sum(r.wall_ms for r in result.trace.records) / args.steps
    step_ms = result.trace.info["denoise_s"] * 1e3 / args.steps
    return {"layout": label, "step_ms": step_ms, "forwards_ms": forwards_ms, "beyond_forwards_ms": step_ms - forwards_ms,
            "per_step": {k: timeline[k] / args.steps for k in ("idle_ms", "comm_exposed_ms", "copy_exposed_ms")},
            "gaps": timeline["gaps"], "cpu_waits": timeline["cpu_waits"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=33)
    args = parser.parse_args()
    setup_logging()
    layouts = {"1 GPU": ParallelLayout(devices=(0,))}
    if torch.cuda.device_count() >= 2:
        layouts["Ulysses 2"] = ParallelLayout(ulysses=2, devices=(0, 1))
    with tempfile.TemporaryDirectory() as root:
        found = [diagnose(label, layout, args, Path(root)) for label, layout in layouts.items()]
    lines = [f"# Time per step beyond the forwards, {device_name()}", "", f"versions {versions()}; "
             f"{args.height}x{args.width}x{args.frames} ({tokens(args.height, args.width, args.frames)} tokens), "
             f"{args.steps} steps, CFG on, bf16 eager, no cache, profiled (slower than a timing run)", "",
             markdown_table(["layout", "job ms/step", "forwards ms/step", "beyond ms/step", "GPU idle ms/step",
                             "communication alone ms/step", "copies alone ms/step"],
                            [[f["layout"], f["step_ms"], f["forwards_ms"], f["beyond_forwards_ms"],
                              *f["per_step"].values()] for f in found]), ""]
    for f in found:
        lines += [f"## {f['layout']}: longest idle gaps (rank 0)", "",
                  markdown_table(["at ms", "ms", "kernel before", "kernel after"],
                                 [[g["at_ms"], g["ms"], g["before"][:60], g["after"][:60]] for g in f["gaps"]]), "",
                  f"CPU waits for the GPU, by calling line (whole job): {f['cpu_waits'] or 'none'}", ""]
    text = "\n".join(lines)
    print(text)
    gpu = torch.cuda.get_device_name(0).replace(" ", "-")
    write_results(f"{gpu}-step-gaps", {"device": device_name(), "versions": versions(), "args": vars(args),
                                       "layouts": found}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
