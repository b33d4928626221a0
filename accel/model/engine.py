"""Quantization (cache-dit / torchao), attention backend and torch.compile on the loaded experts.

Order, as cache-dit applies them: cache hooks, then parallelism, then quantization, then
compile. Requirements are checked before any weights are loaded (``engine_check.py``).
"""

from __future__ import annotations

import logging

import torch

from ..job.settings import ATTENTION_BACKENDS, QUANTIZED_ATTENTION, EngineOptions
from . import engine_check
from .attention import self_attention_processors
from .loading import DualExperts
from .quantized_attention import MEASURED, unavailable_reason

log = logging.getLogger(__name__)


def compile_block_ops(engine: EngineOptions, device: torch.device) -> bool:
    """Whether the blocks' fused element-wise helpers are compiled: on CUDA with Triton, unless
    whole-block compile (which fuses them itself) is on. Without Triton they run op by op."""
    if device.type != "cuda" or engine.compile:
        return False
    if not engine_check.triton_available():
        log.warning("Triton not found: the blocks' element-wise ops run unfused, about 20%% slower per "
                    "forward; %s", engine_check.TRITON_HINT)
        return False
    return True


def set_attention_backend(experts: DualExperts, engine: EngineOptions, device: torch.device) -> list[str]:
    """Returns notes for the decision table: the quantized kernel with its measured error, or why
    it cannot run here."""
    from cache_dit.attention import set_attn_backend

    name = ATTENTION_BACKENDS[engine.attention_backend][0]
    for module in (experts.high, experts.low):
        set_attn_backend(module, attention_backend=name)
    pv = QUANTIZED_ATTENTION.get(engine.attention_backend)
    if pv is None:
        return []
    reason = unavailable_reason(device, experts.high.config.attention_head_dim)
    if reason is not None:
        log.warning("attention_backend %s: %s", engine.attention_backend, reason)
        return [f"attention_backend {engine.attention_backend}: {reason}"]
    for processor in self_attention_processors((experts.high, experts.low)):
        processor.quantized_pv = pv
    return [f"attention_backend {engine.attention_backend}: the pack's quantized self-attention, low precision "
            f"({MEASURED[pv]} on an H200)"]


def _bf16_for_per_row(module: torch.nn.Module, quant_type: str) -> list[str]:
    """cache-dit's float8_per_row refuses any non-bf16 Linear, excluded or not, and diffusers keeps
    Wan's time embedder in fp32: those few small layers go to bf16 and stay unquantized."""
    if quant_type != "float8_per_row":
        return []
    names = [name for name, sub in module.named_modules()
             if isinstance(sub, torch.nn.Linear) and sub.weight.dtype != torch.bfloat16]
    for name in names:
        module.get_submodule(name).to(torch.bfloat16)
    return names


def float8_linears(module: torch.nn.Module) -> int:
    """Linear layers whose weights are float8 (an fp8_scaled file used as stored, or quantized)."""
    from torchao.quantization import Float8Tensor

    return sum(isinstance(sub.weight, Float8Tensor) for sub in module.modules() if isinstance(sub, torch.nn.Linear))


def quantize_experts(experts: DualExperts, engine: EngineOptions) -> list[str]:
    """Returns notes for the decision table (what was applied where it differs from the request)."""
    notes = []
    if engine.quantize is not None:
        import cache_dit
        from cache_dit import QuantizeConfig

        quantized = []
        for name, module in (("high", experts.high), ("low", experts.low)):
            already = float8_linears(module)
            if already:
                notes.append(f"{name}-noise expert: {already} Linear layers already FP8 from the fp8_scaled file "
                             f"(used as stored); {engine.quantize.quant_type} was not applied on top")
                quantized.append(module)
                continue
            kept = _bf16_for_per_row(module, engine.quantize.quant_type)
            config = QuantizeConfig(quant_type=engine.quantize.quant_type,
                                    exclude_layers=list(engine.quantize.exclude_layers) + kept)
            quantized.append(cache_dit.quantize(module, quantize_config=config))
        experts.high, experts.low = quantized
        log.info("quantization %s: %s", engine.quantize.quant_type, "; ".join(notes) or "both experts")
    return notes


def compile_experts(experts: DualExperts, engine: EngineOptions) -> None:
    if engine.compile:
        # Compile each repeated transformer block, not the loop: cached steps run fewer
        # blocks and the two experts share the block code, so neither recompiles.
        for module in (experts.high, experts.low):
            module.compile_repeated_blocks()


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))
