"""FP8 Quantize: cache-dit's torchao quantization of both experts, applied inside the workers."""

from __future__ import annotations

from ..accel.job.settings import DEFAULT_QUANT_EXCLUDES, QUANT_TYPES, QuantSettings
from .handles import CATEGORY, QUANT, validation_result


class FP8Quantize:
    CATEGORY = CATEGORY
    RETURN_TYPES = (QUANT,)
    RETURN_NAMES = ("quantization",)
    FUNCTION = "build"
    DESCRIPTION = (
        "Quantize both experts' linear layers with cache-dit (torchao) after loading. FP8 needs a CUDA GPU "
        "of compute capability 8.9+ (Ada, Hopper, Blackwell) and bf16 weights. Use it WITH the sampler's "
        "compile switch: eager FP8 is slower than bf16 (H200, one A14B expert at 32,760 tokens: bf16 3.28 s, "
        "FP8 eager 3.40 s, bf16 compiled 2.82 s, FP8 compiled 2.36 s). It also halves the weights' memory."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "quant_type": (list(QUANT_TYPES), {"default": "float8_per_row"}),
                "exclude_layers": ("STRING", {"default": ", ".join(DEFAULT_QUANT_EXCLUDES),
                                              "tooltip": "layer names containing any of these stay in bf16"}),
            }
        }

    @staticmethod
    def settings(quant_type: str, exclude_layers: str) -> QuantSettings:
        excludes = tuple(part.strip() for part in exclude_layers.split(",") if part.strip())
        return QuantSettings(quant_type=quant_type, exclude_layers=excludes)

    @classmethod
    def VALIDATE_INPUTS(cls, quant_type, exclude_layers):
        return validation_result(cls.settings, quant_type, exclude_layers)

    def build(self, quant_type, exclude_layers):
        return (self.settings(quant_type, exclude_layers),)
