"""Wan VAE Decode (worker group): a LATENT to IMAGE frames with the Wan2.1 VAE, decoded by the workers.

Where it runs: in the warm worker group when that group is on the GPUs the node asks for, whatever
model and engine the group holds (the VAE does not depend on the experts; the sampler's engine,
made of its preset, quantization, compile and attention inputs, is not the decode node's to
repeat; and a group started under another key would replace the warm one, unloading the experts).
The VAE loads in those workers beside the experts on first use and stays loaded with them. With no
warm group on those GPUs (after /free, or a latent that did not come from the sampler) the
optional model input says which group to start. The VAE never loads in ComfyUI's process. A latent
wired straight from the sampler (its last job's, unchanged) is decoded where the workers kept it:
it does not make the round trip through ComfyUI's process again (WorkerGroup.decode).
"""

from __future__ import annotations

import logging

from ..accel.errors import UserInputError
from ..accel.job.settings import EngineOptions
from ..accel.model.vae import TILING_MODES, VAE_DTYPES, check_latent, vae_config
from ..accel.parallel.group import WorkerGroup
from ..accel.parallel.layout import ParallelLayout
from ..accel.parallel.registry import REGISTRY
from . import comfy
from .comfy import io
from .handles import (
    CATEGORY,
    NODE_PREFIX,
    WanDualModel,
    schema_check,
    validation_result,
)
from .sampler import AUTO, parse_layout

log = logging.getLogger(__name__)

VAE_FILES = "vae"  # ComfyUI's list of VAE files (models/vae)


def vae_path(vae_name: str) -> str:
    """The listed file's path, its header checked as a Wan2.1 VAE (names in errors, not paths)."""
    return comfy.checked_model_file("vae_name", VAE_FILES, vae_name, vae_config)


def same_ranks(a: ParallelLayout, b: ParallelLayout) -> bool:
    """The same GPUs (or the same number of CPU ranks), however they are split for sampling."""
    return a.devices == b.devices and a.world == b.world


def group_for(layout: ParallelLayout, model) -> WorkerGroup:
    """The warm group if it is on these ranks; else one started for ``model`` on them."""
    warm = REGISTRY.current
    if warm is not None and warm.alive and same_ranks(warm.layout, layout):
        return warm
    if model is None:
        where = "CPU" if layout.devices is None else f"GPU(s) {list(layout.devices)}"
        raise UserInputError(
            f"no warm worker group on {layout.world} {where} rank(s) to decode in: run the sampler with the "
            "same gpus first, or connect the model (from Load Wan2.2 Dual Transformer) to start one")
    if warm is not None and warm.alive:
        log.warning("the decode's gpus differ from the warm group's (%s): it is replaced by a group on %s",
                    warm.layout, layout)
    return REGISTRY.acquire(model.spec, layout, EngineOptions(), loras=model.loras,
                            compile_cache_dir=comfy.data_dir() / "compile")


def check_widgets(node: type, vae_name, tiling, gpus, dtype) -> None:
    schema_check(node, tiling=tiling, dtype=dtype)
    if vae_name is not None:
        vae_path(vae_name)
    if gpus is not None:
        parse_layout(gpus, 0, False)


class WanVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}WanVAEDecode",
            display_name="Wan VAE Decode (worker group)",
            category=CATEGORY,
            description=(
                "Decodes the Ulysses Parallel Sampler's LATENT to video frames with the Wan2.1 VAE (models/vae, "
                "e.g. wan_2.1_vae.safetensors) in the sampler's warm worker group: the VAE loads in the GPU "
                "workers beside the experts, never in ComfyUI's process, and stays loaded. Tiled, the tiles are "
                "shared out over the group's GPUs (cache-dit's data-parallel tiled decode). The frames are "
                "ComfyUI's VAEDecode's: IMAGE [batch x frames, H, W, 3] in 0..1."
            ),
            inputs=[
                io.Latent.Input("samples", tooltip="the latent to decode: the Ulysses Parallel Sampler's output "
                                                   "(16 channels, Wan2.1 space)"),
                io.Combo.Input("vae_name", options=comfy.model_file_names(VAE_FILES),
                               tooltip="the Wan2.1 VAE from models/vae (wan_2.1_vae.safetensors; Wan2.2 A14B uses "
                                       "it too). The Wan2.2 VAE (48 channels) is the 5B model's and is refused"),
                io.Combo.Input("tiling", options=list(TILING_MODES), default="auto",
                               tooltip="auto: whole frames, as ComfyUI's VAEDecode, unless tiles are faster (enough "
                                       "GPUs to share them: at 480x832, 3 or more) or whole frames would not "
                                       "fit in GPU memory; on: overlapping tiles of 256 pixels, a new one every "
                                       "192, edges blended (diffusers' tiling): bounded memory, the tiles shared "
                                       "over the GPUs (cache-dit); off: whole frames on one GPU"),
                io.String.Input("gpus", default=AUTO,
                                tooltip="the worker group to decode in, as the sampler's gpus: 'auto', '0,1', "
                                        "'cpu' / 'cpu:N'. The sampler's value decodes in its warm group (any "
                                        "split of the same GPUs); other GPUs replace the warm group"),
                io.Combo.Input("dtype", options=list(VAE_DTYPES), default="auto",
                               tooltip="the VAE's compute dtype in the workers; auto: bf16 on GPUs (as ComfyUI "
                                       "on recent GPUs), fp32 on CPU ranks"),
                WanDualModel.Input("model", optional=True,
                                   tooltip="only used when no worker group is warm on these GPUs (after /free): "
                                           "the model whose group to start; the sampler's group is reused "
                                           "without it"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, vae_name, tiling, gpus, dtype) -> bool | str:
        """Names vae_name, so the pack checks it against ComfyUI's list (one text for anything else)
        and reads its header; linked inputs arrive as None and are checked in execute."""
        return validation_result(check_widgets, cls, vae_name, tiling, gpus, dtype)

    @classmethod
    def execute(cls, samples, vae_name, tiling, gpus, dtype, model=None) -> io.NodeOutput:
        check_widgets(cls, vae_name, tiling, gpus, dtype)  # linked widgets were not validated
        path = vae_path(vae_name)
        latent = samples["samples"]
        check_latent(latent)
        group = group_for(parse_layout(gpus, 0, False), model)
        try:
            images = group.decode(latent, path, tiling, dtype=dtype)
        except UserInputError as error:
            raise UserInputError(comfy.without_paths(str(error), {path: vae_name})) from None
        return io.NodeOutput(images)
