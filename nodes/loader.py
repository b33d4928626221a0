"""Load Wan2.2 Dual Transformer: a handle to the two experts (the workers load the weights)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.settings import DTYPES, FP8_SCALED_MODES, RANDOM_SOURCES, ModelSpec
from ..accel.model.files import model_config_for
from . import comfy
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, ModelHandle, WanDualModel, schema_check

SOURCES = ("single-file", "diffusers", *RANDOM_SOURCES)
NONE = "none"
EXPERT_FILES = "diffusion_models"  # ComfyUI's list of the two experts' files
DIFFUSERS = "diffusers"  # ComfyUI's folder of diffusers directories
EXPERT_DIRS = ("transformer", "transformer_2")  # what a Wan2.2 diffusers directory holds


def listed_path(input_name: str, value: str, resolve) -> str | None:
    """The path of a picked list entry (None for 'none'); an unlisted value is refused with one text
    per input, whatever it names (see comfy.not_listed)."""
    if value == NONE:
        return None
    try:
        return resolve(value)
    except UserInputError as error:
        raise UserInputError(f"{input_name}: {error}") from None


def model_spec(source: str, high_noise_model: str, low_noise_model: str, diffusers_model: str,
               dtype: str, fp8_scaled: str = "dequantize") -> ModelSpec:
    """The experts' files from ComfyUI's lists (paths outside ComfyUI), their headers checked."""
    high = listed_path("high_noise_model", high_noise_model, lambda n: comfy.model_file_path(EXPERT_FILES, n))
    low = listed_path("low_noise_model", low_noise_model, lambda n: comfy.model_file_path(EXPERT_FILES, n))
    directory = listed_path("diffusers_model", diffusers_model,
                            lambda n: comfy.model_dir_path(DIFFUSERS, n, EXPERT_DIRS))
    if source == "single-file":
        if high is None or low is None:
            raise UserInputError("pick both the high-noise and the low-noise model file")
        spec = ModelSpec(source=source, high_path=high, low_path=low, dtype=dtype, fp8_scaled=fp8_scaled)
    elif source == "diffusers":
        if directory is None:
            raise UserInputError("pick a diffusers directory (models/diffusers/<name> with transformer/ and "
                                 "transformer_2/)")
        spec = ModelSpec(source=source, path=directory, dtype=dtype)
    else:
        spec = ModelSpec(source=source, dtype="fp32" if source.startswith("tiny-random") else dtype)
    try:
        model_config_for(spec)  # a truncated or wrong file fails here
    except UserInputError as error:
        raise UserInputError(comfy.without_paths(str(error), {high: high_noise_model, low: low_noise_model,
                                                        directory: diffusers_model})) from None
    return spec


class WanDualTransformerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = [NONE, *comfy.model_file_names(EXPERT_FILES)]
        return io.Schema(
            node_id=f"{NODE_PREFIX}WanDualTransformerLoader",
            display_name="Load Wan2.2 Dual Transformer",
            category=CATEGORY,
            description=(
                "Wan2.2 A14B as two experts: high-noise (early steps) and low-noise (late steps). Pick the two "
                "files from models/diffusion_models (original Wan layout: fp16/bf16 or ComfyUI's fp8_scaled, T2V "
                "or I2V), or a "
                "directory of models/diffusers with transformer/ and transformer_2/. 'tiny-random' (-i2v) is a "
                "2-layer random model for smoke tests (its output is noise); 'a14b-random' (-i2v) a full-size "
                "random model for benchmarks. Nothing is loaded here: the sampler's GPU workers load the weights themselves."
            ),
            inputs=[
                io.Combo.Input("source", options=list(SOURCES), default="single-file",
                               tooltip="where the experts come from: two files, a diffusers directory, or a "
                                       "random model (smoke tests, benchmarks)"),
                io.Combo.Input("high_noise_model", options=files, default=NONE,
                               tooltip="single-file: the high-noise expert from models/diffusion_models, e.g. "
                                       "wan2.2_t2v_high_noise_14B_fp16.safetensors"),
                io.Combo.Input("low_noise_model", options=files, default=NONE,
                               tooltip="single-file: the low-noise expert from models/diffusion_models, e.g. "
                                       "wan2.2_t2v_low_noise_14B_fp16.safetensors"),
                io.Combo.Input("diffusers_model", options=[NONE, *comfy.model_dir_names(DIFFUSERS, EXPERT_DIRS)],
                               default=NONE,
                               tooltip="diffusers: a directory of models/diffusers with transformer/ and "
                                       "transformer_2/, e.g. Wan2.2-T2V-A14B-Diffusers"),
                io.Combo.Input("dtype", options=list(DTYPES), default="bf16",
                               tooltip="the compute dtype in the workers (the tiny random models always run fp32)"),
                io.Combo.Input("fp8_scaled", options=list(FP8_SCALED_MODES), default="dequantize",
                               tooltip="fp8_scaled files (ComfyUI's templates' experts): 'dequantize' on load to "
                                       "the dtype, as ComfyUI computes them where it has no FP8 matmuls (28.6 GB "
                                       "per A14B expert in bf16); 'as_stored': the file's FP8 weights and scales "
                                       "used directly with FP8 matmuls, as ComfyUI does on FP8 GPUs (Ada, Hopper, "
                                       "Blackwell): about 14 GB per expert, bf16 only. Other files ignore it"),
                io.Float.Input("boundary", default=0.0, min=0.0, max=1.0, step=0.005,
                               tooltip="Wan's expert switch (when the sampler's expert_switch is 'boundary'): "
                                       "the low-noise expert takes over below this fraction of the train "
                                       "timesteps; 0 = auto: 0.875 for T2V, 0.9 for I2V"),
            ],
            outputs=[WanDualModel.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, source, high_noise_model, low_noise_model, diffusers_model, dtype,
                        fp8_scaled) -> bool | str:
        """Names the model inputs, so ComfyUI's list check of them is off (newer ComfyUI) or was never
        there (v0.3.64 does not check a node API combo's choices): model_spec checks that each is an
        entry of ComfyUI's list, then reads the files' headers. ``boundary`` is not named: ComfyUI
        keeps its range check. Linked (converted) inputs arrive as None: checked in execute."""
        values = (source, high_noise_model, low_noise_model, diffusers_model, dtype, fp8_scaled)
        try:
            # the fixed choices it names (a random source ignores dtype / fp8_scaled: checked here)
            schema_check(cls, source=source, dtype=dtype, fp8_scaled=fp8_scaled)
            if any(v is None for v in values):
                return True
            model_spec(*values)
        except UserInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, source, high_noise_model, low_noise_model, diffusers_model, dtype, fp8_scaled,
                boundary) -> io.NodeOutput:
        schema_check(cls, source=source, dtype=dtype, fp8_scaled=fp8_scaled)  # linked: not validated
        spec = model_spec(source, high_noise_model, low_noise_model, diffusers_model, dtype, fp8_scaled)
        return io.NodeOutput(ModelHandle(spec=spec, boundary=boundary or None))
