"""Host-safe: what the expert files hold, read from their safetensors headers only.

The architecture of each model source (random presets, diffusers directories, original-layout
single files) without loading a weight, so the host can validate a job before any worker starts.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..job.settings import ModelSpec
from .fp8_scaled import check_mode, detect

# Both Wan2.2-T2V-A14B experts use diffusers' defaults (40 layers, 40 heads x 128, 5120 wide).
A14B_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
)
# Wan2.2-I2V-A14B: the same experts with the image channels in front (no CLIP image branch). The
# pack's own config: diffusers' single-file conversion would map any 36-channel file to Wan2.1 I2V.
I2V_IN_CHANNELS = 36
A14B_I2V_CONFIG: dict[str, Any] = {**A14B_CONFIG, "in_channels": I2V_IN_CHANNELS}
# Smoke/test model: produces noise, not video.
TINY_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
    out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)
ORIGINAL_HEAD_DIM = 128  # every released Wan checkpoint uses 128-wide heads
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-random": TINY_CONFIG, "tiny-random-i2v": {**TINY_CONFIG, "in_channels": I2V_IN_CHANNELS},
    "a14b-random": A14B_CONFIG, "a14b-random-i2v": A14B_I2V_CONFIG,
}


def model_config_for(spec: ModelSpec) -> dict[str, Any]:
    """The architecture without loading weights (for validation in the host process)."""
    if spec.source in RANDOM_CONFIGS:
        return dict(RANDOM_CONFIGS[spec.source])
    if spec.source == "diffusers":
        configs = []
        for subfolder in ("transformer", "transformer_2"):
            path = Path(spec.path) / subfolder / "config.json"
            require_file(path, f"the diffusers {subfolder} config")
            # diffusers leaves its defaults (the A14B architecture) out of a config.json
            configs.append({**A14B_CONFIG, **json.loads(path.read_text())})
        high, low = configs
        sources = (f"{spec.path}/transformer", f"{spec.path}/transformer_2")
    else:
        high, low = (single_file_config(Path(p), spec.fp8_scaled) for p in (spec.high_path, spec.low_path))
        sources = (spec.high_path, spec.low_path)
    if high["in_channels"] != low["in_channels"]:
        kinds = ["image-to-video" if c["in_channels"] == I2V_IN_CHANNELS else "text-to-video" for c in (high, low)]
        raise UserInputError(
            f"the high-noise expert {sources[0]} is {kinds[0]} ({high['in_channels']} input channels) but the "
            f"low-noise expert {sources[1]} is {kinds[1]} ({low['in_channels']}): pick both T2V or both I2V files"
        )
    if spec.source == "single-file" and high != low:
        raise UserInputError(
            f"the two expert files differ in architecture: {spec.high_path} vs {spec.low_path}; "
            "pick the high-noise and low-noise files of the same Wan2.2 model"
        )
    return high


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found (expected {what})")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, with a clear error for a missing or truncated file."""
    require_file(path, "a .safetensors file")
    if path.suffix != ".safetensors":
        raise UserInputError(f"{path}: only .safetensors files are loaded (pickled checkpoints are refused)")
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise UserInputError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise UserInputError(f"{path}: truncated or not a safetensors file (header claims {header_len} bytes)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserInputError(f"{path}: not a safetensors file ({error})") from error
    data_end = max((meta["data_offsets"][1] for key, meta in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise UserInputError(
            f"{path}: truncated: the header describes {8 + header_len + data_end} bytes but the file has {size}"
        )
    return header


def _strip_prefix(key: str) -> str:
    return key.removeprefix("model.diffusion_model.")


def single_file_config(path: Path, fp8_scaled_mode: str) -> dict[str, Any]:
    """An original-layout file's architecture; an fp8_scaled file is checked for the way it will run
    (a damaged or unknown quantized file fails here, naming the file and what was found)."""
    header = read_safetensors_header(path)
    check_mode(path, detect(path, header), "fp8" if fp8_scaled_mode == "as_stored" else "bf16")
    return infer_original_config(path, header)


def infer_original_config(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Architecture of an original-layout Wan checkpoint, read from tensor shapes."""
    shapes = {_strip_prefix(k): v["shape"] for k, v in header.items() if k != "__metadata__"}
    required = ("patch_embedding.weight", "text_embedding.0.weight", "blocks.0.ffn.0.weight", "head.head.weight")
    missing = [k for k in required if k not in shapes]
    if missing:
        raise UserInputError(
            f"{path}: not a Wan2.2 diffusion model in the original key layout (missing {', '.join(missing)})"
        )
    dim, in_channels, *patch = shapes["patch_embedding.weight"]
    num_layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    head_dim = ORIGINAL_HEAD_DIM if dim % ORIGINAL_HEAD_DIM == 0 else dim // 2
    config = dict(
        patch_size=tuple(patch), num_attention_heads=dim // head_dim, attention_head_dim=head_dim,
        in_channels=in_channels, out_channels=shapes["head.head.weight"][0] // (patch[0] * patch[1] * patch[2]),
        text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=num_layers,
    )
    if any(k.startswith("img_emb.") for k in shapes):
        raise UserInputError(f"{path}: a Wan2.1 image-to-video checkpoint with a CLIP image branch (img_emb); the pack "
                             "runs the Wan2.2 A14B experts (text-to-video, or image-to-video without that branch)")
    if config["in_channels"] not in (16, I2V_IN_CHANNELS) or config["out_channels"] != 16 \
            or config["patch_size"] != (1, 2, 2):
        raise UserInputError(
            f"{path}: expected a Wan2.2 A14B expert (16 latent channels out, 16 in for text-to-video or "
            f"{I2V_IN_CHANNELS} for image-to-video, patch 1x2x2), found in_channels={config['in_channels']}, "
            f"out_channels={config['out_channels']}, patch={config['patch_size']}"
        )
    return config


# diffusers name -> original Wan name, for the keys a WanTransformer3DModel has: the inverse of
# diffusers' convert_wan_transformer_to_diffusers, to write expert files as ComfyUI users keep them
# (random weights for the benchmarks and tests).
TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
]


def original_key(name: str) -> str:
    """A diffusers WanTransformer3DModel parameter name in the original Wan key layout."""
    for new, old in TO_ORIGINAL:
        name = name.replace(new, old)
    name = re.sub(r"\.norm([23])\.", lambda m: f".norm{5 - int(m.group(1))}.", name)  # diffusers swaps them
    return "head.modulation" if name == "scale_shift_table" else name.replace("scale_shift_table", "modulation")


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers WanTransformer3DModel state dict in the original Wan key layout."""
    return {original_key(name): tensor.contiguous() for name, tensor in state.items()}
