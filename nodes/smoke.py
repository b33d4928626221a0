"""Wan Smoke Conditioning (testing): a seeded CONDITIONING of the model's text width."""

from __future__ import annotations

from ..accel.job.smoke import smoke_embeddings
from ..accel.model.files import model_config_for
from .handles import CATEGORY, MODEL


class WanSmokeConditioning:
    CATEGORY = f"{CATEGORY}/testing"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "build"
    DESCRIPTION = (
        "SMOKE TEST ONLY: random embeddings of the right width for the model, so a whole workflow runs "
        "without a text encoder or weights on disk. It encodes no prompt; the video will be noise."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL,), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                             "tokens": ("INT", {"default": 16, "min": 1, "max": 512})}}

    def build(self, model, seed, tokens):
        text_dim = model_config_for(model.spec)["text_dim"]
        return ([[smoke_embeddings(seed, text_dim, tokens), {"smoke_test": True}]],)
