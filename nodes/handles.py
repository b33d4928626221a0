"""What flows between the pack's nodes (custom ComfyUI types), and the nodes' shared validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..accel.errors import UserInputError
from ..accel.job.settings import LoraChain, ModelSpec
from ..accel.model.files import I2V_IN_CHANNELS, model_config_for
from .comfy import io

CATEGORY = "cache-dit"
NODE_PREFIX = "CacheDiT_"  # every node id of the pack starts with it (ids are global across all packs)

# The wire names are what saved workflows and links check: keep them.
WanDualModel = io.Custom("WAN_DUAL_MODEL")
CacheConfig = io.Custom("CACHEDIT_CONFIG")
ScmMask = io.Custom("SCM_MASK")
Quantization = io.Custom("CACHEDIT_QUANT")


# What "auto" means where the model decides (Wan's and ComfyUI's templates' values)
AUTO_BOUNDARY = {"t2v": 0.875, "i2v": 0.9}  # Wan's pipelines
AUTO_SHIFT = {"t2v": 8.0, "i2v": 5.0}  # ComfyUI's 20-step templates


@dataclass(frozen=True)
class ModelHandle:
    """Paths and settings only: the weights are loaded by the workers, never in ComfyUI's process."""

    spec: ModelSpec
    boundary: float | None = None  # None: Wan's value for the model's kind
    loras: LoraChain = ()  # LoRA nodes' chain, merged by the workers in this order

    @property
    def kind(self) -> str:
        """'i2v' or 't2v', from the experts' input channels (file headers only)."""
        return "i2v" if model_config_for(self.spec)["in_channels"] == I2V_IN_CHANNELS else "t2v"

    def boundary_or_auto(self) -> float:
        return AUTO_BOUNDARY[self.kind] if self.boundary is None else self.boundary


def validation_result(check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool | str:
    """A node's validate_inputs answer: True, or the input error's text, shown on the node."""
    try:
        check(*args, **kwargs)
    except UserInputError as error:
        return str(error)
    return True


def schema_check(node: type, **values: Any) -> None:
    """ComfyUI's own checks (range, list of choices) for the inputs that ``node.validate_inputs`` names.

    ComfyUI skips its checks for every input named in validate_inputs (that is how a node takes them
    over), and v0.3.64 does not check the choices of a node API combo at all; so a validate_inputs
    that names an input calls this first. Linked inputs arrive as None and are skipped.
    """
    inputs = {i.id: i for i in node.define_schema().inputs}
    for name, value in values.items():
        spec = inputs[name]
        if value is None:
            continue
        options = getattr(spec, "options", None)
        if options is not None and value not in options:
            raise UserInputError(f"{name}: {value!r} is not one of the choices {list(options)}")
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        if low is not None and value < low:
            raise UserInputError(f"{name}: {value} is below the minimum {low}")
        if high is not None and value > high:
            raise UserInputError(f"{name}: {value} is above the maximum {high}")
