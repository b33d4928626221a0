"""Load LoRA (both experts): a LoRA from ComfyUI's loras list on the pack's model handle, chainable
like ComfyUI's LoraLoaderModelOnly, with a strength per expert. The workers merge the chain."""

from __future__ import annotations

import dataclasses

from ..accel.errors import UserInputError
from ..accel.job.settings import LORA_STRENGTH_LIMIT, LoraSpec
from ..accel.model.lora import check_lora_file
from . import comfy
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, ModelHandle, WanDualModel

LORAS = "loras"  # ComfyUI's list


def lora_path(lora_name: str) -> str:
    """An entry of ComfyUI's loras list, a safetensors file with a readable header."""
    return comfy.checked_model_file("lora_name", LORAS, lora_name, check_lora_file)


def with_lora(model: ModelHandle, lora_name: str, strength_high_noise: float, strength_low_noise: float) -> ModelHandle:
    spec = LoraSpec(lora_path(lora_name), strength_high=strength_high_noise, strength_low=strength_low_noise)
    return dataclasses.replace(model, loras=(*model.loras, spec))


class WanDualLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        strength = dict(default=1.0, min=-LORA_STRENGTH_LIMIT, max=LORA_STRENGTH_LIMIT, step=0.01)
        return io.Schema(
            node_id=f"{NODE_PREFIX}WanDualLoraLoader",
            display_name="Load LoRA (Wan2.2 Dual)",
            category=CATEGORY,
            description=(
                "A LoRA from models/loras on both Wan2.2 experts, with a strength for each (0 leaves that expert "
                "as it is): e.g. the Lightning 4-step LoRAs, one file per expert with the other strength at 0. "
                "Chain several. Formats: ComfyUI's (diffusion_model.*, lora_unet_*), diffusers/PEFT, lightx2v "
                "(diff, diff_b, diff_m); safetensors only. The workers merge the weights once per change of "
                "the chain (no reload, no recompile), as ComfyUI computes them."
            ),
            inputs=[
                WanDualModel.Input("model", tooltip="from Load Wan2.2 Dual Transformer or another LoRA node"),
                io.Combo.Input("lora_name", options=comfy.model_file_names(LORAS),
                               tooltip="a LoRA file from models/loras"),
                io.Float.Input("strength_high_noise", **strength, tooltip="strength on the high-noise expert"),
                io.Float.Input("strength_low_noise", **strength, tooltip="strength on the low-noise expert"),
            ],
            outputs=[WanDualModel.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        """Names the file input: checked against ComfyUI's loras list here (v0.3.64 checks no node API
        combo), and again in execute (a linked value skips validation)."""
        if lora_name is None:
            return True
        try:
            lora_path(lora_name)
        except UserInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, lora_name, strength_high_noise, strength_low_noise) -> io.NodeOutput:
        return io.NodeOutput(with_lora(model, lora_name, strength_high_noise, strength_low_noise))
