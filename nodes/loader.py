"""Load Wan2.2 Dual Transformer: a handle to the two experts (the workers load the weights)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.settings import DTYPES, ModelSpec
from ..accel.model.files import model_config_for
from . import comfy
from .handles import CATEGORY, MODEL, ModelHandle, validation_result

SOURCES = ("single-file", "diffusers", "tiny-random", "a14b-random")
NONE = "none"


class WanDualTransformerLoader:
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = (
        "Wan2.2 A14B as two experts: high-noise (early steps) and low-noise (late steps). Pick the two "
        "files from models/diffusion_models (original Wan layout, fp16/bf16 safetensors), or a diffusers "
        "directory with transformer/ and transformer_2/. 'tiny-random' is a 2-layer random model for smoke "
        "tests (its output is noise); 'a14b-random' is a full-size random model for benchmarks. Nothing is "
        "loaded here: the sampler's GPU workers load the weights themselves."
    )

    @classmethod
    def INPUT_TYPES(cls):
        files = [NONE, *comfy.diffusion_model_files()]
        return {
            "required": {
                "source": (list(SOURCES), {"default": "single-file"}),
                "high_noise_model": (files, {"tooltip": "e.g. wan2.2_t2v_high_noise_14B_fp16.safetensors"}),
                "low_noise_model": (files, {"tooltip": "e.g. wan2.2_t2v_low_noise_14B_fp16.safetensors"}),
                "diffusers_path": ("STRING", {"default": "", "tooltip": "directory with transformer/ and transformer_2/"}),
                "dtype": (list(DTYPES), {"default": "bf16"}),
                "boundary": ("FLOAT", {"default": 0.875, "min": 0.0, "max": 1.0, "step": 0.005,
                                       "tooltip": "the low-noise expert takes over below this fraction of the "
                                                  "train timesteps (0.875 for T2V, 0.9 for I2V)"}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, source, high_noise_model, low_noise_model, diffusers_path, dtype, boundary):
        return validation_result(cls.handle, source, high_noise_model, low_noise_model, diffusers_path, dtype,
                                 boundary)

    @staticmethod
    def handle(source, high_noise_model, low_noise_model, diffusers_path, dtype, boundary) -> ModelHandle:
        if source == "single-file":
            if NONE in (high_noise_model, low_noise_model):
                raise UserInputError("pick both the high-noise and the low-noise model file")
            spec = ModelSpec(source=source, high_path=comfy.diffusion_model_path(high_noise_model),
                             low_path=comfy.diffusion_model_path(low_noise_model), dtype=dtype)
        elif source == "diffusers":
            spec = ModelSpec(source=source, path=diffusers_path.strip(), dtype=dtype)
        else:
            spec = ModelSpec(source=source, dtype="fp32" if source == "tiny-random" else dtype)
        model_config_for(spec)  # a missing, truncated or wrong file fails here, with its name
        return ModelHandle(spec=spec, boundary=boundary)

    def load(self, source, high_noise_model, low_noise_model, diffusers_path, dtype, boundary):
        return (self.handle(source, high_noise_model, low_noise_model, diffusers_path, dtype, boundary),)
