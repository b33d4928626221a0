"""The Wan2.1 VAE (a file of ComfyUI's ``vae`` folder, original Wan key layout) as diffusers'
``AutoencoderKLWan``: decode ComfyUI LATENTs to IMAGE frames and encode IMAGE frames to LATENTs,
exactly as ComfyUI's VAEDecode / VAEEncode lay them out, tiled to bound memory and split over a
worker group's ranks with cache-dit's data-parallel tiled decode.

Host-safe at import (torch and safetensors only): the host reads a file's header to check it;
diffusers and cache-dit are imported by the worker-side calls.

ComfyUI's conventions for Wan2.1 (v0.3.64):
- A LATENT holds the VAE's own latent space (the samplers un-normalise with latent_formats.Wan21's
  mean/std before they return it): the VAE decodes it as it is, and so does diffusers'
  ``AutoencoderKLWan.decode`` (Wan's pipelines un-normalise just before calling it).
- VAEDecode: [B, 3, T, H, W] in -1..1 -> ``clamp((x + 1) / 2, 0, 1)`` in float32 -> channels last
  -> the batch's frames one after another: IMAGE [B*T, H, W, 3], float32 in 0..1.
- VAEEncode: IMAGE [T, H, W, 3] cropped to multiples of 8 -> ``2x - 1`` -> one video [1, 3, T, H, W]
  -> the posterior's mean: LATENT [1, 16, 1 + (T - 1) // 4, H / 8, W / 8].
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from .files import read_safetensors_header

log = logging.getLogger(__name__)

# What every Wan2.1 VAE shares (and what diffusers' conversion's fixed block indices assume);
# the widths are read from the file. ComfyUI itself builds only base_dim 96, z_dim 16.
WAN21_ARCHITECTURE: dict[str, Any] = dict(
    dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
)
WAN21_KEY = "decoder.middle.0.residual.0.gamma"  # the original layout's Wan VAE (diffusers' detection key)
WAN22_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # Wan2.2's residual VAE (the 5B model's)
DIFFUSERS_KEY = "decoder.mid_block.resnets.0.norm1.gamma"
SPATIAL = 8  # pixels per latent pixel
TEMPORAL = 4  # frames per latent frame after the first
# diffusers' default tiles (pixels): 256 wide, a new one every 192 (64 blended)
DEFAULT_TILE = (256, 192)
TILING_MODES = ("auto", "on", "off")
VAE_DTYPES = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 on a GPU (as ComfyUI on recent GPUs), fp32 on CPU
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The worker group's messages: host -> ranks, and rank 0's answers
VAE_REQUESTS = {"decode": "decoded", "encode": "encoded"}
FRAMES_DTYPE = torch.float16  # the frames travel to the host in fp16 (half of fp32; error < 2.5e-4 in 0..1)


# --- the file: header checks and config (host-safe) ------------------------------------------------

def vae_config(path: Path | str, header: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``AutoencoderKLWan`` config of a Wan2.1 VAE file, from its header (no weight read)."""
    path = Path(path)
    header = read_safetensors_header(path) if header is None else header
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    if WAN22_KEY in shapes:
        raise UserInputError(f"{path}: this is the Wan2.2 VAE (48 latent channels, for the 5B model); the A14B "
                             "experts' latents are Wan2.1's: pick wan_2.1_vae.safetensors")
    if DIFFUSERS_KEY in shapes:
        encoder_in, decoder_out, post_quant = ("encoder.conv_in.weight", "decoder.conv_out.weight",
                                               "post_quant_conv.weight")
    elif WAN21_KEY in shapes:
        encoder_in, decoder_out, post_quant = "encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight"
    else:
        raise UserInputError(f"{path}: not a Wan VAE (no '{WAN21_KEY}' tensor): pick wan_2.1_vae.safetensors")
    try:
        base_dim = shapes[encoder_in][0]
        decoder_base_dim = shapes[decoder_out][1]
        z_dim = shapes[post_quant][0]
    except (KeyError, IndexError) as error:
        raise UserInputError(f"{path}: incomplete Wan VAE file (missing {error})") from None
    if z_dim != 16:
        raise UserInputError(f"{path}: a Wan VAE with {z_dim} latent channels; the Wan2.1 VAE has 16")
    return {**WAN21_ARCHITECTURE, "base_dim": base_dim, "decoder_base_dim": decoder_base_dim, "z_dim": z_dim}


def file_key(path: Path | str) -> tuple[str, int, int]:
    """What a warm VAE must match: the file, its size and modification time (a replaced file reloads)."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def check_latent(latent: torch.Tensor) -> None:
    if latent.ndim != 5 or latent.shape[1] != 16:
        raise UserInputError(f"the latent has shape {list(latent.shape)}; the Wan2.1 VAE decodes [batch, 16, "
                             "frames, height/8, width/8] (the Wan sampler's or EmptyHunyuanLatentVideo's LATENT)")


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[-1] < 3 or images.shape[1] < SPATIAL or images.shape[2] < SPATIAL:
        raise UserInputError(f"the image has shape {list(images.shape)}; expected frames [T, H, W, 3] of at "
                             f"least {SPATIAL}x{SPATIAL} pixels")


def parse_tile(tile: tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """(tile size, stride) in pixels, multiples of 8 with 0 < stride <= size; None: diffusers' default."""
    size, stride = DEFAULT_TILE if tile is None else (int(tile[0]), int(tile[1]))
    if size % SPATIAL or stride % SPATIAL or not 0 < stride <= size:
        raise UserInputError(f"VAE tiles of {size} pixels every {stride}: both must be multiples of {SPATIAL}, "
                             "the stride at most the size")
    return size, stride


# --- ComfyUI's layouts ------------------------------------------------------------------------------

def frames_from_video(video: torch.Tensor) -> torch.Tensor:
    """The VAE's [B, 3, T, H, W] in -1..1 as ComfyUI's VAEDecode outputs it: [B*T, H, W, 3] in 0..1."""
    images = torch.clamp((video.float() + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)
    return images.reshape(-1, *images.shape[-3:])


def video_from_frames(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAEEncode input: frames [T, H, W, C] in 0..1, cropped to multiples of 8 (centred, as
    ComfyUI crops), the first 3 channels, as one video [1, 3, T, H, W] in -1..1."""
    height, width = (images.shape[1] // SPATIAL) * SPATIAL, (images.shape[2] // SPATIAL) * SPATIAL
    top, left = (images.shape[1] % SPATIAL) // 2, (images.shape[2] % SPATIAL) // 2
    images = images[:, top:top + height, left:left + width, :3]
    return (images.movedim(-1, 0).unsqueeze(0) * 2.0 - 1.0)


# --- the original key layout (for writing files as ComfyUI stores them) -----------------------------

def _residual(prefix: str, shortcut: bool) -> list[str]:
    names = [f"{prefix}.residual.{i}.{p}" for i, p in ((0, "gamma"), (2, "weight"), (2, "bias"), (3, "gamma"),
                                                       (6, "weight"), (6, "bias"))]
    return names + ([f"{prefix}.shortcut.weight", f"{prefix}.shortcut.bias"] if shortcut else [])


def _conv(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def _middle(prefix: str) -> list[str]:
    attention = [f"{prefix}.1.norm.gamma", *_conv(f"{prefix}.1.to_qkv"), *_conv(f"{prefix}.1.proj")]
    return [*_residual(f"{prefix}.0", False), *attention, *_residual(f"{prefix}.2", False)]


def original_keys() -> list[str]:
    """Every tensor name of a Wan2.1 VAE in the original layout (Wan's and ComfyUI's modules): encoder
    stages of 2 residual blocks and a downsample (temporal in stages 1-2), decoder stages of 3 and an
    upsample (temporal in stages 0-1); widths change at the first block of encoder stages 1-2 and of
    decoder stage 1 (shortcut convs)."""
    keys = _conv("encoder.conv1")
    index = 0
    for stage in range(4):
        for block in range(2):
            keys += _residual(f"encoder.downsamples.{index}", block == 0 and stage in (1, 2))
            index += 1
        if stage < 3:
            keys += _conv(f"encoder.downsamples.{index}.resample.1")
            keys += _conv(f"encoder.downsamples.{index}.time_conv") if stage in (1, 2) else []
            index += 1
    keys += [*_middle("encoder.middle"), "encoder.head.0.gamma", *_conv("encoder.head.2"), *_conv("conv1"),
             *_conv("conv2"), *_conv("decoder.conv1"), *_middle("decoder.middle")]
    index = 0
    for stage in range(4):
        for block in range(3):
            keys += _residual(f"decoder.upsamples.{index}", block == 0 and stage == 1)
            index += 1
        if stage < 3:
            keys += _conv(f"decoder.upsamples.{index}.resample.1")
            keys += _conv(f"decoder.upsamples.{index}.time_conv") if stage in (0, 1) else []
            index += 1
    return [*keys, "decoder.head.0.gamma", *_conv("decoder.head.2")]


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKLWan`` state dict in the original layout: the inverse of diffusers'
    ``convert_wan_vae_to_diffusers``, built by running that conversion on the original names."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    names = {diffusers: original for diffusers, original in
             convert_wan_vae_to_diffusers({k: k for k in original_keys()}).items()}
    if set(names) != set(state):
        raise ValueError(f"the original layout does not cover this VAE: missing {sorted(set(state) - set(names))[:5]}, "
                         f"extra {sorted(set(names) - set(state))[:5]}")
    return {names[k]: v for k, v in state.items()}


def random_vae(seed: int = 0, base_dim: int = 8, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random Wan2.1-architecture VAE (z_dim 16) whose output spans -1..1 rather than sitting at 0 or
    at the clamp: norms' gammas around 1, small biases, the last conv scaled. ComfyUI builds only
    base_dim 96 (the released size)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**{**WAN21_ARCHITECTURE, "base_dim": base_dim, "z_dim": 16})
        with torch.no_grad():
            for name, tensor in vae.named_parameters():
                if name.endswith("gamma"):
                    tensor.copy_(1.0 + 0.2 * torch.randn_like(tensor))
                elif name.endswith("bias"):
                    tensor.copy_(0.02 * torch.randn_like(tensor))
            vae.decoder.conv_out.weight.mul_(2.0)
    return vae.to(dtype).eval().requires_grad_(False)


def save_random_vae(path: Path | str, seed: int = 0, base_dim: int = 8, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random Wan2.1 VAE in ComfyUI's (the original) key layout, as wan_2.1_vae.safetensors is."""
    from safetensors.torch import save_file

    state = to_original_layout({k: v.contiguous() for k, v in random_vae(seed, base_dim, dtype).state_dict().items()})
    save_file(state, str(path))
    return Path(path)


# --- the worker side -------------------------------------------------------------------------------

def vae_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in VAE_DTYPES:
        raise UserInputError(f"VAE dtype {name!r} is unknown; expected one of {VAE_DTYPES}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return TORCH_DTYPES[name]


def load_vae(path: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The file as ``AutoencoderKLWan`` on ``device``: diffusers' single-file conversion for this class
    (``convert_wan_vae_to_diffusers``, what ``from_single_file`` applies) with the config read from the
    header, so nothing is fetched from the Hub. Original or diffusers layout; safetensors only."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import load_file

    path, device = Path(path), torch.device(device)
    config = vae_config(path)
    state = load_file(str(path), device=str(device))
    if WAN21_KEY in state:
        state = convert_wan_vae_to_diffusers(state)
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(config)
    try:
        missing, unexpected = vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False,
                                                  assign=True)
        if missing or unexpected:
            raise RuntimeError(f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    except RuntimeError as error:
        raise UserInputError(f"{path}: tensors do not match a Wan2.1 VAE of width {config['base_dim']}: "
                             f"{error}") from error
    if device.type == "cuda":
        channels_last_convolutions(vae)
    log.info("loaded the Wan2.1 VAE %s (width %d) on %s in %s", path.name, config["base_dim"], device, dtype)
    return vae.eval().requires_grad_(False)


def channels_last_convolutions(vae) -> None:
    """The 3-d convolutions' weights in channels_last_3d: cuDNN then picks its NDHWC kernels, and the
    480x832x81 decode takes 1.65 s instead of 1.91 s on an H200 (bench/results/*-vae-conv.md; the
    frames differ by bf16 rounding, at most 0.05). Only on the GPU: the CPU's kernels gain nothing."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last_3d)


def _set_tiles(vae, tiling: bool, tile: tuple[int, int]) -> None:
    vae.use_tiling = tiling
    vae.tile_sample_min_height = vae.tile_sample_min_width = tile[0]
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = tile[1]


def tile_count(pixels: tuple[int, int], tile: tuple[int, int]) -> int:
    """Tiles of diffusers' tiled decode/encode over frames of ``pixels`` (height, width); 0 when one
    tile covers them (diffusers then takes its untiled path)."""
    height, width = pixels
    if height <= tile[0] and width <= tile[0]:
        return 0
    return math.ceil(height / tile[1]) * math.ceil(width / tile[1])


def untiled_bytes(latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Peak memory of an untiled decode of one video, plus every video's frames: the causal decoder
    keeps one latent frame's activations at full resolution (measured on an H200: 5.0 GB for a
    60 x 104 latent of 21 frames in bf16, i.e. 800 kB per latent pixel), the frames are held in the
    VAE's dtype, in float32 and in fp16 for the transfer."""
    batch, _, frames, height, width = latent_shape
    size = torch.finfo(dtype).bits // 8
    out = batch * (1 + TEMPORAL * (frames - 1)) * 3 * height * width * SPATIAL ** 2
    return int(800e3 * height * width * size / 2 + out * (size + 4 + 2))


def resolve_tiling(mode: str | bool, pixels: tuple[int, int], tile: tuple[int, int], world: int,
                   untiled_need: int | None = None, free: int | None = None) -> tuple[bool, str]:
    """"on", "off", or "auto": tiles when they are faster (the group's ranks share them, each decoding
    its round-robin share; the time follows the pixels decoded, a tile costing a whole tile's, as
    measured on an H200: 15 tiles of 256 px = 2.46x the untiled 480 x 832 time, 4.5 s vs 1.8 s) or when
    the untiled decode would not fit in ``free`` memory; else the whole frames, as ComfyUI's VAEDecode."""
    if mode in (True, "on"):
        return True, "tiling on"
    if mode in (False, "off"):
        return False, "tiling off"
    if mode != "auto":
        raise UserInputError(f"tiling {mode!r} is unknown; expected one of {TILING_MODES}")
    count = tile_count(pixels, tile)
    if count == 0:
        return False, "one tile covers the frames"
    tiled_cost, untiled_cost = math.ceil(count / world) * tile[0] ** 2, pixels[0] * pixels[1]
    if untiled_need is not None and free is not None and untiled_need > 0.9 * free:
        return True, (f"the untiled decode needs about {untiled_need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB "
                      "free: tiled")
    if tiled_cost < untiled_cost:
        return True, f"{count} tiles over {world} ranks decode fewer pixels per rank than whole frames: tiled"
    return False, f"{count} tiles over {world} rank(s) would decode more pixels than whole frames: untiled"


@torch.no_grad()
def decode(vae, latent: torch.Tensor, tiling: bool = True, tile: tuple[int, int] | None = None) -> torch.Tensor:
    """One process: LATENT samples [B, 16, T, h, w] -> IMAGE [B*T, 8h, 8w, 3] float32 in 0..1, video by
    video (diffusers' slicing); tiled: diffusers' tiles of ``tile`` = (size, stride) pixels."""
    check_latent(latent)
    _set_tiles(vae, tiling, parse_tile(tile))
    vae.use_slicing = True
    param = next(vae.parameters())
    video = vae.decode(latent.to(param.device, param.dtype)).sample
    return frames_from_video(video)


@torch.no_grad()
def encode(vae, images: torch.Tensor, tiling: bool = True, tile: tuple[int, int] | None = None) -> torch.Tensor:
    """One process: IMAGE [T, H, W, 3] in 0..1 -> LATENT [1, 16, 1 + (T-1)//4, H/8, W/8] (the posterior's
    mean, as ComfyUI's VAEEncode), float32."""
    check_images(images)
    _set_tiles(vae, tiling, parse_tile(tile))
    param = next(vae.parameters())
    return vae.encode(video_from_frames(images).to(param.device, param.dtype)).latent_dist.mode().float()


@dataclass
class _Loaded:
    key: tuple
    vae: Any


class GroupVae:
    """A worker's warm VAE (one file at a time, loaded on first use), and its decode and encode with
    the other ranks of the group: tiled, every rank decodes a share of the tiles (cache-dit's
    data-parallel tiled decode / encode for AutoencoderKLWan, tiles dealt round-robin, rank 0
    blends them); untiled or a latent within one tile, rank 0 alone. Every rank calls in the same
    order (the group's control loop broadcasts each message); rank 0's result is the answer."""

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1):
        self.device, self.rank, self.world = device, rank, world
        self._loaded: _Loaded | None = None
        self.load_s = 0.0  # what the last request spent loading the file (0: it was warm)
        self.tiles, self.reason = 0, ""  # the last request's tiles (0: whole frames) and why

    def get(self, path: Path | str, dtype: str = "auto"):
        torch_dtype = vae_dtype(dtype, self.device)
        key = (file_key(path), torch_dtype)
        self.load_s = 0.0
        if self._loaded is None or self._loaded.key != key:
            self._loaded = None  # free the previous one first
            start = time.perf_counter()
            vae = load_vae(path, self.device, torch_dtype)
            if self.world > 1:
                vae = self._parallelize(vae)
            self._loaded = _Loaded(key, vae)
            self.load_s = time.perf_counter() - start
        return self._loaded.vae

    def _parallelize(self, vae):
        """cache-dit's planner for AutoencoderKLWan, on a mesh over the whole group (its public entry,
        ``parallelize_autoencoder``, builds the mesh from ``torch.accelerator``, absent on CPU ranks)."""
        from cache_dit.distributed.autoencoders.autoencoder_kl_wan import (
            AutoencoderKLWanDataParallelismPlanner,
        )
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(self.device.type, (self.world,), mesh_dim_names=("vae_dp",))
        tiling = (vae.use_tiling, vae.tile_sample_min_height, vae.tile_sample_stride_height)
        vae = AutoencoderKLWanDataParallelismPlanner().parallelize_tiling(vae, mesh)
        vae.use_tiling, size, stride = tiling  # the planner turns tiling on: each call sets its own
        _set_tiles(vae, vae.use_tiling, (size, stride))
        return vae

    def _free_bytes(self) -> int | None:
        """The smallest free GPU memory over the group's ranks (every rank must choose alike)."""
        if self.device.type != "cuda":
            return None
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)  # reusable
        free = torch.tensor([torch.cuda.mem_get_info(self.device)[0] + cached], dtype=torch.int64, device=self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(free, op=dist.ReduceOp.MIN)
        return int(free.item())

    def decode(self, path: Path | str, latent: torch.Tensor, tiling: str | bool = "auto",
               tile: tuple[int, int] | None = None, dtype: str = "auto") -> torch.Tensor | None:
        """IMAGE frames on rank 0 (float32 on this rank's device), None on the others."""
        check_latent(latent)
        tile = parse_tile(tile)
        vae = self.get(path, dtype)
        pixels = (latent.shape[-2] * SPATIAL, latent.shape[-1] * SPATIAL)
        need = untiled_bytes(tuple(latent.shape), self._loaded.key[1]) if tiling == "auto" else None
        tiled, self.reason = resolve_tiling(tiling, pixels, tile, self.world, need,
                                            self._free_bytes() if tiling == "auto" else None)
        self.tiles = tile_count(pixels, tile) if tiled else 0
        if self.world > 1 and self.tiles:
            frames = decode(vae, latent, True, tile)  # every rank, its share of the tiles
            return frames if self.rank == 0 else None
        if self.rank != 0:
            return None  # one tile or whole frames: rank 0 alone
        try:
            return decode(vae, latent, tiled, tile)
        except torch.OutOfMemoryError:
            if tiled or self.world > 1:  # alone, rank 0 cannot take the other ranks' tiled path
                raise UserInputError("out of GPU memory decoding whole frames: set the decode's tiling to 'on'")
            torch.cuda.empty_cache()
            log.warning("out of GPU memory decoding whole frames: decoding in tiles")
            self.tiles, self.reason = tile_count(pixels, tile), "out of memory with whole frames: tiled"
            return decode(vae, latent, True, tile)

    def encode(self, path: Path | str, images: torch.Tensor, tiling: str | bool = "auto",
               tile: tuple[int, int] | None = None, dtype: str = "auto") -> torch.Tensor | None:
        """The LATENT's samples on rank 0, None on the others; "auto" tiles only when the ranks share
        the tiles faster (the encode's memory is not modelled)."""
        check_images(images)
        tile = parse_tile(tile)
        vae = self.get(path, dtype)
        pixels = ((images.shape[1] // SPATIAL) * SPATIAL, (images.shape[2] // SPATIAL) * SPATIAL)
        tiled, self.reason = resolve_tiling(tiling, pixels, tile, self.world)
        self.tiles = tile_count(pixels, tile) if tiled else 0
        if self.rank != 0 and not (self.world > 1 and self.tiles):
            return None
        latent = encode(vae, images, tiled, tile)
        return latent if self.rank == 0 else None

    def serve(self, kind: str, payload: dict[str, Any], tensors: dict[str, torch.Tensor]):
        """One request of the group's control loop -> rank 0's answer (kind, payload, tensors)."""
        options = dict(tiling=payload.get("tiling", "auto"), tile=payload.get("tile"),
                       dtype=payload.get("dtype", "auto"))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        if kind == "decode":
            result = self.decode(payload["vae_path"], tensors["latent"], **options)
            out = {} if result is None else {"frames": result.to(FRAMES_DTYPE)}
        elif kind == "encode":
            result = self.encode(payload["vae_path"], tensors["images"], **options)
            out = {} if result is None else {"latent": result}
        else:
            raise ValueError(f"not a VAE request: {kind!r}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        info = {"seconds": time.perf_counter() - start, "load_s": self.load_s, "tiles": self.tiles,
                "tiling": self.reason, "world": self.world, "dtype": str(self._loaded.key[1]),
                "peak_mem_gb_rank0": (torch.cuda.max_memory_allocated(self.device) / 2**30
                                      if self.device.type == "cuda" else None)}
        return VAE_REQUESTS[kind], info, out  # on the device: the channel copies them out once
