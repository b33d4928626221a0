"""Load Wan2.2 Dual Transformer: a handle to the two experts (the workers load the weights)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.settings import DTYPES, ModelSpec
from ..accel.model.files import model_config_for
from . import comfy
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, ModelHandle, WanDualModel

SOURCES = ("single-file", "diffusers", "tiny-random", "a14b-random")
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
               dtype: str) -> ModelSpec:
    """The experts' files from ComfyUI's lists (paths outside ComfyUI), their headers checked."""
    high = listed_path("high_noise_model", high_noise_model, lambda n: comfy.model_file_path(EXPERT_FILES, n))
    low = listed_path("low_noise_model", low_noise_model, lambda n: comfy.model_file_path(EXPERT_FILES, n))
    directory = listed_path("diffusers_model", diffusers_model,
                            lambda n: comfy.model_dir_path(DIFFUSERS, n, EXPERT_DIRS))
    if source == "single-file":
        if high is None or low is None:
            raise UserInputError("pick both the high-noise and the low-noise model file")
        spec = ModelSpec(source=source, high_path=high, low_path=low, dtype=dtype)
    elif source == "diffusers":
        if directory is None:
            raise UserInputError("pick a diffusers directory (models/diffusers/<name> with transformer/ and "
                                 "transformer_2/)")
        spec = ModelSpec(source=source, path=directory, dtype=dtype)
    else:
        spec = ModelSpec(source=source, dtype="fp32" if source == "tiny-random" else dtype)
    try:
        model_config_for(spec)  # a truncated or wrong file fails here
    except UserInputError as error:
        raise UserInputError(without_paths(str(error), {high: high_noise_model, low: low_noise_model,
                                                        directory: diffusers_model})) from None
    return spec


def without_paths(text: str, names: dict[str | None, str]) -> str:
    """In ComfyUI a message names a file by its list entry, not by where the server keeps it."""
    if not comfy.in_comfyui():
        return text
    for path, name in names.items():
        if path is not None and path != name:
            text = text.replace(path, name)
    return text


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
                "files from models/diffusion_models (original Wan layout, fp16/bf16 safetensors), or a "
                "directory of models/diffusers with transformer/ and transformer_2/. 'tiny-random' is a 2-layer "
                "random model for smoke tests (its output is noise); 'a14b-random' is a full-size random model "
                "for benchmarks. Nothing is loaded here: the sampler's GPU workers load the weights themselves."
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
                               tooltip="the weights' dtype in the workers (tiny-random always runs fp32)"),
                io.Float.Input("boundary", default=0.875, min=0.0, max=1.0, step=0.005,
                               tooltip="the low-noise expert takes over below this fraction of the train "
                                       "timesteps (0.875 for T2V, 0.9 for I2V)"),
            ],
            outputs=[WanDualModel.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, source, high_noise_model, low_noise_model, diffusers_model, dtype) -> bool | str:
        """Names the model inputs, so ComfyUI's list check of them is off (newer ComfyUI) or was never
        there (v0.3.64 does not check a node API combo's choices): model_spec checks that each is an
        entry of ComfyUI's list, then reads the files' headers. ``boundary`` is not named: ComfyUI
        keeps its range check. Linked (converted) inputs arrive as None: checked in execute."""
        values = (source, high_noise_model, low_noise_model, diffusers_model, dtype)
        if any(v is None for v in values):
            return True
        try:
            model_spec(*values)
        except UserInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, source, high_noise_model, low_noise_model, diffusers_model, dtype, boundary) -> io.NodeOutput:
        spec = model_spec(source, high_noise_model, low_noise_model, diffusers_model, dtype)
        return io.NodeOutput(ModelHandle(spec=spec, boundary=boundary))
