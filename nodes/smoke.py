"""Wan Smoke Conditioning (testing): a seeded CONDITIONING of the model's text width."""

from __future__ import annotations

from ..accel.job.smoke import smoke_embeddings
from ..accel.model.files import model_config_for
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, WanDualModel


def smoke_conditioning(model, seed: int, tokens: int) -> list:
    text_dim = model_config_for(model.spec)["text_dim"]
    return [[smoke_embeddings(seed, text_dim, tokens), {"smoke_test": True}]]


class WanSmokeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}WanSmokeConditioning",
            display_name="Wan Smoke Conditioning (testing)",
            category=f"{CATEGORY}/testing",
            description=(
                "SMOKE TEST ONLY: random embeddings of the right width for the model, so a whole workflow runs "
                "without a text encoder or weights on disk. It encodes no prompt; the video will be noise."
            ),
            is_experimental=True,
            inputs=[
                WanDualModel.Input("model", tooltip="the model whose text width the embeddings get"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="seed of the random embeddings"),
                io.Int.Input("tokens", default=16, min=1, max=512, tooltip="number of text tokens"),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, seed, tokens) -> io.NodeOutput:
        return io.NodeOutput(smoke_conditioning(model, seed, tokens))
