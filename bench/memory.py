"""Issue 18: the residency plans on one GPU with its memory capped as a 24 GB / 16 GB card's.

    python bench/memory.py            # on the GPU machine (about 7 minutes)
    python bench/memory.py --tiny     # the same code on the CPU, tiny random model, plans forced

Random A14B experts (seeded), 640x640x81 (33,600 tokens), the Lightning job (4 steps, switch at
2, cfg 1, shift 5, euler / simple: the template path with the fewest steps, so the one where an
expert switch weighs most), eager. bf16: the ``a14b-random`` preset (both experts built on the GPU,
then placed by the plan). FP8: one random expert written as ComfyUI's fp8_scaled file, used as
stored for both experts (high_path = low_path), as the templates load Comfy-Org's files.

Each configuration runs in a fresh child process (its own VmHWM and CUDA allocator): the GPU cap is
``ACCEL_GPU_MEMORY_FRACTION`` (the workers' ``torch.cuda.set_per_process_memory_fraction``; the
plan choice reads the same cap), the plan ``auto`` under a cap, so that the automatic choice is
what is measured (the plan it is expected to pick is stated beside it). Two jobs in a row: the
first (which starts with the high-noise expert where loading put it) and a warm one (which has to
bring the high-noise expert back under swap). Reported per configuration: load time, the plan
chosen and why, each job's denoise time, the expert copies (which, when, how long: CUDA events
on the copy stream), peak GPU memory (max_memory_allocated / reserved), peak host memory (VmHWM:
the pinned mirrors are in it), and the warm job's latent against the uncapped resident run of the
same precision (a plan changes where weights live, not what is computed).

Ratios (``<date>-<gpu>-memory.json``): ``fp8_24gb_speed_ratio`` = resident FP8 warm denoise time
over the 24 GB FP8 run's, ``bf16_24gb_speed_ratio`` and ``fp8_16gb_speed_ratio`` alike;
``expert_switch_s``: the copy of an expert at the switch step (swap, 32 GiB: one FP8 expert fits,
two do not); ``peak_gpu_gb`` and
``peak_host_gb`` per configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from accel.job import memory  # noqa: E402
from accel.job.settings import EngineOptions, ModelSpec  # noqa: E402
from accel.logs import setup_logging  # noqa: E402
from bench.common import relative_error  # noqa: E402
from bench.formats import (  # noqa: E402
    GB,
    JOB_SIZE,
    LIGHTNING,
    TEXT_TOKENS,
    TINY_SIZE,
    TINY_TEXT_TOKENS,
    Clock,
    Phase,
    Report,
    RssSampler,
    Tee,
    expert_files,
    job_row,
    latent_shape,
    make_job,
    model_config,
    proc_status,
    run_child,
    run_timed_job,
    sampler_of,
    say,
)

CHILD_CODE = ("import sys; sys.path.insert(0, {root!r}); from bench.memory import child_main; "
              "raise SystemExit(child_main(sys.argv[1]))")

@dataclass(frozen=True)
class Config:
    name: str
    precision: str  # "bf16" | "fp8"
    cap_gib: float | None
    plan: str  # the plan auto is expected to pick, or the forced one
    forced: bool = False
    compile: bool = False
    min_s: float = 60.0


CONFIGS = {
    "bf16-resident": Config("bf16, uncapped", "bf16", None, "resident", min_s=50),
    "fp8-resident": Config("FP8 (fp8_scaled as stored), uncapped", "fp8", None, "resident", min_s=45),
    "fp8-24": Config("FP8, 24 GiB cap", "fp8", 24.0, "stream"),
    "bf16-24": Config("bf16, 24 GiB cap", "bf16", 24.0, "stream", min_s=80),
    "fp8-16": Config("FP8, 16 GiB cap", "fp8", 16.0, "stream"),
    # The swap plan where one FP8 expert fits and two do not: the copy at the switch step.
    "fp8-32-swap": Config("FP8, 32 GiB cap, swap forced", "fp8", 32.0, "swap", forced=True),
    "fp8-16-compile": Config("FP8, 16 GiB cap, compiled", "fp8", 16.0, "stream", compile=True, min_s=90),
}
RATIOS = {"fp8_24gb_speed_ratio": ("fp8-resident", "fp8-24"), "bf16_24gb_speed_ratio": ("bf16-resident", "bf16-24"),
          "fp8_16gb_speed_ratio": ("fp8-resident", "fp8-16")}
TABLES = {
    "files": [("name", "file"), ("gb", "GB"), ("write_s", "write s"), ("reused", "reused")],
    "plans": [("name", "configuration"), ("plan", "plan (auto)"), ("expected_plan", "expected"),
              ("load_s", "load s"), ("job1_denoise_s", "job 1 denoise s"), ("job2_denoise_s", "warm job denoise s"),
              ("speed_vs_resident", "warm speed vs resident"), ("job2_copies", "warm job's expert copies (s)"),
              ("peak_gpu_gb", "peak GPU GiB (allocated)"), ("peak_reserved_gb", "peak GPU GiB (reserved)"),
              ("peak_host_gb", "peak host GiB (VmHWM)"), ("host_mirror_gb", "pinned mirrors GiB"),
              ("max_abs_diff_vs_resident", "latent max |diff| vs resident"), ("failed", "failed")],
}


def child_main(config_json: str) -> int:
    """One configuration: load, two jobs; RESULT lines (JSON, cumulative) after every stage."""
    from accel.sampling.runtime import Runtime

    config = json.loads(config_json)
    setup_logging()
    device = torch.device(config["device"])
    result: dict = {"pid": os.getpid()}

    def emit() -> None:
        print("RESULT " + json.dumps(result, default=str), flush=True)

    if device.type == "cuda":
        torch.zeros(1, device=device)
        if config["cap_gib"] is not None:  # read by Runtime.load (cap) and its "auto" choice
            total = torch.cuda.get_device_properties(device).total_memory
            os.environ[memory.MEMORY_FRACTION_ENV] = f"{config['cap_gib'] * GB / total:.6f}"
            result["memory_fraction"] = os.environ[memory.MEMORY_FRACTION_ENV]
    spec = ModelSpec(**config["spec"])
    shape, text_dim, text_len = tuple(config["latent_shape"]), config["text_dim"], config["text_len"]
    tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
    try:
        with Phase(RssSampler(), device) as phase:
            engine = EngineOptions(residency=config["residency"], compile=config["compile"])
            runtime = Runtime.load(spec, device, engine, tokens=tokens)
        result.update(load_s=phase.values["seconds"], plan=runtime.residency.plan, notes=runtime.notes,
                      host_mirror_gb=runtime.residency.host_mirror_bytes / GB,
                      after_load_host_gb=proc_status().get("VmRSS"))
        emit()
        lightning = sampler_of(LIGHTNING["steps"], config["seed"], LIGHTNING["cfg"], LIGHTNING["shift"],
                               LIGHTNING["switch_step"])
        job = make_job(lightning, shape, text_dim, text_len)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for index in (1, 2):
            out, _, wall = run_timed_job(runtime, job, device)
            residency = out.trace.info.get("residency", {})
            result[f"job{index}"] = {**job_row(out, LIGHTNING["steps"]), "wall_s": wall,
                                     "copies": residency.get("onloads", [])}
            emit()
        torch.save(out.latent.cpu(), config["latent_out"])
        if device.type == "cuda":
            result.update(peak_gpu_gb=torch.cuda.max_memory_allocated(device) / GB,
                          peak_reserved_gb=torch.cuda.max_memory_reserved(device) / GB)
        status = proc_status()
        result.update(peak_host_gb=status.get("VmHWM"), host_shmem_gb=status.get("RssShmem"), done=True)
    except Exception as error:  # noqa: BLE001 (reported to the parent)
        traceback.print_exc()
        result["failed"] = repr(error)[:600]
        emit()
        return 1
    emit()
    return 0


def copies_text(copies: list[dict]) -> str:
    return ", ".join(f"{c['expert']} at {c['at']} {c['gb']:.1f} GiB {c['ms'] / 1e3:.2f}" for c in copies
                     if c.get("ms") is not None) or "none"


def run(args, report: Report, clock: Clock, device: torch.device) -> None:
    shape = latent_shape(TINY_SIZE if args.tiny else JOB_SIZE)
    config = model_config(args.tiny)
    report.info.update(latent=list(shape), tokens=shape[2] * (shape[3] // 2) * (shape[4] // 2),
                       job=f"Lightning: {LIGHTNING['steps']} steps, switch at {LIGHTNING['switch_step']}, cfg 1, "
                           f"shift {LIGHTNING['shift']}, euler / simple, eager; two jobs in a row per configuration",
                       cap="ACCEL_GPU_MEMORY_FRACTION = cap / the GPU's total (allocator cap); plan auto under a cap")
    keys = [k for k in CONFIGS if not args.only or k in args.only.split(",")]
    fp8_file = None
    if any(CONFIGS[k].precision == "fp8" for k in keys):
        fp8_file = expert_files(args, device, ("fp8",), report)["fp8"]
    latents = Path(args.workdir) / "latents"
    latents.mkdir(parents=True, exist_ok=True)
    for key in keys:
        entry = CONFIGS[key]
        name, precision, cap, expected = entry.name, entry.precision, entry.cap_gib, entry.plan
        if clock.left() < entry.min_s:
            report.note(f"{name}: skipped, {clock.left():.0f} s left (needs about {entry.min_s:.0f} s); "
                        f"run --only {key}")
            continue
        if precision == "bf16":
            spec = ModelSpec(source="tiny-random" if args.tiny else "a14b-random", dtype="bf16")
        else:
            spec = ModelSpec(source="single-file", high_path=str(fp8_file), low_path=str(fp8_file), dtype="bf16",
                             fp8_scaled="as_stored")
        latent_out = latents / f"memory-{key}.pt"
        latent_out.unlink(missing_ok=True)
        child = {"name": name, "device": str(device), "spec": dataclasses.asdict(spec), "cap_gib": cap,
                 "residency": expected if args.tiny or cap is None or entry.forced else "auto",
                 "compile": entry.compile and not args.tiny,
                 "latent_shape": list(shape),
                 "text_dim": config["text_dim"], "text_len": TINY_TEXT_TOKENS if args.tiny else TEXT_TOKENS,
                 "seed": args.seed, "latent_out": str(latent_out)}
        result = run_child(child, clock.left() - 5, report, code=CHILD_CODE)
        if result is None:
            continue
        row = {"plan": result.get("plan"), "expected_plan": expected + (" (forced)" if entry.forced else ""),
               "load_s": result.get("load_s"),
               "peak_gpu_gb": result.get("peak_gpu_gb"), "peak_reserved_gb": result.get("peak_reserved_gb"),
               "peak_host_gb": result.get("peak_host_gb"), "host_mirror_gb": result.get("host_mirror_gb"),
               "host_shmem_gb": result.get("host_shmem_gb"), "memory_fraction": result.get("memory_fraction"),
               "notes": "; ".join(result.get("notes") or []), "child_wall_s": result.get("child_wall_s")}
        for index in (1, 2):
            job = result.get(f"job{index}")
            if job:
                row.update({f"job{index}_denoise_s": job["denoise_s"], f"job{index}_copies": copies_text(job["copies"]),
                            f"job{index}_copies_raw": job["copies"], f"job{index}_peak_gpu_gb": job["peak_gpu_gb"]})
        if result.get("failed"):
            row["failed"] = result["failed"]
        base_key = f"{precision}-resident"  # eager: the compiled row's ratio includes compile's gain
        base = report.rows["plans"].get(CONFIGS[base_key].name, {})
        if key != base_key and base.get("job2_denoise_s") and row.get("job2_denoise_s"):
            row["speed_vs_resident"] = base["job2_denoise_s"] / row["job2_denoise_s"]
            row["job1_speed_vs_resident"] = base["job1_denoise_s"] / row["job1_denoise_s"]
        base_latent = latents / f"memory-{base_key}.pt"
        if key != base_key and base_latent.is_file() and latent_out.is_file():
            ours, theirs = torch.load(latent_out), torch.load(base_latent)
            row.update(max_abs_diff_vs_resident=(ours.float() - theirs.float()).abs().max().item(),
                       rel_error_vs_resident=relative_error(ours, theirs),
                       bit_equal_vs_resident=torch.equal(ours, theirs))
        report.row("plans", name, **row)
    summarize(report)


def summarize(report: Report) -> None:
    rows = {key: report.rows["plans"].get(config.name, {}) for key, config in CONFIGS.items()}
    for ratio, (_, capped) in RATIOS.items():
        report.info[ratio] = rows[capped].get("speed_vs_resident")
    copies = rows["fp8-32-swap"].get("job2_copies_raw", [])
    switches = [c["ms"] / 1e3 for c in copies if c["at"] == "switch" and c.get("ms")]
    report.info["expert_switch_s"] = switches[0] if switches else None
    report.info["peak_gpu_gb"] = {key: row.get("peak_gpu_gb") for key, row in rows.items() if row}
    report.info["peak_host_gb"] = {key: row.get("peak_host_gb") for key, row in rows.items() if row}
    report.info["plans_chosen"] = {key: row.get("plan") for key, row in rows.items() if row}
    report.write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with the tiny random model, plans forced")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    parser.add_argument("--workdir", default=None, help="the fp8_scaled file (default /tmp/bench-formats)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=570.0, help="seconds this call may take")
    parser.add_argument("--only", default=None, help="comma list of " + ",".join(CONFIGS))
    args = parser.parse_args()
    args.workdir = args.workdir or ("/tmp/bench-formats-tiny" if args.tiny else "/tmp/bench-formats")
    clock = Clock(args.budget_s)
    setup_logging()
    if not args.tiny and not torch.cuda.is_available():
        say("no CUDA GPU: use --tiny for a CPU dry run")
        return 2
    device = torch.device("cpu" if args.tiny else "cuda:0")
    report = Report(args, "memory", device, TABLES)
    sys.stdout = Tee(sys.stdout, report.path.with_suffix(".log"))
    sys.stderr = Tee(sys.stderr, report.path.with_suffix(".log"))
    say(f"memory on {report.device_name}, budget {args.budget_s:.0f} s, results {report.path}.{{json,md,log}}")
    began = time.perf_counter()
    try:
        run(args, report, clock, device)
    except Exception as error:  # noqa: BLE001
        report.failed("memory", error)
    report.info["elapsed_s"] = round(time.perf_counter() - began, 1)
    report.write()
    say(report.path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
