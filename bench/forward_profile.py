"""Where one uncached A14B expert forward spends its time, and what the pack's fixes buy.

    python bench/forward_profile.py            # 1 GPU, then Ulysses 2 if two GPUs are visible

One GPU: diffusers' WanTransformer3DModel forward as shipped vs with the pack's fused block ops
and self-attention processor (accel/fused_block.py, accel/attention.py), at 14,040 and 32,760
tokens, each with a torch.profiler breakdown by kernel kind; plus diffusers' rotary embedding
timed alone. Two GPUs: the same forwards under Ulysses 2 (NCCL): diffusers' with cache-dit's Wan
processor, the pack's with its head-major all-to-alls overlapped, with cache-dit's all-to-alls
overlapped, in sequence, with FP8 payloads, and (``--high-priority``) with NCCL on a
high-priority stream; for the pack's, a GPU timeline of rank 0 (NCCL time with no compute beside
it, idle time). Random weights, bf16, one expert, batch 1, no cache. Writes
bench/results/<date>-<gpu>-forward{,-ulysses,-1gpu}.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
from dataclasses import dataclass
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from accel.parallel.ulysses.processor import rotary  # noqa: E402  (diffusers' apply_rotary_emb, unchanged)
from accel.job.settings import ModelSpec  # noqa: E402
from accel.model.fused_block import fuse_block_ops  # noqa: E402
from accel.model.loading import load_experts  # noqa: E402
from accel.diagnostics.profiling import device_kernels, timeline_of  # noqa: E402
from bench.common import RESULTS, device_name, markdown_table, versions  # noqa: E402

SHAPES = {14040: (33, 480, 832), 32760: (81, 480, 832)}
KINDS = (("nccl", ("nccl",)), ("attention", ("flash", "fmha", "cudnn", "attention")),
         ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas")), ("triton (fused)", ("triton",)),
         ("layer_norm", ("layer_norm", "layernorm")), ("rms_norm", ("rms",)),
         ("copy / cat", ("copy", "memcpy", "cat", "index")), ("elementwise", ("elementwise",)),
         ("reduce", ("reduce",)))


def inputs(tokens: int, device: torch.device) -> dict:
    frames, height, width = SHAPES[tokens]
    generator = torch.Generator(device).manual_seed(0)
    latent = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=generator, device=device)
    text = torch.randn(1, 512, 4096, generator=generator, device=device)
    return dict(hidden_states=latent.bfloat16(), timestep=torch.tensor([900.0], device=device),
                encoder_hidden_states=text.bfloat16(), return_dict=False)


def timed(fn, repeats: int, warmup: int = 2, launches: list | None = None) -> float:
    """Median seconds of fn() (CUDA-synchronised). ``launches`` receives the median CPU time of
    the call itself (issuing the work): near the total, the forward is bound by the CPU."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, issued = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        issued.append(time.perf_counter() - began)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    if launches is not None:
        launches.append(statistics.median(issued))
    return statistics.median(times)


def kernel_breakdown(fn) -> dict[str, float]:
    """Milliseconds of GPU time per kernel kind in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.key.lower()
        kind = next((k for k, words in KINDS if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_device_time_total / 1000
    totals["total"] = sum(totals.values())
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def single_gpu(repeats: int, shapes: list[int]) -> dict:
    device = torch.device("cuda:0")
    experts = load_experts(ModelSpec(source="a14b-random", dtype="bf16"), device)
    stock, fused = experts.high, experts.low  # same architecture, the timing does not depend on the weights
    fuse_block_ops(fused, compiled=True)
    result: dict = {}
    with torch.no_grad():
        for tokens in shapes:
            x = inputs(tokens, device)
            row = {"diffusers_s": timed(lambda: stock(**x), repeats), "fused_s": timed(lambda: fused(**x), repeats)}
            row["profile_diffusers_ms"] = kernel_breakdown(lambda: stock(**x))
            row["profile_fused_ms"] = kernel_breakdown(lambda: fused(**x))
            q = torch.randn(1, tokens, 40, 128, device=device, dtype=torch.bfloat16)
            cos, sin = stock.rope(x["hidden_states"])
            row["rope_ms_per_forward"] = 80 * 1000 * timed(lambda: rotary(q, cos, sin), 20)  # eager, as diffusers runs it
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            result[tokens] = row
            print(tokens, json.dumps(row), flush=True)
    return result


def timeline(fn) -> dict:
    """The GPU timeline of one call of fn on this rank (accel/profiling.py)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return timeline_of(device_kernels(prof.events()), top_gaps=3).to_dict()


@dataclass(frozen=True)
class Variant:
    label: str
    pack: bool  # the pack's processor (else diffusers' forward with cache-dit's Wan processor)
    overlap: bool = True  # ulysses_async
    fp8: bool = False  # ulysses_float8 (cache-dit's all-to-all kernels)
    all_to_all: str = "head-major"  # the pack's: head-major (NCCL), cache-dit (NCCL), copy-engine


ULYSSES_VARIANTS = (Variant("diffusers", False, overlap=False), Variant("pack", True),
                    Variant("pack_copy_engine", True, all_to_all="copy-engine"),
                    Variant("pack_cache_dit_all_to_all", True, all_to_all="cache-dit"),
                    Variant("pack_all_to_all_in_sequence", True, overlap=False),
                    Variant("pack_fp8comm", True, fp8=True, all_to_all="cache-dit"))


def set_all_to_all(module: torch.nn.Module, all_to_all: str, copy_engine) -> None:
    for block in module.blocks:
        processor = block.attn1.processor
        processor.__dict__.pop("_exchanges", None)
        if all_to_all == "cache-dit":
            processor._exchanges = processor._cache_dit_exchanges
        processor.copy_engine = copy_engine if all_to_all == "copy-engine" else None


def ulysses_rank(rank: int, world: int, port: int, repeats: int, shapes: list[int], labels: list[str], queue) -> None:
    from accel.parallel.layout import ParallelLayout
    from accel.parallel.mesh import build_mesh, enable_ulysses

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=device)
    mesh = build_mesh(ParallelLayout(ulysses=world, devices=tuple(range(world))), "cuda")
    from accel.parallel.ulysses.copy_engine import CopyEngineExchange

    variants = [v for v in ULYSSES_VARIANTS if v.label in labels]
    experts = load_experts(ModelSpec(source="a14b-random", dtype="bf16"), device)
    stock, fused = experts.high, experts.low
    fuse_block_ops(fused, compiled=True)
    configs = {True: enable_ulysses(fused, mesh, world), False: enable_ulysses(stock, mesh, world)}
    copy_engine = CopyEngineExchange(mesh.group("ulysses"), device, datetime.timedelta(minutes=5))
    result: dict = {}
    with torch.no_grad():
        for tokens in shapes:
            x = inputs(tokens, device)
            row: dict = {}
            reference = None
            for variant in variants:
                label, module = variant.label, fused if variant.pack else stock
                configs[variant.pack].ulysses_async, configs[variant.pack].ulysses_float8 = variant.overlap, variant.fp8
                if variant.pack:
                    set_all_to_all(module, variant.all_to_all, copy_engine)
                dist.barrier()
                out = module(**x)[0]
                if variant.pack and not variant.fp8:  # the same values whatever moves them
                    reference = out if reference is None else reference
                    row[f"{label}_max_abs_diff_vs_first"] = (out - reference).abs().max().item()
                issued: list[float] = []
                row[f"{label}_s"] = timed(lambda: module(**x), repeats, launches=issued)
                row[f"{label}_cpu_issue_s"] = issued[0]
                if variant.pack:
                    row[f"profile_{label}_ms"] = kernel_breakdown(lambda: module(**x))
                    row[f"timeline_{label}_ms"] = timeline(lambda: module(**x))
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            result[tokens] = row
            if rank == 0:
                print(f"ulysses {world}", tokens, json.dumps(row), flush=True)
    if rank == 0:
        queue.put(result)
    dist.barrier()
    dist.destroy_process_group()


def ulysses(world: int, repeats: int, shapes: list[int], labels: list[str], high_priority: bool = False) -> dict:
    """``high_priority``: NCCL on a high-priority CUDA stream (TORCH_NCCL_HIGH_PRIORITY=1), read by
    the ranks when their process group starts."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = 29500 + (os.getpid() + 7 * high_priority) % 1000
    os.environ["TORCH_NCCL_HIGH_PRIORITY"] = "1" if high_priority else "0"
    mp.start_processes(ulysses_rank, args=(world, port, repeats, shapes, labels, queue), nprocs=world,
                       start_method="spawn")
    return queue.get()


def table(single: dict | None, parallel: dict | None) -> str:
    rows = []
    labels = {"diffusers_s": "diffusers forward (cache-dit's Ulysses)",
              "pack_s": "pack, head-major all-to-alls overlapped",
              "pack_copy_engine_s": "pack, head-major all-to-alls by copy engines",
              "pack_cache_dit_all_to_all_s": "pack, cache-dit's all-to-alls overlapped",
              "pack_all_to_all_in_sequence_s": "pack, all-to-alls in sequence",
              "pack_fp8comm_s": "pack, overlapped + FP8 all-to-all (cache-dit's)",
              "pack_high_priority_s": "pack, head-major overlapped, NCCL high-priority stream"}
    for tokens in (single or parallel):
        row = (single or {}).get(tokens, {})
        if row:
            rows.append([tokens, "1 GPU", "diffusers forward", row["diffusers_s"], 1.0])
            rows.append([tokens, "1 GPU", "pack (fused block ops + rotary)", row["fused_s"],
                         row["diffusers_s"] / row["fused_s"]])
        for key, label in labels.items():
            if parallel and key in parallel.get(tokens, {}):
                base = row.get("diffusers_s" if key == "diffusers_s" else "fused_s")
                seconds = parallel[tokens][key]
                rows.append([tokens, "Ulysses 2", label, seconds, base / seconds if base else None])
    return markdown_table(["tokens", "GPUs", "forward", "s", "speedup (vs 1 GPU same forward)"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--ulysses-only", action="store_true", help="skip the 1-GPU forwards")
    parser.add_argument("--variants", nargs="+", choices=[v.label for v in ULYSSES_VARIANTS],
                        default=[v.label for v in ULYSSES_VARIANTS])
    parser.add_argument("--high-priority", action="store_true",
                        help="also time the pack's forward with NCCL on a high-priority stream")
    args = parser.parse_args()
    single = None if args.ulysses_only else single_gpu(args.repeats, args.tokens)
    torch.cuda.empty_cache()
    parallel = ulysses(2, args.repeats, args.tokens, args.variants) if torch.cuda.device_count() >= 2 else None
    if parallel and args.high_priority:
        high = ulysses(2, args.repeats, args.tokens, ["pack"], high_priority=True)
        for tokens, row in high.items():
            parallel[tokens].update({k.replace("pack", "pack_high_priority"): v for k, v in row.items() if "pack" in k})
    header = (f"# One A14B expert forward, {datetime.date.today()}, {device_name()}\n\n"
              f"Random weights, bf16, batch 1, no cache, median of {args.repeats}. Versions: {versions()}\n\n")
    text = header + table(single, parallel)
    for tokens, row in (single or {}).items():
        text += (f"\n\n{tokens} tokens, GPU time per kernel kind (ms), 1 GPU: diffusers {row['profile_diffusers_ms']}; "
                 f"fused {row['profile_fused_ms']}; diffusers' rotary embedding alone: "
                 f"{row['rope_ms_per_forward']:.1f} ms per forward")
    for tokens, row in (parallel or {}).items():
        text += f"\n\n{tokens} tokens, Ulysses 2, rank 0:"
        for key, value in row.items():
            if key.startswith(("profile_", "timeline_")):
                text += f"\n- {key.removesuffix('_ms')} (ms): {value}"
            elif key.endswith(("_max_abs_diff_vs_first", "_cpu_issue_s")):
                text += f"\n- {key}: {value}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-forward" if single and parallel else "-forward-ulysses" if parallel else "-forward-1gpu"
    path = RESULTS / f"{datetime.date.today()}-{torch.cuda.get_device_name(0).replace(' ', '-')}{suffix}"
    payload = {"device": device_name(), "versions": versions(), "single_gpu": single, "ulysses2": parallel}
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
