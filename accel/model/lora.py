"""LoRA files for the Wan2.2 experts: read, map onto diffusers parameter names, merge as ComfyUI does.

Host-safe: imports only the standard library, torch and safetensors at module level (diffusers,
needed to translate original Wan names, is imported inside ``resolve``).

Files are read only as safetensors (a pickle can run code). Accepted key layouts, all mapped onto
the parameters of a diffusers ``WanTransformer3DModel``:

- original Wan module paths: ``diffusion_model.``/``model.diffusion_model.``/``pipe.dit.``/
  ``base_model.model.``/no prefix (lightx2v, DiffSynth), e.g. ``diffusion_model.blocks.3.self_attn.q``;
- the same paths with ``_`` for ``.``: ``lora_unet_`` (kohya, musubi), ``lora_unet__`` (Wan-Fun);
- diffusers paths: ``transformer.blocks.0.attn1.to_q`` (PEFT), ``lycoris_``/``lora_transformer_``
  with ``_`` for ``.``;
- adapters: LoRA pairs in every spelling ComfyUI's LoRA adapter reads (``lora_up``/``lora_down``,
  ``lora_B``/``lora_A``, ``_lora.up``, ``.lora.up``, ``lora_linear_layer.up``, ``lora_B.default``,
  bare ``lora_B``) with an optional ``.alpha``; full deltas ``.diff`` (weight), ``.diff_b`` (bias),
  ``.w_norm``/``.b_norm``, diffusers' ``.lora_B.bias`` (bias) and lightx2v's ``.diff_m`` (``blocks.N.diff_m`` / ``head.diff_m``: the
  block or head modulation, diffusers' ``scale_shift_table``).
- refused: LoCon-Tucker (``lora_mid``), DoRA, LoHa, LoKr, OFT/BOFT, GLoRA, ``set_weight``,
  ``reshape_weight``: merging them as plain LoRA would silently give other weights.

Math (ComfyUI 0.3.64, comfy/lora.py calculate_weight, weight_adapter/lora.py, model_patcher.py
patch_weight_to_device): the weight is copied to float32 once, each LoRA of the chain adds its delta
in chain order (``strength * (alpha / rank) * (up @ down)`` with ``rank = down.shape[0]`` and a
scale of 1.0 when there is no alpha key; ``strength * diff`` for full deltas), and the sum is cast
back to the weight's dtype once. A strength of 0 applies nothing (ComfyUI's loader node returns
the model untouched).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..job.settings import LoraSpec
from .files import read_safetensors_header

# (prefix, path uses "_" for "."), longest first so "lora_unet__" wins over "lora_unet_" and
# the empty prefix (lightx2v / DiffSynth bare names) comes last.
PREFIXES: tuple[tuple[str, bool], ...] = (
    ("model.diffusion_model.", False),
    ("diffusion_model.", False),
    ("base_model.model.", False),
    ("transformer.", False),
    ("pipe.dit.", False),
    ("lora_unet__", True),
    ("lora_unet_", True),
    ("lora_transformer_", True),
    ("lycoris_", True),
    ("", False),
)

# (up suffix, down suffix): the spellings ComfyUI's LoRA adapter reads, in its order.
PAIR_SPELLINGS: tuple[tuple[str, str], ...] = (
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_B", ".lora_A"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
)

# Full-delta suffixes -> which parameter of the module they change. diffusers writes a diff_b as
# PEFT's lora_B.bias (lora_conversion_utils); its scaling is 1 there, so it is a plain bias delta.
DIFF_SLOTS = {
    ".diff": "weight", ".w_norm": "weight", ".diff_b": "bias", ".b_norm": "bias", ".lora_B.bias": "bias",
    ".diff_m": "modulation",
}

REFUSED = (
    (re.compile(r"\.lora_mid\.weight$"), "LoCon with a Tucker mid weight (lora_mid)"),
    (re.compile(r"\.dora_scale$"), "DoRA (dora_scale)"),
    (re.compile(r"\.hada_(w[12]_[ab]|t[12])$"), "LoHa (hada_*)"),
    (re.compile(r"\.lokr_(w[12](_[ab])?|t2)$"), "LoKr (lokr_*)"),
    (re.compile(r"\.oft_blocks$"), "OFT/BOFT (oft_blocks)"),
    (re.compile(r"\.[ab][12]\.weight$"), "GLoRA (a1/a2/b1/b2)"),
    (re.compile(r"\.set_weight$"), "a weight replacement (set_weight)"),
    (re.compile(r"\.reshape_weight$"), "a weight reshape (reshape_weight)"),
)

MAX_UNDERSCORE_PARTS = 13  # 2**12 ways to read "_" as "." or "_"; real Wan paths have at most 8 parts


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """One change to one parameter, as stored in the file."""

    key: str  # the module key as written in the file, prefix included (for messages)
    module: str  # the module path after the prefix, e.g. "blocks.3.self_attn.q" or "blocks_3_self_attn_q"
    underscored: bool  # kohya-style path: each "_" may stand for "."
    slot: str  # "weight" (the module's weight, or the module itself when it is a parameter) or "bias"
    keys: tuple[str, ...]  # every tensor key it was built from
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return "diff" if self.diff is not None else "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def fits(self, shape: tuple[int, ...]) -> bool:
        if self.diff is not None:
            return tuple(self.diff.shape) == tuple(shape)
        # up @ down is reshaped to the weight: conv weights (the Conv3d patch embedding) take
        # [out, rank] @ [rank, in * kernel], as ComfyUI flattens both factors to 2-D.
        return (
            len(shape) >= 2
            and self.up.shape[0] == shape[0]
            and math.prod(self.up.shape[1:]) == self.rank
            and math.prod(self.down.shape[1:]) == math.prod(shape[1:])
        )

    def delta_shape(self) -> tuple[int, ...]:
        if self.diff is not None:
            return tuple(self.diff.shape)
        return (self.up.shape[0], math.prod(self.down.shape[1:]))

    def delta(self, shape: torch.Size, strength: float, device: torch.device) -> torch.Tensor:
        """The float32 change of this adapter at ``strength`` (same operations as ComfyUI)."""
        if self.diff is not None:
            return strength * self.diff.to(device=device, dtype=torch.float32)
        up = self.up.to(device=device, dtype=torch.float32).flatten(start_dim=1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(start_dim=1)
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        # Python-float scalar first, then one multiply of the product: ComfyUI's order.
        return ((strength * scale) * torch.mm(up, down)).reshape(shape)


@dataclass
class LoraFile:
    path: Path
    adapters: list[LoraAdapter]
    unused: list[str]  # keys that are part of no adapter (a lone alpha, an unknown suffix)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class LoraPlan:
    """A file's adapters keyed by the diffusers parameter they change, for one expert."""

    path: Path
    targets: dict[str, LoraAdapter]
    skipped: list[str]  # file keys that match no parameter of the expert (e.g. Wan2.1 k_img)

    def skipped_summary(self, limit: int = 3) -> str:
        """One log line; empty when nothing was skipped."""
        if not self.skipped:
            return ""
        more = ", ..." if len(self.skipped) > limit else ""
        return (
            f"{self.path.name}: {len(self.skipped)} LoRA keys match no parameter of this Wan2.2 expert "
            f"and are skipped ({', '.join(self.skipped[:limit])}{more})"
        )


Patches = dict[str, list[tuple[LoraAdapter, float]]]


# --- the chain a job carries ---------------------------------------------------------------------


# --- reading -------------------------------------------------------------------------------------


def check_lora_file(path: str | Path) -> Path:
    """Refuse anything but a readable safetensors file, reading only its header (host-safe)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(
            f"{path}: only .safetensors LoRA files are loaded; this one is refused (.pt, .pth, .ckpt and .bin "
            "files are pickles, which can run code when opened: use the .safetensors version of the LoRA)"
        )
    read_safetensors_header(path)  # a missing or truncated file fails here with its name
    return path


def read_lora(path: str | Path) -> LoraFile:
    from safetensors import safe_open

    path = check_lora_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise UserInputError(f"{path}: could not read the safetensors file: {error}") from error
    lora = parse_lora(path, tensors)
    lora.metadata = metadata
    return lora


def parse_lora(path: Path, tensors: Mapping[str, torch.Tensor]) -> LoraFile:
    """Group the tensors of a LoRA file into adapters (no model needed)."""
    groups: dict[str, dict[str, str]] = {}  # module key -> role -> tensor key
    unused: list[str] = []
    for key in tensors:
        _refuse_unsupported(path, key)
        split = _split_suffix(key)
        if split is None:
            unused.append(key)
            continue
        stem, role = split
        roles = groups.setdefault(stem, {})
        if role in roles:
            raise UserInputError(f"{path}: {roles[role]} and {key} are two LoRA factors for the same layer {stem}")
        roles[role] = key
    adapters: list[LoraAdapter] = []
    for stem, roles in groups.items():
        prefix, underscored = _prefix_of(stem)
        module = stem[len(prefix):]
        adapters.extend(_adapters_of(path, tensors, stem, module, underscored, roles, unused))
    return LoraFile(path=path, adapters=adapters, unused=unused)


def _refuse_unsupported(path: Path, key: str) -> None:
    for pattern, what in REFUSED:
        if pattern.search(key):
            raise UserInputError(
                f"{path}: {key} belongs to {what}, which the pack does not merge (only LoRA up/down pairs "
                "with alpha and full diff keys); use a plain LoRA version of this file"
            )


def _suffix_roles() -> list[tuple[str, str]]:
    roles = [(up, f"up:{i}") for i, (up, _) in enumerate(PAIR_SPELLINGS)]
    roles += [(down, f"down:{i}") for i, (_, down) in enumerate(PAIR_SPELLINGS)]
    roles += [(".alpha", "alpha"), *((suffix, suffix) for suffix in DIFF_SLOTS)]
    return sorted(roles, key=lambda item: -len(item[0]))  # ".lora_B.weight" before ".lora_B"


SUFFIX_ROLES = _suffix_roles()


def _split_suffix(key: str) -> tuple[str, str] | None:
    """(module key, role) where role is 'up:<spelling>', 'down:<spelling>', 'alpha' or a diff suffix."""
    for suffix, role in SUFFIX_ROLES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def _prefix_of(stem: str) -> tuple[str, bool]:
    return next((prefix, underscored) for prefix, underscored in PREFIXES if stem.startswith(prefix))


def _adapters_of(path: Path, tensors: Mapping[str, torch.Tensor], stem: str, module: str, underscored: bool,
                 roles: dict[str, str], unused: list[str]) -> list[LoraAdapter]:
    adapters = []
    if any(role.startswith(("up:", "down:")) for role in roles):
        adapters.append(_pair_adapter(path, tensors, stem, module, underscored, roles))
    elif "alpha" in roles:
        unused.append(roles["alpha"])  # an alpha alone changes nothing (ComfyUI: "lora key not loaded")
    for suffix, slot in DIFF_SLOTS.items():
        if suffix in roles:
            target = module
            if slot == "modulation":  # lightx2v's blocks.N.diff_m: the modulation parameter of that block
                target, slot = _join(module, "modulation", underscored), "weight"
            adapters.append(LoraAdapter(stem, target, underscored, slot, (roles[suffix],), diff=tensors[roles[suffix]]))
    return adapters


def _pair_adapter(path: Path, tensors: Mapping[str, torch.Tensor], stem: str, module: str, underscored: bool,
                  roles: dict[str, str]) -> LoraAdapter:
    ups = [role for role in roles if role.startswith("up:")]
    downs = [role for role in roles if role.startswith("down:")]
    if len(ups) != 1 or len(downs) != 1 or ups[0].removeprefix("up:") != downs[0].removeprefix("down:"):
        found = ", ".join(roles[role] for role in ups + downs)
        raise UserInputError(f"{path}: {stem} has an incomplete LoRA pair ({found}); expected one up and one down")
    keys = [roles[ups[0]], roles[downs[0]]]
    up, down = tensors[keys[0]], tensors[keys[1]]
    if math.prod(up.shape[1:]) != down.shape[0]:
        raise UserInputError(f"{path}: {keys[0]} {tuple(up.shape)} and {keys[1]} {tuple(down.shape)} differ in rank")
    alpha = None
    if "alpha" in roles:
        keys.append(roles["alpha"])
        value = tensors[roles["alpha"]]
        if value.numel() != 1:
            raise UserInputError(f"{path}: {roles['alpha']} should hold one number, it has shape {tuple(value.shape)}")
        alpha = float(value.item())  # a Python float, as ComfyUI's alpha / rank
    return LoraAdapter(stem, module, underscored, "weight", tuple(keys), up=up, down=down, alpha=alpha)


def _join(module: str, name: str, underscored: bool) -> str:
    return f"{module}{'_' if underscored else '.'}{name}" if module else name


# --- mapping onto the expert ---------------------------------------------------------------------


def resolve(lora: LoraFile, param_shapes: Mapping[str, Sequence[int]]) -> LoraPlan:
    """Map every adapter of ``lora`` onto a parameter of an expert with these diffusers names/shapes."""
    shapes = {name: tuple(shape) for name, shape in param_shapes.items()}
    targets: dict[str, LoraAdapter] = {}
    skipped = list(lora.unused)
    for adapter in lora.adapters:
        names = _parameters_for(adapter, shapes)
        if not names:
            skipped.extend(adapter.keys)
            continue
        if len(names) > 1:
            raise UserInputError(f"{lora.path}: {adapter.key} could mean any of {', '.join(sorted(names))}")
        (name,) = names
        if name in targets:
            raise UserInputError(f"{lora.path}: {targets[name].key} and {adapter.key} both change {name}")
        if not adapter.fits(shapes[name]):
            raise UserInputError(
                f"{lora.path}: {adapter.keys[0]} does not fit this expert: it changes {name} with a delta of shape "
                f"{adapter.delta_shape()}, but the parameter has shape {shapes[name]} "
                "(a LoRA for a model of another size?)"
            )
        targets[name] = adapter
    if not targets:
        sample = ", ".join(skipped[:3])
        raise UserInputError(
            f"{lora.path}: none of its {len(skipped)} keys match a parameter of this Wan2.2 expert "
            f"({sample}{', ...' if len(skipped) > 3 else ''}); is it a LoRA for another model?"
        )
    return LoraPlan(path=lora.path, targets=targets, skipped=sorted(skipped))


def _parameters_for(adapter: LoraAdapter, shapes: dict[str, tuple[int, ...]]) -> set[str]:
    found = set()
    for path in _module_readings(adapter.module, adapter.underscored):
        # Try the path as an original Wan name (translated by diffusers) and as a diffusers name:
        # the two layouts share no parameter name that means different things (the only renamed
        # pair, norm2/norm3, has parameters on one side only).
        for module in {_diffusers_module(path), path} - {None}:
            name = _parameter(module, adapter.slot, shapes)
            if name is not None:
                found.add(name)
    return found


def _module_readings(module: str, underscored: bool) -> list[str]:
    """The module paths a key can mean: kohya keys write "." as "_", but names such as self_attn,
    text_embedding or time_projection contain "_" themselves, so every reading is tried."""
    if not underscored:
        return [module]
    parts = module.split("_")
    if len(parts) > MAX_UNDERSCORE_PARTS:
        return []
    readings = []
    for separators in itertools.product((".", "_"), repeat=len(parts) - 1):
        readings.append(parts[0] + "".join(sep + part for sep, part in zip(separators, parts[1:])))
    return readings


def _parameter(module: str, slot: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
    if slot == "bias":
        return f"{module}.bias" if f"{module}.bias" in shapes else None
    if f"{module}.weight" in shapes:
        return f"{module}.weight"
    return module if module in shapes else None  # a parameter that is not a module's weight (modulation)


_PLACEHOLDER = torch.empty(0)


@functools.lru_cache(maxsize=1 << 16)
def _diffusers_module(original: str) -> str | None:
    """An original Wan module path in diffusers' naming, by diffusers' own checkpoint conversion
    (blocks.N.self_attn.q -> blocks.N.attn1.to_q, blocks.N.modulation -> blocks.N.scale_shift_table,
    head.modulation -> scale_shift_table, norm3 <-> norm2, ...)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    try:  # its renames match ".q." style pieces, so convert a full parameter name
        converted = convert_wan_transformer_to_diffusers({f"{original}.weight": _PLACEHOLDER})
    except (IndexError, KeyError, RuntimeError, ValueError):  # its special handlers (Wan-Animate) index
        return None  # the placeholder tensor: such a name is no Wan2.2 parameter anyway
    if len(converted) != 1:
        return None
    (name,) = converted
    return name.removesuffix(".weight")


# --- merging -------------------------------------------------------------------------------------


def merged_weight(original: torch.Tensor, patches: Sequence[tuple[LoraAdapter, float]]) -> torch.Tensor:
    """``original`` with every (adapter, strength) added, as ComfyUI patches a weight: one float32
    copy, the deltas added in chain order, one cast back to the original dtype. Returns
    ``original`` itself when every strength is 0. float8 weights are rounded to nearest here
    (ComfyUI rounds them stochastically): merge into the dequantized weight and quantize after."""
    active = [(adapter, strength) for adapter, strength in patches if strength != 0.0]
    if not active:
        return original
    weight = original.to(dtype=torch.float32, copy=True)
    for adapter, strength in active:
        weight += adapter.delta(weight.shape, strength, weight.device)
    return weight.to(original.dtype)


def collect_patches(plans: Iterable[tuple[LoraPlan, float]]) -> Patches:
    """Per parameter, the (adapter, strength) of each LoRA of the chain, in chain order."""
    patches: Patches = {}
    for plan, strength in plans:
        if strength == 0.0:
            continue
        for name, adapter in plan.targets.items():
            patches.setdefault(name, []).append((adapter, strength))
    return patches


def plan_chain(chain: Sequence[LoraSpec], expert: str, param_shapes: Mapping[str, Sequence[int]]
               ) -> tuple[Patches, list[LoraPlan]]:
    """Read and resolve every LoRA of the chain that has a non-zero strength on ``expert``."""
    plans = []
    for spec in chain:
        strength = spec.strength(expert)
        if strength != 0.0:  # ComfyUI does not even open a LoRA at strength 0
            plans.append((resolve(read_lora(spec.path), param_shapes), strength))
    return collect_patches(plans), [plan for plan, _ in plans]


def merge_into(module: torch.nn.Module, patches: Patches) -> list[str]:
    """Merge ``patches`` into the parameters of ``module`` in place; returns the names changed."""
    params = dict(module.named_parameters())
    missing = sorted(set(patches) - set(params))
    if missing:
        raise ValueError(f"patches for parameters the module does not have: {', '.join(missing[:3])}")
    changed = []
    with torch.no_grad():
        for name, entries in patches.items():
            weight = params[name].detach()
            merged = merged_weight(weight, entries)
            if merged is not weight:
                weight.copy_(merged)
                changed.append(name)
    return changed


def block_linear_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Every attention and FFN Linear of an expert with ``config``'s widths: original Wan module
    path -> (out, in) features."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {}
    for block in range(config["num_layers"]):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"blocks.{block}.{attn}.{proj}"] = (dim, dim)
        shapes[f"blocks.{block}.ffn.0"] = (config["ffn_dim"], dim)
        shapes[f"blocks.{block}.ffn.2"] = (dim, config["ffn_dim"])
    return shapes


def write_random_lora(path: str | Path, config: Mapping[str, Any], seed: int, rank: int = 4,
                      alpha: float | None = 2.0, scale: float = 0.05) -> Path:
    """A LoRA file in ComfyUI's ``diffusion_model.`` layout over every attention and FFN Linear of
    an expert with ``config``'s widths (original Wan names), plus a bias delta and a modulation
    delta; seeded random factors (smoke workflows, tests, benchmarks)."""
    from safetensors.torch import save_file

    dim = config["num_attention_heads"] * config["attention_head_dim"]
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (rows, cols) in block_linear_shapes(config).items():
        tensors[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * scale
        tensors[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(rank, cols, generator=generator) * scale
        if alpha is not None:
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
    tensors["diffusion_model.blocks.0.ffn.0.diff_b"] = torch.randn(config["ffn_dim"], generator=generator) * scale
    tensors["diffusion_model.blocks.1.diff_m"] = torch.randn(1, 6, dim, generator=generator) * scale
    save_file(tensors, str(path))
    return Path(path)
