"""Load the two Wan2.2 experts (high-noise, low-noise) as diffusers WanTransformer3DModel.

Sources: a diffusers directory, a pair of single-file safetensors in the original Wan key
layout, or a random preset. Only safetensors are read: no checkpoint is ever unpickled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..job.settings import ModelSpec
from .files import (
    A14B_CONFIG,
    TINY_CONFIG,
    infer_original_config,
    read_safetensors_header,
    require_file,
)

log = logging.getLogger(__name__)

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def _from_diffusers_dir(root: Path, subfolder: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    folder = root / subfolder
    require_file(folder / "config.json", f"a diffusers Wan2.2 model directory with {subfolder}/config.json")
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


def _from_single_file(path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    config = infer_original_config(path, read_safetensors_header(path))
    state = convert_wan_transformer_to_diffusers(_load_tensors(path, device))
    return _assemble(config, state, dtype, device, path)
