"""Wan Smoke Conditioning (testing): a seeded CONDITIONING of the model's text width, and for an
image-to-video model the start-image channels WanImageToVideo would add (random too)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.smoke import smoke_embeddings, smoke_image
from ..accel.model.files import model_config_for
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, WanDualModel


def smoke_conditioning(model, seed: int, tokens: int, latent: dict | None = None) -> list:
    text_dim = model_config_for(model.spec)["text_dim"]
    extras: dict = {"smoke_test": True}
    if model.kind == "i2v":
        if latent is None:
            raise UserInputError("latent: an image-to-video model needs the latent, to give the start image its size")
        # One start image whatever the seed: WanImageToVideo puts the same image on both conditionings.
        image, mask = smoke_image(0, tuple(latent["samples"].shape))
        extras.update(concat_latent_image=image, concat_mask=mask)
    return [[smoke_embeddings(seed, text_dim, tokens), extras]]


class WanSmokeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}WanSmokeConditioning",
            display_name="Wan Smoke Conditioning (testing)",
            category=f"{CATEGORY}/testing",
            description=(
                "SMOKE TEST ONLY: random embeddings of the right width for the model, so a whole workflow runs "
                "without a text encoder or weights on disk; for an image-to-video model also a random start "
                "image as WanImageToVideo puts it on the conditioning. It encodes no prompt; the video will be "
                "noise."
            ),
            is_experimental=True,
            inputs=[
                WanDualModel.Input("model", tooltip="the model whose text width the embeddings get"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="seed of the random embeddings (the start image is the same for every seed)"),
                io.Int.Input("tokens", default=16, min=1, max=512, tooltip="number of text tokens"),
                io.Latent.Input("latent", optional=True,
                                tooltip="image-to-video models only: the latent the start image must match"),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, seed, tokens, latent=None) -> io.NodeOutput:
        return io.NodeOutput(smoke_conditioning(model, seed, tokens, latent))


