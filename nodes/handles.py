"""What flows between the pack's nodes (custom ComfyUI types)."""

from __future__ import annotations

from dataclasses import dataclass

from ..accel.config import ModelSpec

MODEL = "WAN_DUAL_MODEL"
CACHE_CONFIG = "CACHEDIT_CONFIG"
SCM_MASK = "SCM_MASK"
QUANT = "CACHEDIT_QUANT"
CATEGORY = "cache-dit"


@dataclass(frozen=True)
class ModelHandle:
    """Paths and settings only: the weights are loaded by the workers, never in ComfyUI's process."""

    spec: ModelSpec
    boundary: float
