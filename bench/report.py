"""Merge the parts written by benchmark.py into bench/results/<date>-<gpu>.{json,md}.

    python bench/report.py bench/results/<date>-<gpu>-<part>.json ... [findings.md]
    python bench/report.py bench/results/<date>-<gpu>-ulysses4-<presets>.json ...   # part ulysses, merged

A findings file (markdown bullets: what was found where a target was missed) goes into the notes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import markdown_table  # noqa: E402

TARGETS = {
    "cache_speedup": 2.1, "compile_speedup": 1.2, "fp8_compile_speedup": 1.3,
    "ulysses2_scaling": 1.85, "cfg2_scaling": 1.9, "all_in_speedup": 6.0, "peer_cachedit_ratio": 1.0,
    "warm_job_overhead_s": 1.0, "cached_step_cost_ratio": 0.05,
}
# ComfyUI's own WanModel, random A14B expert, bf16, eager, H200 (figure given with the task).
COMFYUI_FORWARD_S = {14040: 0.940, 32760: 2.977}


def ratio(rows: dict, numerator: str, denominator: str, key: str = "s_per_step") -> float | None:
    if numerator in rows and denominator in rows:
        return rows[numerator][key] / rows[denominator][key]
    return None


# SGLang's Ulysses 4 run, 720x1280x81, 40 steps (background notes): no cache, then its cache preset.
SGLANG_ULYSSES4_S_PER_STEP = {"none": 8.33, "cache": 6.09}


def ulysses_report(runs: list[dict], out: Path) -> int:
    """Part ``ulysses`` split across calls by preset: one table, each preset against no cache."""
    rows = {name: row for run in runs for name, row in run["rows"].items()}
    errors = {name: e for run in runs for name, e in run["latent_rel_error_vs_uncached"].items()}
    base = next((name for name in rows if name.endswith(", none")), None)
    full = [name for name in rows if not name.endswith("(short)")]  # the full-length cache comparison
    # --baseline: 1 GPU and Ulysses N, short jobs
    shorts = sorted((name for name in rows if name.endswith("(short)")), key=lambda name: not name.startswith("1 GPU"))
    sglang = SGLANG_ULYSSES4_S_PER_STEP
    speedups = {name: rows[base]["denoise_s"] / rows[name]["denoise_s"] for name in full if base}
    table = [[name, r["steps"], r["denoise_s"], r["s_per_step"], r.get("computed", ""), r.get("forwards", ""),
              r.get("peak_mem_gb") or "", r.get("job_overhead_s") or "", speedups.get(name, ""),
              f"{errors[name]['rel_error']:.3f} vs {errors[name]['vs']}" if name in errors else ""]
             for name, r in rows.items()]
    scaling = rows[shorts[0]]["s_per_step"] / rows[shorts[1]]["s_per_step"] if len(shorts) == 2 else None
    result = {"device": runs[0]["device"], "versions": runs[0]["versions"], "settings": runs[0]["settings"],
              "rows": rows, "speedup_vs_none": speedups, "ulysses_scaling_vs_1_gpu": scaling,
              "sglang_s_per_step": sglang, "sglang_cache_speedup": sglang["none"] / sglang["cache"],
              "groups": {k: v for run in runs for k, v in run["groups"].items()},
              "latent_rel_error_vs_uncached": errors, "notes": [n for run in runs for n in run["notes"]],
              "runs": [run["date"] for run in runs]}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    lines = [f"# Ulysses over all GPUs, {runs[0]['device']}, runs {', '.join(result['runs'])}", "",
             f"versions {runs[0]['versions']}; settings {runs[0]['settings']}", "",
             "Random-initialised weights; bf16 eager. Runs split across calls by preset; the per-step scaling "
             "against 1 GPU comes from one call (--baseline).", "",
             markdown_table(["run", "steps", "denoise s", "s/step", "computed", "forwards", "peak GB/rank",
                             "job overhead s", "speedup vs no cache", "latent rel. error (same call)"], table), "",
             f"SGLang's Ulysses 4 run at 720x1280x81, 40 steps: {sglang['none']} s/step without cache, "
             f"{sglang['cache']} s/step with it ({result['sglang_cache_speedup']:.2f}x).", "",
             f"Ulysses over all GPUs against 1 GPU, per step, no cache: "
             f"{'not run' if scaling is None else f'{scaling:.2f}x'} ({' vs '.join(shorts)}).", "",
             "Notes:", *[f"- {n}" for n in result["notes"]]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


def main(paths: list[str]) -> int:
    findings = [p for p in paths if p.endswith(".md")]
    paths = [p for p in paths if p.endswith(".json")]
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    if all(run["part"] == "ulysses" for run in loaded):
        first = Path(paths[0])
        return ulysses_report(loaded, first.with_name(re.match(r".*-ulysses\d+", first.name).group(0)))
    parts = {part["part"]: part for part in loaded}
    eager = parts.get("eager", {}).get("rows", {})
    compiled = parts.get("compiled", {}).get("rows", {})
    scaling = parts.get("scaling", {}).get("rows", {})
    any_part = next(iter(parts.values()))
    settings = any_part["settings"]
    base_short = "1 GPU bf16 eager, no cache (short)"
    all_in = "Ulysses 2 fp8 compile, sglang-fast"
    groups = parts.get("compiled", {}).get("groups", {})

    def extrapolated(rows: dict, run: str, base: str = base_short) -> float | None:
        """Speedup of a run over the same part's per-step time of ``base`` x the run's steps."""
        if run in rows and base in rows:
            return rows[base]["s_per_step"] * rows[run]["steps"] / rows[run]["denoise_s"]
        return None
    result = {
        "device": any_part["device"], "versions": any_part["versions"], "settings": settings,
        "cache_speedup": ratio(eager, "1 GPU bf16 eager, no cache", "1 GPU bf16 eager, sglang-fast", "denoise_s"),
        "cache_speedup_sglang_dynamic": ratio(eager, "1 GPU bf16 eager, no cache", "1 GPU bf16 eager, sglang-dynamic",
                                              "denoise_s"),
        # "Eager with no acceleration" is diffusers' forward as shipped (the plain loop); the pack's
        # own eager forward already fuses what compile fuses (accel/fused_block.py).
        "compile_speedup": ratio(compiled, "plain diffusers loop", "1 GPU bf16 compile, no cache (short)"),
        "compile_speedup_vs_pack_eager": ratio(compiled, base_short, "1 GPU bf16 compile, no cache (short)"),
        "pack_eager_speedup": ratio(compiled, "plain diffusers loop", base_short),
        "fp8_compile_speedup": ratio(compiled, "1 GPU bf16 compile, no cache (short)", "1 GPU fp8 compile, no cache (short)"),
        "ulysses2_scaling": ratio(scaling, base_short, "Ulysses 2 bf16 eager, no cache (short)"),
        "ulysses2_scaling_two_head_chunks": ratio(scaling, base_short,
                                                  "Ulysses 2 bf16 eager, two head chunks, no cache (short)"),
        "ulysses2_scaling_nccl_all_to_all": ratio(scaling, base_short,
                                                  "Ulysses 2 bf16 eager, NCCL all-to-all, no cache (short)"),
        "cfg2_scaling": ratio(scaling, base_short, "CFG 2 bf16 eager, no cache (short)"),
        "all_in_speedup": extrapolated(compiled, all_in, "plain diffusers loop"),
        "all_in_speedup_vs_pack_eager": extrapolated(compiled, all_in),
        "peer_cachedit_ratio": ratio(eager, "1 GPU bf16 eager, sglang-fast", "cache-dit enable_cache (sglang-fast)",
                                     "denoise_s"),
        "plain_loop_ratio": ratio(eager, base_short, "plain diffusers loop"),
        "warm_job_overhead_s": max((r["job_overhead_s"] for r in eager.values() if r.get("job_overhead_s") is not None),
                                   default=None),
        "cached_step_cost_ratio": eager.get("1 GPU bf16 eager, sglang-fast", {}).get("cached_step_cost_ratio"),
        "uncached_forward_s": eager[base_short]["s_per_step"] / 2 if base_short in eager else None,
        "uncached_forward_s_diffusers": eager["plain diffusers loop"]["s_per_step"] / 2
        if "plain diffusers loop" in eager else None,
        "comfyui_wanmodel_forward_s": COMFYUI_FORWARD_S.get(settings["tokens"]),
        "bf16_compile_s": groups.get("1 GPU compiled", {}).get("warmup_compile_s"),
        "fp8_compile_s_cold_cache": groups.get("1 GPU fp8 compiled (cold compile cache)", {}).get("warmup_compile_s"),
        "fp8_compile_s_warm_cache": groups.get("1 GPU fp8 compiled (warm compile cache)", {}).get("warmup_compile_s"),
        "peak_mem_gb": {name: row.get("peak_mem_gb") for p in parts.values() for name, row in p["rows"].items()},
        "latent_rel_error_vs_uncached": {k: v for p in parts.values() for k, v in p["latent_rel_error_vs_uncached"].items()},
        "psnr_db_vs_uncached": {k: v for p in parts.values() for k, v in p.get("psnr_db_vs_uncached", {}).items()},
        "notes": [n for p in parts.values() for n in p["notes"]]
        + [line[2:] for f in findings for line in Path(f).read_text().splitlines() if line.startswith("- ")],
        "parts": parts,
    }
    out = Path(paths[0]).with_name(Path(paths[0]).name.rsplit("-", 1)[0] + ".json")
    out.write_text(json.dumps(result, indent=1, default=str))
    lines = [f"# Benchmark, {any_part['date']}, {any_part['device']}", "",
             f"versions {any_part['versions']}; settings {settings}", "",
             "Random-initialised weights: the latent errors below say how far each accelerated run drifts from the "
             "unaccelerated one on the same seed, not what a real video would look like.", ""]
    for name, part in parts.items():
        rows = [[k, r["steps"], r["denoise_s"], r["s_per_step"], r.get("job_overhead_s") or "", r.get("peak_mem_gb") or "",
                 r.get("warmup_compile_s") or "", r.get("computed", ""), r.get("forwards", ""),
                 part["latent_rel_error_vs_uncached"].get(k, {}).get("rel_error", ""),
                 part.get("psnr_db_vs_uncached", {}).get(k, "")] for k, r in part["rows"].items()]
        lines += [f"## Part `{name}`", "", markdown_table(
            ["run", "steps", "denoise s", "s/step", "job overhead s", "peak GB/rank", "warm-up compile s", "computed",
             "forwards", "latent rel. error", "PSNR dB (real weights)"], rows), ""]
    summary = [[key, result[key], TARGETS.get(key, "")] for key in (
        "cache_speedup", "cache_speedup_sglang_dynamic", "pack_eager_speedup", "compile_speedup",
        "compile_speedup_vs_pack_eager", "fp8_compile_speedup", "ulysses2_scaling", "ulysses2_scaling_two_head_chunks",
        "ulysses2_scaling_nccl_all_to_all", "cfg2_scaling", "all_in_speedup", "all_in_speedup_vs_pack_eager",
        "peer_cachedit_ratio", "plain_loop_ratio", "warm_job_overhead_s", "cached_step_cost_ratio",
        "uncached_forward_s", "uncached_forward_s_diffusers", "comfyui_wanmodel_forward_s", "bf16_compile_s", "fp8_compile_s_cold_cache",
        "fp8_compile_s_warm_cache")]
    lines += ["## Ratios (each formed inside one part: same machine, same run)", "",
              markdown_table(["measure", "value", "target"], [[k, "n/a" if v is None else v, t] for k, v, t in summary]),
              "", "Notes:", *[f"- {n}" for n in result["notes"]]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
