"""The pack's quantized self-attention: q k^T in INT8, p v in FP8 or 16-bit (Triton, Ada / Hopper).

The exact kernels stop at about 570 TFLOP/s on an H200 (cuDNN, bench/results/*-attention.md) and
no faster attention for Hopper is on PyPI: FA3 is built from source, flash-attn-4's and
SageAttention 3's FP8 paths are Blackwell only, SageAttention 2's CUDA kernels are source-only
and 1.0.6 (Triton, FP16 p v) is slower than cuDNN here, cuDNN's FP8 attention writes its output
in FP8 on Hopper. The scheme follows SageAttention 2's (quantized_attention_kernel.py):

- queries and keys rounded to int8 with one scale per token and head, keys smoothed
  first (their mean over the sequence subtracted, which softmax does not see);
- ``pv="fp8"``: values in e4m3 with one scale per channel of a head, probabilities in e4m3;
  ``pv="16bit"``: probabilities in the values' dtype, values as given;
- int32 / fp32 accumulation, output in the inputs' dtype.

An explicit, low-precision option (attention_backend ``int8`` / ``int8_fp8``; its measured error
is stated next to it in README and bench/results/*-attention.md). Where it cannot run (no CUDA,
a GPU before Ada, no Triton, a head size other than 64 or 128) the exact attention runs and
``unavailable_reason`` says why, which the decision table shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128)
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores
PV_KINDS = ("fp8", "16bit")
# relative L2 against exact attention, random / Wan-like RMS-normed inputs, and the speed against
# cuDNN's exact kernel at 32,760 tokens on an H200 (bench/results/2026-12-01-NVIDIA-H200-attention-quantized.md)
MEASURED = {"fp8": "INT8 q k^T, FP8 p v: relative error 3.9e-2 / 4.9e-2 (random / Wan-like inputs), 1.17x cuDNN",
            "16bit": "INT8 q k^T, bf16 p v: relative error 1.0e-2 / 4.0e-2 (random / Wan-like inputs), 1.03x cuDNN"}


@dataclass(frozen=True)
class Tiles:
    """Tile sizes of the attention kernel (and of the quantization programs)."""

    block_m: int
    block_n: int
    warps: int
    stages: int


# the fastest of bench/attention_kernels.py's --pack-tiles on an H200 (bench/results/*-attention.md)
DEFAULT_TILES = {"fp8": Tiles(64, 128, 4, 3), "16bit": Tiles(128, 64, 4, 3)}


def unavailable_reason(device: torch.device, head_dim: int | None = None) -> str | None:
    """Why the quantized kernel cannot run here, or None."""
    fallback = "exact attention runs instead"
    if device.type != "cuda":
        return f"quantized attention needs a CUDA GPU (this run is on {device.type}); {fallback}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"quantized attention needs compute capability 8.9+ (Ada, Hopper, Blackwell); "
                f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}; {fallback}")
    from torch.utils._triton import has_triton

    if not has_triton():
        return f"quantized attention is a Triton kernel and Triton is not installed; {fallback}"
    if head_dim is not None and head_dim not in HEAD_DIMS:
        return f"quantized attention takes head sizes {HEAD_DIMS}, not {head_dim}; {fallback}"
    return None


def _blocks(tokens: int, block: int) -> int:
    return -(-tokens // block)


def quantized_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pv: str = "fp8",
                        tiles: Tiles | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of [B, S, H, D] tensors (the processors' layout), non-causal, no
    mask; returns a new [B, S, H, D] tensor in the query's dtype. One opaque operator for
    torch.compile (compiled blocks call it as they call cuDNN's attention)."""
    if pv not in PV_KINDS:
        raise ValueError(f"pv {pv!r}: expected one of {PV_KINDS}")
    tiles = tiles or DEFAULT_TILES[pv]
    return _quantized_attention_op(query, key, value, pv, tiles.block_m, tiles.block_n, tiles.warps, tiles.stages)


@torch.library.custom_op("cachedit_wan::quantized_attention", mutates_args=())
def _quantized_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pv: str, block_m: int,
                            block_n: int, warps: int, stages: int) -> torch.Tensor:
    return _launch(query, key, value, pv, Tiles(block_m, block_n, warps, stages))


@_quantized_attention_op.register_fake
def _(query, key, value, pv, block_m, block_n, warps, stages):
    return query.new_empty(query.shape)


def _launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pv: str, tiles: Tiles) -> torch.Tensor:
    from . import quantized_attention_kernel as kernel

    batch, tokens, heads, dim = query.shape
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    q_blocks, kv_blocks = _blocks(tokens, tiles.block_m), _blocks(tokens, tiles.block_n)
    q_padded, kv_padded = q_blocks * tiles.block_m, kv_blocks * tiles.block_n
    device = query.device
    q8 = torch.empty(batch, heads, q_padded, dim, dtype=torch.int8, device=device)
    k8 = torch.empty(batch, heads, kv_padded, dim, dtype=torch.int8, device=device)
    q_scale = torch.empty(batch, heads, q_padded, dtype=torch.float32, device=device)
    k_scale = torch.empty(batch, heads, kv_padded, dtype=torch.float32, device=device)
    k_mean = key.mean(dim=1, dtype=torch.float32).contiguous()  # [B, H, D]
    grid_q, grid_kv = (q_blocks, batch * heads), (kv_blocks, batch * heads)
    kernel.quantize_blocks[grid_q](query, k_mean, q8, q_scale, tokens, heads, *query.stride()[:3],
                                   LOG2E / math.sqrt(dim), BLOCK=tiles.block_m, DIM=dim, SMOOTH=False)
    kernel.quantize_blocks[grid_kv](key, k_mean, k8, k_scale, tokens, heads, *key.stride()[:3], 1.0,
                                    BLOCK=tiles.block_n, DIM=dim, SMOOTH=True)
    if pv == "fp8":
        v_scale = (value.abs().amax(dim=1).float().clamp_min(1e-12) / 448.0).contiguous()  # [B, H, D]
        values = torch.empty(batch, heads, dim, kv_padded, dtype=torch.float8_e4m3fn, device=device)
        kernel.quantize_values[grid_kv](value, v_scale, values, tokens, heads, kv_padded, *value.stride()[:3],
                                        BLOCK=tiles.block_n, DIM=dim)
        v_strides = (heads * dim * kv_padded, dim * kv_padded, 1, kv_padded)  # [B, H, S, D] order
    else:
        v_scale, values = k_mean, value  # v_scale unused
        v_strides = (value.stride(0), value.stride(2), value.stride(1), value.stride(3))
    out = torch.empty(batch, tokens, heads, dim, dtype=query.dtype, device=device)
    kernel.attention[grid_q](q8, k8, values, q_scale, k_scale, v_scale, out, tokens, tokens // tiles.block_n, heads,
                             q_padded, kv_padded,
                             *v_strides, *out.stride()[:3], BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, DIM=dim,
                             PV_FP8=pv == "fp8", num_warps=tiles.warps, num_stages=tiles.stages)
    return out
