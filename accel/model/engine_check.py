"""Host-safe: refuse engine options that cannot run here (FP8 on a GPU too old, compile without
Triton, a missing attention package), before any weights are loaded or any worker starts."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserInputError
from ..job.settings import ATTENTION_BACKENDS, EngineOptions, ModelSpec

FP8_MIN_CAPABILITY = (8, 9)
# The quantizations whose scales a tensor-parallel split keeps whole (accel/parallel/tensor_parallel.py):
# per output row or per tensor, the input's per token or per tensor (1x128 / 128x128 blocks are not split yet).
SHARD_QUANT_TYPES = ("float8_per_row", "float8_per_tensor", "float8_weight_only")
TRITON_HINT = "install Triton (it comes with torch's CUDA wheels on Linux; on Windows: pip install triton-windows)"


def triton_available() -> bool:
    from torch.utils._triton import has_triton

    return has_triton()


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


def check_shard(engine: EngineOptions, spec: ModelSpec, ulysses: int) -> None:
    """What residency "shard" (cache-dit's tensor parallelism over the sequence-parallel group) takes."""
    if ulysses < 2:
        raise UserInputError("residency 'shard' splits the weights over the GPUs of a sequence-parallel group: it "
                             "needs a Ulysses degree of 2 or more (2+ GPUs, CFG parallel off or 4+ GPUs)")
    kind = engine.quantize.quant_type if engine.quantize is not None else None
    if kind not in (None, *SHARD_QUANT_TYPES) and spec.fp8_scaled != "as_stored":  # as stored: kind is not applied
        raise UserInputError(f"residency 'shard' splits FP8 weights scaled per row or per tensor "
                             f"({', '.join(SHARD_QUANT_TYPES)}), not {kind}: choose one of them, or resident, swap or stream")
