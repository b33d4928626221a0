"""Where one uncached A14B expert forward spends its time, and what the pack's fixes buy.

    python bench/forward_profile.py            # 1 GPU, then Ulysses 2 if two GPUs are visible

One GPU: diffusers' WanTransformer3DModel forward as shipped vs with the pack's fused block ops
and self-attention processor (accel/fused_block.py, accel/attention.py), at 14,040 and 32,760
tokens, each with a torch.profiler breakdown by kernel kind; plus diffusers' rotary embedding
timed alone. Two GPUs: the same forwards under Ulysses 2 (NCCL): diffusers' with cache-dit's Wan
processor, the pack's with its all-to-alls overlapped, in sequence, and with FP8 payloads. Random
weights, bf16, one expert, batch 1, no cache. Writes bench/results/<date>-<gpu>-forward.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from accel.attention import rotary  # noqa: E402  (diffusers' apply_rotary_emb, unchanged)
from accel.config import ModelSpec  # noqa: E402
from accel.fused_block import fuse_block_ops  # noqa: E402
from accel.model import load_experts  # noqa: E402
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


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
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


def single_gpu(repeats: int) -> dict:
    device = torch.device("cuda:0")
    experts = load_experts(ModelSpec(source="a14b-random", dtype="bf16"), device)
    stock, fused = experts.high, experts.low  # same architecture, the timing does not depend on the weights
    fuse_block_ops(fused, compiled=True)
    result: dict = {}
    with torch.no_grad():
        for tokens in SHAPES:
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


def ulysses_rank(rank: int, world: int, port: int, repeats: int, queue) -> None:
    from accel.parallel.layout import ParallelLayout
    from accel.parallel.mesh import build_mesh, enable_ulysses

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=device)
    mesh = build_mesh(ParallelLayout(ulysses=world, devices=tuple(range(world))), "cuda")
    experts = load_experts(ModelSpec(source="a14b-random", dtype="bf16"), device)
    stock, fused = experts.high, experts.low
    fuse_block_ops(fused, compiled=True)
    configs = {name: enable_ulysses(module, mesh, world) for name, module in (("diffusers", stock), ("fused", fused))}
    # (label, module, ulysses_async, ulysses_float8); cache-dit's Wan processor has no async path.
    variants = (("diffusers", stock, False, False), ("pack", fused, True, False),
                ("pack_all_to_all_in_sequence", fused, False, False), ("pack_fp8comm", fused, True, True))
    result: dict = {}
    with torch.no_grad():
        for tokens in SHAPES:
            x = inputs(tokens, device)
            row: dict = {}
            for label, module, overlap, fp8 in variants:
                config = configs["diffusers" if module is stock else "fused"]
                config.ulysses_async, config.ulysses_float8 = overlap, fp8
                dist.barrier()
                row[f"{label}_s"] = timed(lambda: module(**x), repeats)
                if module is fused:
                    row[f"profile_{label}_ms"] = kernel_breakdown(lambda: module(**x))
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            result[tokens] = row
            if rank == 0:
                print(f"ulysses {world}", tokens, json.dumps(row), flush=True)
    if rank == 0:
        queue.put(result)
    dist.barrier()
    dist.destroy_process_group()


def ulysses(world: int, repeats: int) -> dict:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.start_processes(ulysses_rank, args=(world, port, repeats, queue), nprocs=world, start_method="spawn")
    return queue.get()


def table(single: dict, parallel: dict | None) -> str:
    rows = []
    for tokens, row in single.items():
        rows.append([tokens, "1 GPU", "diffusers forward", row["diffusers_s"], 1.0])
        rows.append([tokens, "1 GPU", "pack (fused block ops + rotary)", row["fused_s"], row["diffusers_s"] / row["fused_s"]])
        if parallel:
            for key, label in (("diffusers_s", "diffusers forward (cache-dit's Ulysses)"),
                               ("pack_s", "pack, all-to-alls overlapped"),
                               ("pack_all_to_all_in_sequence_s", "pack, all-to-alls in sequence"),
                               ("pack_fp8comm_s", "pack, overlapped + FP8 all-to-all")):
                base = row["diffusers_s"] if key == "diffusers_s" else row["fused_s"]
                rows.append([tokens, "Ulysses 2", label, parallel[tokens][key], base / parallel[tokens][key]])
    return markdown_table(["tokens", "GPUs", "forward", "s", "speedup (vs 1 GPU same forward)"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    single = single_gpu(args.repeats)
    torch.cuda.empty_cache()
    parallel = ulysses(2, args.repeats) if torch.cuda.device_count() >= 2 else None
    header = (f"# One A14B expert forward, {datetime.date.today()}, {device_name()}\n\n"
              f"Random weights, bf16, batch 1, no cache, median of {args.repeats}. Versions: {versions()}\n\n")
    text = header + table(single, parallel)
    for tokens, row in single.items():
        text += (f"\n\n{tokens} tokens, GPU time per kernel kind (ms), 1 GPU: diffusers {row['profile_diffusers_ms']}; "
                 f"fused {row['profile_fused_ms']}; diffusers' rotary embedding alone: "
                 f"{row['rope_ms_per_forward']:.1f} ms per forward")
        if parallel:
            text += f"; Ulysses 2 rank 0, pack: {parallel[tokens]['profile_pack_ms']}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.date.today()}-{torch.cuda.get_device_name(0).replace(' ', '-')}-forward"
    payload = {"device": device_name(), "versions": versions(), "single_gpu": single, "ulysses2": parallel}
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
