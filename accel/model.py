"""Load the two Wan2.2 experts (high-noise, low-noise) as diffusers WanTransformer3DModel.

Sources: a diffusers directory, a pair of single-file safetensors in the original Wan key
layout, or a random preset. Only safetensors are read: no checkpoint is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelSpec
from .errors import UserInputError

log = logging.getLogger(__name__)

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Both Wan2.2-T2V-A14B experts use diffusers' defaults (40 layers, 40 heads x 128, 5120 wide).
A14B_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
)
# Smoke/test model: produces noise, not video.
TINY_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
    out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)
ORIGINAL_HEAD_DIM = 128  # every released Wan checkpoint uses 128-wide heads


@dataclass
class DualExperts:
    high: torch.nn.Module
    low: torch.nn.Module
    spec: ModelSpec

    @property
    def config(self):
        return self.high.config

    def expert(self, name: str) -> torch.nn.Module:
        return self.high if name == "high" else self.low


def load_experts(spec: ModelSpec, device: torch.device | str = "cpu") -> DualExperts:
    dtype = TORCH_DTYPES[spec.dtype]
    device = torch.device(device)
    if spec.source in ("tiny-random", "a14b-random"):
        config = TINY_CONFIG if spec.source == "tiny-random" else A14B_CONFIG
        log.info("building random %s experts (weights are random: output is noise)", spec.source)
        high = _random_expert(config, spec.seed, dtype, device)
        low = _random_expert(config, spec.seed + 1, dtype, device)
    elif spec.source == "diffusers":
        high, low = (_from_diffusers_dir(Path(spec.path), sub, dtype, device) for sub in ("transformer", "transformer_2"))
    else:
        high = _from_single_file(Path(spec.high_path), dtype, device)
        low = _from_single_file(Path(spec.low_path), dtype, device)
        if dict(high.config) != dict(low.config):
            raise UserInputError(
                f"the two expert files differ in architecture: {spec.high_path} vs {spec.low_path}; "
                "pick the high-noise and low-noise files of the same Wan2.2 model"
            )
    return DualExperts(high=high.eval().requires_grad_(False), low=low.eval().requires_grad_(False), spec=spec)


def save_random_experts(root: Path, heads: int, seed: int = 0) -> ModelSpec:
    """Write two tiny random experts with ``heads`` attention heads as a diffusers directory: the
    tiny preset has 2 heads, and Ulysses over 4 ranks needs a multiple of 4."""
    config = {**TINY_CONFIG, "num_attention_heads": heads}
    for subfolder, offset in (("transformer", 0), ("transformer_2", 1)):
        _random_expert(config, seed + offset, torch.float32, torch.device("cpu")).save_pretrained(root / subfolder)
    return ModelSpec(source="diffusers", path=str(root), dtype="fp32")


def model_config_for(spec: ModelSpec) -> dict[str, Any]:
    """The architecture without loading weights (for validation in the host process)."""
    if spec.source == "tiny-random":
        return dict(TINY_CONFIG)
    if spec.source == "a14b-random":
        return dict(A14B_CONFIG)
    if spec.source == "diffusers":
        path = Path(spec.path) / "transformer" / "config.json"
        _require_file(path, "the diffusers transformer config")
        return json.loads(path.read_text())
    high, low = (infer_original_config(Path(p), read_safetensors_header(Path(p))) for p in (spec.high_path, spec.low_path))
    if high != low:
        raise UserInputError(
            f"the two expert files differ in architecture: {spec.high_path} vs {spec.low_path}; "
            "pick the high-noise and low-noise files of the same Wan2.2 model"
        )
    return high


def _random_expert(config: dict[str, Any], seed: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    # Built directly in the target dtype on the target device: a 14B expert in fp32 would not fit.
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = WanTransformer3DModel(**config)
        finally:
            torch.set_default_dtype(previous)
    return keep_fp32_modules(model)


def keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Upcast the modules diffusers keeps in float32 (norms, time embedder, modulation), as
    ``from_pretrained(torch_dtype=...)`` does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and keep.intersection(name.split(".")):
            tensor.data = tensor.data.float()
    return model


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserInputError(f"{path}: file not found (expected {what})")


def _from_diffusers_dir(root: Path, subfolder: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    folder = root / subfolder
    _require_file(folder / "config.json", f"a diffusers Wan2.2 model directory with {subfolder}/config.json")
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserInputError(f"{folder}: no .safetensors weights (only safetensors are loaded, never pickles)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        read_safetensors_header(file)  # a truncated shard fails here with its name
        state.update(_load_tensors(file, device))
    return _assemble(config, state, dtype, device, folder)


def _load_tensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # safetensors raises its own error types
        raise UserInputError(f"{path}: could not read the safetensors file: {error}") from error


def _assemble(config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
              source: Path) -> torch.nn.Module:
    """Build the expert on the meta device and take the loaded tensors as its weights (no copy)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as error:
        raise UserInputError(
            f"{source}: tensors do not match a Wan2.2 expert with {model.config.num_layers} layers, "
            f"{model.config.num_attention_heads} heads of {model.config.attention_head_dim}: {error}"
        ) from error
    keep_fp32_modules(model)
    # The rotary tables are non-persistent buffers, absent from any checkpoint: build them for real.
    with device:
        model.rope = type(model.rope)(
            attention_head_dim=model.config.attention_head_dim, patch_size=model.config.patch_size,
            max_seq_len=model.config.rope_max_seq_len,
        )
    return model


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, with a clear error for a missing or truncated file."""
    _require_file(path, "a .safetensors file")
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


def infer_original_config(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Architecture of an original-layout Wan checkpoint, read from tensor shapes."""
    shapes = {_strip_prefix(k): v["shape"] for k, v in header.items() if k != "__metadata__"}
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    if any(d.startswith("F8") for d in dtypes) or any(k.endswith("scale_weight") for k in shapes):
        raise UserInputError(
            f"{path}: fp8-scaled checkpoints are not supported; use the fp16 or bf16 file "
            "(the pack quantizes to FP8 itself with the FP8 Quantize node)"
        )
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
    if config["in_channels"] != 16 or config["out_channels"] != 16 or config["patch_size"] != (1, 2, 2):
        raise UserInputError(
            f"{path}: expected a Wan2.2 text-to-video expert (16 latent channels in and out, patch 1x2x2), "
            f"found in_channels={config['in_channels']}, out_channels={config['out_channels']}, "
            f"patch={config['patch_size']}"
        )
    if any(k.startswith("img_emb.") for k in shapes):
        raise UserInputError(f"{path}: this is an image-to-video checkpoint; the sampler runs text-to-video experts")
    return config


def _from_single_file(path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    config = infer_original_config(path, read_safetensors_header(path))
    state = convert_wan_transformer_to_diffusers(_load_tensors(path, device))
    return _assemble(config, state, dtype, device, path)
