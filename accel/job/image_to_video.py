"""Host-safe: the image channels of an image-to-video job, built as ComfyUI builds them.

ComfyUI's ``WanImageToVideo`` (and ``WanFirstLastFrameToVideo``) put on the conditioning a
``concat_latent_image`` (the VAE encoding of the known frames followed by gray frames, in
ComfyUI's un-normalised Wan2.1 latent space) and a ``concat_mask`` (0 on the known latent
frames, 1 elsewhere). An I2V expert takes 36 input channels: the 16 noisy ones, then the mask
inverted and repeated to 4 channels, then the image latent normalised. The 20 extra channels
are built here once per job (the latent's frames and size must match, no resampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import UserInputError
from ..model.latent import LATENT_CHANNELS, process_in

MASK_CHANNELS = 4


def image_channels(concat_latent_image: torch.Tensor, concat_mask: torch.Tensor | None,
                   latent_shape: Sequence[int]) -> torch.Tensor:
    """[B, 4 + 16, T, h, w] float32: ``1 - mask`` (channel mean where it has other than 4, then
    repeated to 4; frames beyond the mask's padded with 0), then the normalised image latent."""
    batch, _, frames, height, width = latent_shape
    image = concat_latent_image.float()
    if image.ndim != 5 or image.shape[1] % LATENT_CHANNELS or tuple(image.shape[2:]) != (frames, height, width):
        raise UserInputError(
            f"the image conditioning's concat_latent_image is {list(image.shape)}; this latent needs "
            f"[batch, {LATENT_CHANNELS}, {frames}, {height}, {width}] (the same length and size in WanImageToVideo "
            "as in the latent)"
        )
    image = image[:, :LATENT_CHANNELS]
    if concat_mask is None:
        mask = torch.zeros(image.shape[0], MASK_CHANNELS, frames, height, width)
    else:
        mask = concat_mask.float()
        if mask.ndim != 5 or tuple(mask.shape[3:]) != (height, width) or mask.shape[2] > frames:
            raise UserInputError(
                f"the image conditioning's concat_mask is {list(mask.shape)}; this latent needs "
                f"[batch, 1 or 4, up to {frames}, {height}, {width}]"
            )
        if mask.shape[1] != MASK_CHANNELS:
            mask = mask.mean(dim=1, keepdim=True)
        mask = 1.0 - mask
        mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, frames - mask.shape[2]))
        mask = mask.expand(-1, MASK_CHANNELS, -1, -1, -1)
    channels = torch.cat([_to_batch(mask, batch), _to_batch(process_in(image), batch)], dim=1)
    return channels.contiguous()


def _to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """As ComfyUI's resize_to_batch_size for the cases a video latent has: repeat to the batch."""
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise UserInputError(f"the image conditioning has batch {x.shape[0]}, the latent {batch}")
    return x.repeat(batch // x.shape[0], 1, 1, 1, 1)


def conditioning_image(entries: Sequence[tuple[Any, Mapping[str, Any]]]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(concat_latent_image, concat_mask) of a ComfyUI CONDITIONING, or None for a text-only one."""
    for _, extras in entries:
        if extras.get("concat_latent_image") is not None:
            return extras["concat_latent_image"], extras.get("concat_mask")
    return None
