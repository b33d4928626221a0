"""Worker side: a job's LoRA chain merged into the loaded experts' weights, in place.

Weights change once per change of the chain, never per forward, and in place (the same tensors,
so compiled blocks keep their graphs). Every patched layer is rebuilt from the weight as loaded
(read back from the expert's file, one layer at a time) plus the chain's deltas, so a chain
applied after others gives bit for bit what a fresh load with that chain gives: no drift from
merging and unmerging, and no second copy of the weights in memory. Float8 layers (an fp8_scaled
file used as stored, or the FP8 Quantize node's) are quantized again from the merged weight with
their own granularity. Random presets have no file to read back: their chain is fixed when the
group starts (a change starts a new group, see parallel/registry.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from ..errors import UserInputError
from ..job.settings import EXPERTS, LoraChain, ModelSpec
from .files import read_safetensors_header
from .fp8_scaled import PREFIX, Fp8ScaledInfo, detect, read_original
from .loading import TORCH_DTYPES
from .lora import merged_weight, plan_chain

log = logging.getLogger(__name__)


class LoadedWeights(Protocol):
    def read(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A parameter's value as loading gave it, before any LoRA (diffusers name)."""


def diffusers_names(original_keys: list[str]) -> dict[str, str]:
    """diffusers name -> original key, by diffusers' own conversion of the original layout."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    tagged = convert_wan_transformer_to_diffusers({key: torch.tensor(index) for index, key in enumerate(original_keys)})
    return {name: original_keys[int(tag)] for name, tag in tagged.items()}


class SingleFileWeights:
    """An original-layout file (fp16/bf16, or fp8_scaled dequantized as ComfyUI computes it)."""

    def __init__(self, path: Path):
        header = read_safetensors_header(path)
        self.path = path
        self.info: Fp8ScaledInfo | None = detect(path, header)
        consumed = self.info.consumed_keys if self.info is not None else frozenset()
        keys = [key.removeprefix(PREFIX) for key in header if key != "__metadata__" and key not in consumed]
        self.original = diffusers_names(keys)

    def read(self, name, dtype, device):
        return read_original(self.path, self.info, self.original[name], dtype, device)


class DiffusersWeights:
    """A diffusers model folder (one or more safetensors shards)."""

    def __init__(self, folder: Path):
        self.shard = {key: file for file in sorted(folder.glob("*.safetensors"))
                      for key in read_safetensors_header(file) if key != "__metadata__"}

    def read(self, name, dtype, device):
        with safe_open(str(self.shard[name]), framework="pt", device="cpu") as handle:
            return handle.get_tensor(name).to(device, dtype)


def loaded_weights(spec: ModelSpec) -> dict[str, LoadedWeights] | None:
    """Where each expert's weights can be read back from; None for the random presets."""
    if spec.source == "single-file":
        return {"high": SingleFileWeights(Path(spec.high_path)), "low": SingleFileWeights(Path(spec.low_path))}
    if spec.source == "diffusers":
        root = Path(spec.path)
        return {"high": DiffusersWeights(root / "transformer"), "low": DiffusersWeights(root / "transformer_2")}
    return None


def _float8_class():
    from torchao.quantization import Float8Tensor

    return Float8Tensor


def value_of(weight: torch.Tensor) -> torch.Tensor:
    """A weight in its compute dtype (a float8 weight dequantized)."""
    return weight.dequantize() if isinstance(weight, _float8_class()) else weight


def write_into(weight: torch.Tensor, value: torch.Tensor) -> None:
    """``value`` into ``weight``'s own storage; a float8 weight quantized again as it was."""
    float8 = _float8_class()
    if not isinstance(weight, float8):
        weight.copy_(value)
        return
    from torchao.quantization.granularity import PerRow, PerTensor

    per_tensor = list(weight.block_size) == list(weight.shape)
    fresh = float8.from_hp(
        value, float8_dtype=weight.qdata.dtype, granularity=PerTensor() if per_tensor else PerRow(),
        mm_config=weight.mm_config, kernel_preference=weight.kernel_preference, act_quant_kwargs=weight.act_quant_kwargs,
    )
    weight.qdata.copy_(fresh.qdata)
    weight.scale.copy_(fresh.scale.view_as(weight.scale))


class LoraPatcher:
    """The chain merged into one loaded model, and which parameters it changed."""

    def __init__(self, experts, spec: ModelSpec):
        self.experts = experts
        self.spec = spec
        self.weights = loaded_weights(spec)
        self.load_dtype = TORCH_DTYPES[spec.dtype]  # what loading cast the file's tensors to
        self.chain: LoraChain | None = ()  # None: a change failed part-way
        self.patched: dict[str, set[str]] = {expert: set() for expert in EXPERTS}
        self.notes: list[str] = []  # keys the chain's files have that match no weight

    def apply(self, chain: LoraChain, *, quantized: bool, write: bool = True) -> None:
        """Make ``chain`` the merged one. ``quantized``: the FP8 Quantize node's quantization has
        run, so an unpatched weight is no longer the loaded value and is read back too.
        ``write=False``: the weights are empty here (a worker whose host copy rank 0 fills and
        merges): the chain is planned and recorded, nothing is written."""
        if chain == self.chain:
            return
        if self.weights is None and self.chain:
            raise UserInputError(f"the {self.spec.source} preset has no weight file to restore from: its LoRAs "
                                 "are fixed when the model loads (start a new worker group to change them)")
        planned = {}
        for expert in EXPERTS:  # every file read and resolved first: a bad LoRA changes no weight
            params = dict(self.experts.expert(expert).named_parameters())
            planned[expert] = params, *plan_chain(chain, expert, {name: tuple(p.shape) for name, p in params.items()})
        notes = [f"{expert}-noise expert: {plan.skipped_summary()}"
                 for expert, (_, _, plans) in planned.items() for plan in plans if plan.skipped]
        for note in notes:
            log.info("%s", note)
        self.chain = None  # until every weight is written: a failure part-way is repaired by the next apply
        for expert, (params, patches, _) in planned.items():
            if not write:
                self.patched[expert] = set(patches)
                continue
            before = self.patched[expert]
            self.patched[expert] = before | set(patches)  # may differ from the loaded weights from here on
            with torch.no_grad():
                for name in sorted(self.patched[expert]):
                    param = params[name]
                    original = self._original(expert, name, param, quantized or name in before)
                    write_into(param.data, merged_weight(original, patches.get(name, [])))
            self.patched[expert] = set(patches)
        self.chain, self.notes = chain, notes

    def _original(self, expert: str, name: str, param: torch.Tensor, changed: bool) -> torch.Tensor:
        """The loaded value: the weight itself unless a LoRA or quantization changed it."""
        if not changed:
            return value_of(param.data)
        # As loading made it: cast to the load dtype, then (norms, modulation) kept in float32.
        return self.weights[expert].read(name, self.load_dtype, param.device).to(value_of(param.data).dtype)

