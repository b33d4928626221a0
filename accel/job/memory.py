"""Host-safe (torch only): which residency plan fits the GPUs, from their free memory and the job's size.

A plan changes where the experts' weights live, never what is computed (accel/model/residency.py):

- resident: both experts on every GPU (fastest: nothing moves);
- swap: only the running expert on the GPU, the other in pinned host memory, copied in at the
  switch (one expert's host-to-device copy per switch, none when the GPU holds both);
- stream: the running expert's transformer blocks streamed from pinned host memory ahead of use
  (cache-dit's layerwise offload), everything else as in swap: the slowest, the smallest.

Peak GPU memory per rank, as estimated here (bytes):

    resident = 2 x expert + activations + copy-engine buffers + overhead
    swap     = 1 x expert + activations + copy-engine buffers + overhead
    stream   = expert outside its blocks' Linear layers + STREAM_BLOCKS_IN_FLIGHT x one block's
               Linear layers + activations + copy-engine buffers + overhead

expert: parameters from the model config (an A14B expert is 14.3e9) x 2 bytes in bf16, with the
blocks' Linear weights at 1 byte when quantized (FP8 / int8, or an fp8_scaled file used as stored).
activations = tokens per rank x model width x compute-dtype bytes x ACTIVATION_FACTOR, where tokens
per rank = batch x latent frames x patch rows x patch columns / Ulysses degree. The factor is
derived from the H200 measurements of max_memory_allocated with both bf16 experts resident (2 x
14.3e9 x 2 bytes = 53.3 GiB of weights): 720x1280x81 (75,600 tokens, one GPU) peaked at 68 GiB,
so 14.7 GiB of activations = 75,600 x 5120 x 2 bytes x 20.4; 480x832x33 (14,040 tokens) then
predicts 53.3 + 2.7 = 56.0 GiB, inside the 55-58 GiB measured. 21 keeps a little margin.
FP8 weights (torchao Float8Tensor, eager) take more: at 640x640x81 (33,600 tokens) on an H200
(bench/results/2026-12-01-NVIDIA-H200-memory.md) an fp8_scaled pair used as stored peaked at
38.0 GiB with both experts resident (27.2 GiB of weights: 10.8 GiB of activations, a factor of
33.8) and at 11.3 GiB streamed (1.8 GiB of weights on the GPU: 9.5 GiB, 29.7), where bf16 took
5.6 GiB (17.3); QUANTIZED_ACTIVATION_FACTOR 36 keeps a margin over those, so that a 24 GiB card
with FP8 weights at that size streams (measured 0.99x resident) instead of swapping into an
out-of-memory error (the swap plan ran out at 24 GiB: 20.6 GiB allocated, 1.7 GiB asked for).
copy-engine buffers (Ulysses over copy engines, outside PyTorch's allocator statistics): 4 x one
rank's q, tokens per rank x width x 2 bytes. overhead: the worker's CUDA context, cuBLAS / NCCL
workspaces and allocator fragmentation, which free memory measured before the workers start
must also hold.

Free memory: ``torch.cuda.mem_get_info`` of each of the layout's GPUs (the smallest decides); with
``ACCEL_GPU_MEMORY_FRACTION`` set (a diagnostic: the workers cap their allocator with
``torch.cuda.set_per_process_memory_fraction``, e.g. 0.172 of a 139.8 GiB H200 for a 24 GiB card),
at most that fraction of each GPU's total.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..shared_memory import takes
from .settings import RESIDENCY_PLANS, EngineOptions, ModelSpec

log = logging.getLogger(__name__)

GIB = 2**30
MEMORY_FRACTION_ENV = "ACCEL_GPU_MEMORY_FRACTION"
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANTIZED_WEIGHT_BYTES = 1  # FP8 / int8 Linear weights (their per-row scales are negligible)
ACTIVATION_FACTOR = 21.0
QUANTIZED_ACTIVATION_FACTOR = 36.0
COPY_ENGINE_BUFFERS = 4  # receive buffers, each one rank's q
OVERHEAD_BYTES = 2 * GIB
# cache-dit's prefetch window under "stream" (max_inflight_prefetch_bytes, in blocks), and what is
# on the GPU at most: the window, the block running, and the one just used (its copy is freed
# once the compute stream has passed it).
STREAM_PREFETCH_BLOCKS = 2
STREAM_BLOCKS_IN_FLIGHT = STREAM_PREFETCH_BLOCKS + 2
HOST_SHARE = 0.9  # of the host's available memory the pinned mirrors may take (the rest: ComfyUI, page cache)
SHAREABLE_HOST_PLANS = ("swap", "stream", "shard")  # whose host copies a group's workers share (model/host_mirrors.py)


def memory_fraction(environ: Mapping[str, str] = os.environ) -> float | None:
    """ACCEL_GPU_MEMORY_FRACTION (diagnostic: cap each worker's GPU memory), if set."""
    text = environ.get(MEMORY_FRACTION_ENV, "").strip()
    if not text:
        return None
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"{MEMORY_FRACTION_ENV}={text!r}: expected a fraction of GPU memory in (0, 1]")
    return fraction


@dataclass(frozen=True)
class ExpertSize:
    """One expert's parameters by where they live under each plan."""

    block_linear: int  # the blocks' Linear weights: what quantization makes 1 byte, what "stream" streams
    block_bias: int  # the blocks' Linear biases (streamed with their layer)
    block_other: int  # the blocks' norms and modulation tables (resident under every plan)
    outer: int  # outside the blocks: patch embedding, condition embedders, head
    num_layers: int

    @property
    def params(self) -> int:
        return self.block_linear + self.block_bias + self.block_other + self.outer

    def linear_bytes(self, dtype_bytes: int, quantized: bool) -> int:
        return self.block_linear * (QUANTIZED_WEIGHT_BYTES if quantized else dtype_bytes) + self.block_bias * dtype_bytes

    def bytes(self, dtype_bytes: int, quantized: bool) -> int:
        return self.linear_bytes(dtype_bytes, quantized) + (self.block_other + self.outer) * dtype_bytes

    def streamed_block_bytes(self, dtype_bytes: int, quantized: bool) -> int:
        """One block's Linear layers (what "stream" copies in per block)."""
        return math.ceil(self.linear_bytes(dtype_bytes, quantized) / self.num_layers)

    def resident_bytes_when_streamed(self, dtype_bytes: int) -> int:
        return (self.block_other + self.outer) * dtype_bytes


def expert_size(config: Mapping[str, Any]) -> ExpertSize:
    """Parameter counts of diffusers' WanTransformer3DModel for ``config`` (checked against the
    built model in tests/test_residency.py)."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, layers = config["ffn_dim"], config["num_layers"]
    patch = math.prod(config["patch_size"])
    added = config.get("added_kv_proj_dim") or 0
    image = config.get("image_dim") or 0
    cross_norm = config.get("cross_attn_norm", True)
    # Per block: self- and cross-attention q, k, v, out; FFN in and out; image k, v projections.
    linear = 8 * inner * inner + 2 * inner * ffn + 2 * added * inner
    bias = 8 * inner + ffn + inner + (2 * inner if added else 0)
    # qk norms of both attentions (+ the image key's), cross-attention norm, modulation table.
    other = 4 * inner + (inner if added else 0) + (2 * inner if cross_norm else 0) + 6 * inner
    outer = (
        config["in_channels"] * inner * patch + inner  # patch embedding
        + config["freq_dim"] * inner + inner + inner * inner + inner  # time embedder
        + 6 * inner * inner + 6 * inner  # time projection
        + config["text_dim"] * inner + inner + inner * inner + inner  # text embedder
        + config["out_channels"] * patch * inner + config["out_channels"] * patch  # head
        + 2 * inner  # head modulation table
    )
    if image:  # Wan2.1 I2V's CLIP image embedder: norm, Linear, GELU, Linear, norm
        outer += 2 * image + image * image + image + image * inner + inner + 2 * inner
    return ExpertSize(block_linear=layers * linear, block_bias=layers * bias, block_other=layers * other,
                      outer=outer, num_layers=layers)


def job_tokens(latent_shape: Sequence[int], patch_size: Sequence[int]) -> int:
    """Tokens of a job's latent [batch, channels, frames, height, width] (all ranks together)."""
    batch, _, *dims = latent_shape
    return batch * math.prod(d // p for d, p in zip(dims, patch_size))


def activation_bytes(config: Mapping[str, Any], dtype: str, tokens_per_rank: int, quantized: bool = False) -> int:
    width = config["num_attention_heads"] * config["attention_head_dim"]
    factor = QUANTIZED_ACTIVATION_FACTOR if quantized else ACTIVATION_FACTOR
    return math.ceil(tokens_per_rank * width * DTYPE_BYTES[dtype] * factor)


def mirror_bytes(config: Mapping[str, Any], dtype: str, quantized: bool) -> int:
    """Both experts in host RAM: swap / stream's mirrors, shard's loading copy (one per worker, or one per group)."""
    return 2 * expert_size(config).bytes(DTYPE_BYTES[dtype], quantized)


@dataclass(frozen=True)
class MemoryNeed:
    """What the job asks of each rank's GPU and of the host per worker, per plan (bytes). A plan
    the group cannot run (shard on a sequence-parallel group of one) has no entry."""

    peaks: dict[str, int]
    tokens: int
    tokens_per_rank: int
    # host RAM per worker, or for the group where its workers share one copy: swap / stream's pinned
    # mirrors, shard's whole experts while the workers take their shares of them
    host: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def estimate(cls, config: Mapping[str, Any], dtype: str, quantized: bool, tokens: int, ulysses: int = 1,
                 copy_engine: bool = False) -> MemoryNeed:
        size = expert_size(config)
        dtype_bytes = DTYPE_BYTES[dtype]
        per_rank = math.ceil(tokens / ulysses)
        width = config["num_attention_heads"] * config["attention_head_dim"]
        buffers = COPY_ENGINE_BUFFERS * per_rank * width * 2 if copy_engine and ulysses > 1 else 0
        common = activation_bytes(config, dtype, per_rank, quantized) + buffers + OVERHEAD_BYTES
        expert = size.bytes(dtype_bytes, quantized)
        streamed = size.resident_bytes_when_streamed(dtype_bytes) \
            + STREAM_BLOCKS_IN_FLIGHT * size.streamed_block_bytes(dtype_bytes, quantized)
        peaks = {"resident": 2 * expert + common, "swap": expert + common, "stream": streamed + common}
        mirrors = mirror_bytes(config, dtype, quantized)
        host = {"resident": 0, "swap": mirrors, "stream": mirrors}
        if ulysses > 1:  # tensor parallel over the same ranks: 1/N of the Linears
            shard = math.ceil(size.linear_bytes(dtype_bytes, quantized) / ulysses) \
                + size.resident_bytes_when_streamed(dtype_bytes)
            peaks["shard"] = 2 * shard + activation_bytes(config, dtype, tokens, quantized) + OVERHEAD_BYTES
            host["shard"] = mirrors
        return cls(peaks=peaks, tokens=tokens, tokens_per_rank=per_rank, host=host)


@dataclass(frozen=True)
class PlanChoice:
    plan: str
    forced: bool
    need: MemoryNeed
    budgets: dict[str, int]  # usable bytes per GPU, by name ("GPU 0")
    host: HostBudget | None = None

    @property
    def fits(self) -> bool:
        return self.need.peaks.get(self.plan) is not None and fits(self.plan, self.need, self.budgets, self.host)

    def reason(self) -> str:
        peaks = ", ".join(f"{plan} {peak / GIB:.1f}" for plan, peak in self.need.peaks.items())
        free = ", ".join(f"{name} {budget / GIB:.1f} GiB" for name, budget in self.budgets.items())
        how = "forced" if self.forced else "auto: the fastest that fits"
        text = (f"residency {self.plan} ({how}); estimated GiB per GPU for {self.need.tokens:,} tokens "
                f"({self.need.tokens_per_rank:,} per rank): {peaks}")
        if free:
            text += f"; usable: {free}"
        mirrors = self.need.host.get(self.plan, 0)
        if self.host is not None and mirrors:
            text += (f"; host RAM {self.host.copies(self.plan, mirrors)} x {mirrors / GIB:.1f} GiB of "
                     f"{self.host.available / GIB:.1f} GiB available")
        if self.forced and not self.fits:
            text += " (the estimate exceeds it: may run out of memory)"
        return text


@dataclass(frozen=True)
class HostBudget:
    """The host memory the plans' pinned mirrors may take: what is available now, for ``workers``
    worker processes. They share one copy where /dev/shm holds it (``shared_free``: its free
    bytes; model/host_mirrors.py), else each pins its own."""

    available: int
    workers: int
    shared_free: int = 0

    def copies(self, plan: str, host_bytes: int) -> int:
        shared = plan in SHAREABLE_HOST_PLANS and self.workers > 1 and takes(host_bytes, self.shared_free)
        return 1 if shared else self.workers


def fits(plan: str, need: MemoryNeed, budgets: Mapping[str, int], host: HostBudget | None) -> bool:
    if budgets and need.peaks[plan] > min(budgets.values()):
        return False
    mirrors = need.host.get(plan, 0)
    return host is None or mirrors * host.copies(plan, mirrors) <= host.available * HOST_SHARE


def choose_plan(requested: str, need: MemoryNeed, budgets: Mapping[str, int],
                host: HostBudget | None = None) -> PlanChoice:
    """``requested``: a plan (forced, whatever the estimate says) or "auto": the fastest whose peak
    fits the smallest GPU budget and whose host mirrors (one set per worker) fit the host's
    available memory; none fitting is a UserInputError naming the memory that would fit."""
    budgets = dict(budgets)
    if requested != "auto":
        if requested not in RESIDENCY_PLANS:
            raise UserInputError(f"residency {requested!r} is unknown; expected auto or one of {RESIDENCY_PLANS}")
        return PlanChoice(requested, True, need, budgets, host)
    if not budgets:  # CPU ranks: host memory, nothing to save
        return PlanChoice("resident", False, need, budgets, host)
    smallest_name, smallest = min(budgets.items(), key=lambda item: item[1])
    for plan in RESIDENCY_PLANS:
        if plan in need.peaks and fits(plan, need, budgets, host):
            return PlanChoice(plan, False, need, budgets, host)
    last = "stream"
    least = need.peaks[last]
    if least <= smallest and host is not None:
        raise UserInputError(
            f"this prompt fits the GPUs only with weights offloaded to host memory ('{last}': "
            f"{host.copies(last, need.host[last])} x {need.host[last] / GIB:.1f} GiB of pinned host RAM), and the host "
            f"has {host.available / GIB:.1f} GiB available. Free host RAM, use fewer GPUs per group, give /dev/shm "
            f"room for one shared copy ({need.host[last] / GIB:.1f} GiB), or force residency '{last}' to try anyway")
    raise UserInputError(
        f"this prompt ({need.tokens:,} tokens, {need.tokens_per_rank:,} per GPU) fits no residency plan: the "
        f"smallest, '{last}' (blocks streamed from host memory), needs about {least / GIB:.1f} GiB of free GPU "
        f"memory per GPU, and {smallest_name} has {smallest / GIB:.1f} GiB usable. Use GPUs with at least "
        f"{least / GIB:.1f} GiB free, more GPUs in the Ulysses group (the activations split across them), or "
        "fewer frames / a smaller size"
    )


def weights_quantized(engine: EngineOptions, spec: ModelSpec) -> bool:
    """The blocks' Linear weights at one byte: quantized by the engine, or an fp8_scaled file used as stored."""
    return engine.quantize is not None or spec.fp8_scaled == "as_stored"


def resolve_plan(engine: EngineOptions, spec: ModelSpec, config: Mapping[str, Any], tokens: int, ulysses: int,
                 copy_engine: bool, budgets: Mapping[str, int], host: HostBudget | None = None) -> EngineOptions:
    """``engine`` with its plan chosen (``choose_plan``) for ``tokens`` on GPUs of ``budgets``, and the
    reason, which the decision table shows; an estimate over a forced plan's budget is a warning."""
    need = MemoryNeed.estimate(config, spec.dtype, weights_quantized(engine, spec), tokens, ulysses, copy_engine)
    choice = choose_plan(engine.residency, need, budgets, host)
    (log.info if choice.fits else log.warning)("%s", choice.reason())
    return dataclasses.replace(engine, residency=choice.plan, residency_reason=choice.reason())


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's MemAvailable (Linux), or None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def usable_bytes(devices: Sequence[int], environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Free memory of each GPU now, capped by ACCEL_GPU_MEMORY_FRACTION (host indices)."""
    fraction = memory_fraction(environ)
    budgets = {}
    for index in devices:
        free, total = torch.cuda.mem_get_info(index)
        budgets[f"GPU {index}"] = min(free, int(fraction * total)) if fraction is not None else free
    return budgets
