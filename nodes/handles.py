"""What flows between the pack's nodes (custom ComfyUI types)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..accel.errors import UserInputError
from ..accel.job.settings import ModelSpec

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


def validation_result(check: Callable[..., Any], *args: Any) -> bool | str:
    """A node's VALIDATE_INPUTS answer: True, or the input error's text, shown on the node."""
    try:
        check(*args)
    except UserInputError as error:
        return str(error)
    return True
