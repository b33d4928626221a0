"""The benchmark's real-weight quality measure, on a tiny random Wan VAE."""

from __future__ import annotations

import math

import torch

from bench.quality import decode, load_vae, psnr


def test_psnr_of_decoded_frames(tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(tmp_path / "vae")
    vae = load_vae(tmp_path, torch.device("cpu"))
    latent = torch.randn(1, 16, 3, 8, 8)
    frames = decode(vae, latent)
    assert frames.shape == (1, 3, 9, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert psnr(frames, frames) == math.inf
    nearby, far = psnr(decode(vae, latent * 1.01), frames), psnr(decode(vae, -latent), frames)
    assert nearby > far > 0
