"""Checks of a job against the model's architecture, run before any GPU work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UserInputError
from ..model.latent import LATENT_CHANNELS
from .scm import check_mask_length
from .settings import EXPERTS, JobSettings


def validate_job(
    settings: JobSettings,
    model_config: dict[str, Any],
    latent_shape: Sequence[int],
    cond_shape: Sequence[int],
    uncond_shape: Sequence[int] | None,
    image_shape: Sequence[int] | None = None,
) -> None:
    if len(latent_shape) != 5 or latent_shape[1] != LATENT_CHANNELS:
        raise UserInputError(
            f"latent must be [batch, {LATENT_CHANNELS}, frames, height/8, width/8] (Wan2.1 latent space, "
            f"e.g. from EmptyHunyuanLatentVideo), got shape {list(latent_shape)}"
        )
    patch = model_config["patch_size"]
    if latent_shape[3] % patch[1] or latent_shape[4] % patch[2]:
        raise UserInputError(
            f"latent height and width ({latent_shape[3]}x{latent_shape[4]}) must be multiples of "
            f"{patch[1]}x{patch[2]}: pick an image size that is a multiple of 16 pixels"
        )
    _check_image(model_config, latent_shape, image_shape)
    text_dim = model_config["text_dim"]
    for name, shape in (("positive", cond_shape), ("negative", uncond_shape)):
        if shape is None:
            continue
        if len(shape) != 3 or shape[2] != text_dim:
            raise UserInputError(
                f"{name} conditioning must be [batch, tokens, {text_dim}] for this model, got {list(shape)}; "
                "use the text encoder that belongs to the model (umt5-xxl for Wan2.2)"
            )
        if shape[0] not in (1, latent_shape[0]):
            raise UserInputError(f"{name} conditioning batch {shape[0]} does not match latent batch {latent_shape[0]}")
    if uncond_shape is None and (settings.sampler.cfg_high > 1.0 or settings.sampler.cfg_low > 1.0):
        raise UserInputError("cfg > 1 needs negative conditioning")
    if settings.scm is not None:
        if settings.cache is None:
            raise UserInputError("an SCM mask needs caching: add cache settings (a Cache-DiT Config or a preset)")
        check_mask_length(settings.scm, settings.sampler.steps)
    if settings.cache is not None:
        for expert in EXPERTS:
            settings.cache.for_expert(expert).validate(expert, model_config["num_layers"])


def _check_image(model_config: dict[str, Any], latent_shape: Sequence[int], image_shape: Sequence[int] | None) -> None:
    extra = model_config["in_channels"] - LATENT_CHANNELS
    if extra and image_shape is None:
        raise UserInputError(
            f"this is an image-to-video model ({model_config['in_channels']} input channels): give it the positive "
            "and negative conditioning of WanImageToVideo (or WanFirstLastFrameToVideo), which carry the start image"
        )
    if not extra and image_shape is not None:
        raise UserInputError(
            "the conditioning carries an image (WanImageToVideo's concat_latent_image), but this is a text-to-video "
            "model: load the Wan2.2 I2V experts, or use the text encoder's conditioning alone"
        )
    if image_shape is not None and tuple(image_shape) != (latent_shape[0], extra, *latent_shape[2:]):
        raise UserInputError(
            f"the image channels are {list(image_shape)}; this model and latent need "
            f"{[latent_shape[0], extra, *latent_shape[2:]]}"
        )

