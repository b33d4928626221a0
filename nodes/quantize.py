"""FP8 Quantize: cache-dit's torchao quantization of both experts, applied inside the workers."""

from __future__ import annotations

from ..accel.job.settings import DEFAULT_QUANT_EXCLUDES, QUANT_TYPES, QuantSettings
from .comfy import io
from .handles import (
    CATEGORY,
    NODE_PREFIX,
    Quantization,
    schema_check,
    validation_result,
)


def quant_settings(quant_type: str, exclude_layers: str) -> QuantSettings:
    excludes = tuple(part.strip() for part in exclude_layers.split(",") if part.strip())
    return QuantSettings(quant_type=quant_type, exclude_layers=excludes)


class FP8Quantize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}FP8Quantize",
            display_name="FP8 Quantize",
            category=CATEGORY,
            description=(
                "Quantize both experts' linear layers with cache-dit (torchao) after loading. FP8 needs a CUDA "
                "GPU of compute capability 8.9+ (Ada, Hopper, Blackwell) and bf16 weights. Use it WITH the "
                "sampler's compile switch: eager FP8 is slower than bf16 (H200, one A14B expert at 32,760 tokens: "
                "bf16 3.28 s, FP8 eager 3.40 s, bf16 compiled 2.82 s, FP8 compiled 2.36 s). It also halves the "
                "weights' memory."
            ),
            inputs=[
                io.Combo.Input("quant_type", options=list(QUANT_TYPES), default="float8_per_row",
                               tooltip="cache-dit's quantization type; float8_per_row is the tested one"),
                io.String.Input("exclude_layers", default=", ".join(DEFAULT_QUANT_EXCLUDES),
                                tooltip="comma-separated; layer names containing any of these stay in bf16"),
            ],
            outputs=[Quantization.Output(display_name="quantization")],
        )

    @classmethod
    def validate_inputs(cls, quant_type) -> bool | str:
        return validation_result(schema_check, cls, quant_type=quant_type)

    @classmethod
    def execute(cls, quant_type, exclude_layers) -> io.NodeOutput:
        return io.NodeOutput(quant_settings(quant_type, exclude_layers))
