"""Quantization (cache-dit / torchao), attention backend and torch.compile on the loaded experts.

Order, as cache-dit applies them: cache hooks, then parallelism, then quantization, then
compile. Requirements are checked before any weights are loaded (``check_engine``).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from .config import ATTENTION_BACKENDS, EngineOptions, ModelSpec
from .errors import UserInputError
from .model import DualExperts

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)
TRITON_HINT = "install Triton (it comes with torch's CUDA wheels on Linux; on Windows: pip install triton-windows)"


def triton_available() -> bool:
    from torch.utils._triton import has_triton

    return has_triton()


def compile_block_ops(engine: EngineOptions, device: torch.device) -> bool:
    """Whether the blocks' fused element-wise helpers are compiled: on CUDA with Triton, unless
    whole-block compile (which fuses them itself) is on. Without Triton they run op by op."""
    if device.type != "cuda" or engine.compile:
        return False
    if not triton_available():
        log.warning("Triton not found: the blocks' element-wise ops run unfused, about 20%% slower per "
                    "forward; %s", TRITON_HINT)
        return False
    return True


def check_engine(engine: EngineOptions, spec: ModelSpec, device: torch.device | None) -> None:
    """Refuse what cannot run, with the reason, before any work starts."""
    if engine.compile and device is not None and device.type == "cuda" and not triton_available():
        raise UserInputError(f"torch.compile on a GPU needs Triton, which this environment lacks: {TRITON_HINT}, "
                             "or turn compile off")
    if engine.quantize is not None:
        kind = engine.quantize.quant_type
        if device is None or device.type != "cuda":
            raise UserInputError(
                f"{kind} quantization needs a CUDA GPU; this run is on the CPU. Drop the quantization "
                "(FP8 Quantize node, preset's quantize_config) or run on GPUs"
            )
        if kind.startswith("float8"):
            capability = torch.cuda.get_device_capability(device)
            if capability < FP8_MIN_CAPABILITY:
                raise UserInputError(
                    f"{kind} needs a GPU of compute capability 8.9 or higher (Ada, Hopper, Blackwell); "
                    f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}. Use int8_weight_only"
                )
            if spec.dtype != "bf16":
                raise UserInputError(f"{kind} needs bf16 weights; the loader is set to {spec.dtype}")
    package = ATTENTION_BACKENDS[engine.attention_backend][1]
    if package is not None and importlib.util.find_spec(package) is None:
        raise UserInputError(
            f"attention backend {engine.attention_backend!r} needs the Python package {package!r}, "
            "which is not installed in this environment"
        )


def set_attention_backend(experts: DualExperts, engine: EngineOptions) -> None:
    from cache_dit.attention import set_attn_backend

    name = ATTENTION_BACKENDS[engine.attention_backend][0]
    for module in (experts.high, experts.low):
        set_attn_backend(module, attention_backend=name)


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


def quantize_and_compile(experts: DualExperts, engine: EngineOptions) -> None:
    if engine.quantize is not None:
        import cache_dit
        from cache_dit import QuantizeConfig

        quantized = []
        for module in (experts.high, experts.low):
            kept = _bf16_for_per_row(module, engine.quantize.quant_type)
            config = QuantizeConfig(quant_type=engine.quantize.quant_type,
                                    exclude_layers=list(engine.quantize.exclude_layers) + kept)
            quantized.append(cache_dit.quantize(module, quantize_config=config))
        experts.high, experts.low = quantized
        log.info("quantized both experts to %s", engine.quantize.quant_type)
    if engine.compile:
        # Compile each repeated transformer block, not the loop: cached steps run fewer
        # blocks and the two experts share the block code, so neither recompiles.
        for module in (experts.high, experts.low):
            module.compile_repeated_blocks()


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))
