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
    RANDOM_CONFIGS,
    TINY_CONFIG,
    infer_original_config,
    model_config_for,
    read_safetensors_header,
    require_file,
)
from .fp8_scaled import Fp8Weight, detect, iter_state, replace_linear_weights, split_fp8

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
    model_config_for(spec)  # a mismatched pair fails here, naming both files
    if spec.source in RANDOM_CONFIGS:
        config = RANDOM_CONFIGS[spec.source]
        log.info("building random %s experts (weights are random: output is noise)", spec.source)
        high = _random_expert(config, spec.seed, dtype, device)
        low = _random_expert(config, spec.seed + 1, dtype, device)
    elif spec.source == "diffusers":
        high, low = (_from_diffusers_dir(Path(spec.path), sub, dtype, device) for sub in ("transformer", "transformer_2"))
    else:
        high = _from_single_file(Path(spec.high_path), spec, dtype, device)
        low = _from_single_file(Path(spec.low_path), spec, dtype, device)
    return DualExperts(high=high.eval().requires_grad_(False), low=low.eval().requires_grad_(False), spec=spec)


def save_random_experts(root: Path, seed: int = 0, **architecture: Any) -> ModelSpec:
    """Write two tiny random experts as a diffusers directory, the tiny preset's architecture with
    ``architecture`` changed: e.g. 4 heads (Ulysses over 4 ranks needs a multiple of 4; the preset
    has 2), or widths that FP8 matmuls take (multiples of 16)."""
    config = {**TINY_CONFIG, **architecture}
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
        state.update(iter_state(file, None, "bf16", dtype, device))
    return _assemble(config, state, dtype, device, folder)


def _assemble(config: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
              source: Path, fp8: dict[str, Fp8Weight] | None = None) -> torch.nn.Module:
    """Build the expert on the meta device and take the loaded tensors as its weights (no copy);
    ``fp8``: Linear weights kept as stored float8 (torchao per-tensor Float8Tensor)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    expected_missing = {f"{name}.weight" for name in fp8 or {}}
    try:
        missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False,
                                                    assign=True)
        if set(missing) != expected_missing or unexpected:
            raise RuntimeError(f"missing keys {sorted(set(missing) - expected_missing)[:5]}, "
                               f"unexpected keys {sorted(unexpected)[:5]}")
    except RuntimeError as error:
        raise UserInputError(
            f"{source}: tensors do not match a Wan2.2 expert with {model.config.num_layers} layers, "
            f"{model.config.num_attention_heads} heads of {model.config.attention_head_dim}: {error}"
        ) from error
    keep_fp32_modules(model)
    if fp8:
        replace_linear_weights(model, fp8, dtype)
    # The rotary tables are non-persistent buffers, absent from any checkpoint: build them for real.
    with device:
        model.rope = type(model.rope)(
            attention_head_dim=model.config.attention_head_dim, patch_size=model.config.patch_size,
            max_seq_len=model.config.rope_max_seq_len,
        )
    return model


def _from_single_file(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Streamed tensor by tensor onto ``device`` (host RAM holds one tensor at a time); an
    fp8_scaled file dequantized as it streams, or its float8 weights kept as stored."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    header = read_safetensors_header(path)
    config = infer_original_config(path, header)
    info = detect(path, header)
    mode = "fp8" if spec.fp8_scaled == "as_stored" else "bf16"
    state = convert_wan_transformer_to_diffusers(dict(iter_state(path, info, mode, dtype, device)))
    plain, fp8 = split_fp8(state)
    if info is not None:
        log.info("%s (%s)", info.summary(), "used as stored" if fp8 else "dequantized on load")
    return _assemble(config, plain, dtype, device, path, fp8)
