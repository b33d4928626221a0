"""YAML presets in cache-dit's own config format, checked key by key with file and line.

A preset holds cache-dit's top-level sections (``cache_config``, ``parallelism_config``,
``attention_backend``, ``quantize_config``), and every file in configs/ also loads with
``cache_dit.load_configs`` (tests/test_presets.py checks it, and that this parse gives the same
values). This module parses the YAML itself, without importing cache-dit (ComfyUI's process may
not have it): a key a preset leaves out gets cache-dit's default (``CACHE_DIT_DEFAULTS``).
The pack's own keys: ``cache_config.experts`` (per-expert overrides, ``high`` and ``low``), a
top-level ``compile``, and ``parallelism_config.ulysses_copy_engine`` / ``ulysses_head_chunks``.

``cache_config.num_inference_steps`` is the step count the SCM mask is written for (cache-dit
needs it to build a named mask such as ``fast``; the presets here say 40, Wan's default). A job
runs the mask at its own step count (``Preset.scm_for``): a named mask is rebuilt for that count,
an explicit 0/1 list is resampled by ``accel.job.scm.rescale_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserInputError
from .scm import build_scm, rescale_mask
from .settings import (
    ATTENTION_BACKENDS,
    DEFAULT_QUANT_EXCLUDES,
    EXPERTS,
    SCM_POLICIES,
    SCM_PRESETS,
    CacheSettings,
    EngineOptions,
    ExpertCacheConfig,
    QuantSettings,
    ScmSettings,
)

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"

EXPERT_KEYS: dict[str, type | tuple[type, ...]] = {
    "Fn_compute_blocks": int, "Bn_compute_blocks": int, "residual_diff_threshold": (int, float),
    "max_warmup_steps": int, "max_cached_steps": int, "max_continuous_cached_steps": int,
    "enable_taylorseer": bool, "taylorseer_order": int,
}
CACHE_KEYS = {**EXPERT_KEYS, "steps_computation_mask": (str, list), "steps_computation_policy": str,
              "num_inference_steps": int, "experts": dict}
# What cache-dit 1.5.3's load_configs gives a key that cache_config leaves out: DBCacheConfig's
# field defaults (cache_dit/caching/cache_contexts/cache_config.py); TaylorSeer only with
# enable_taylorseer true, then of taylorseer_order (default 1; TaylorSeerCalibratorConfig in
# cache_dit/caching/cache_contexts/calibrators/__init__.py, via caching/load_configs.py). Without
# TaylorSeer cache-dit has no calibrator; the pack then keeps taylorseer_order 1.
CACHE_DIT_DEFAULTS: dict[str, Any] = {
    "Fn_compute_blocks": 8, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.08,
    "max_warmup_steps": 8, "max_cached_steps": -1, "max_continuous_cached_steps": -1,
    "enable_taylorseer": False, "taylorseer_order": 1,
}
DEFAULT_QUANT_TYPE = "float8_per_row"  # cache-dit's QuantizeConfig default (exclude_layers: DEFAULT_QUANT_EXCLUDES)
SCHEMA: dict[str, Any] = {
    "cache_config": CACHE_KEYS,
    # ulysses_copy_engine and ulysses_head_chunks are the pack's own keys (accel/copy_engine.py,
    # accel/all_to_all.py); the others are cache-dit's.
    "parallelism_config": {"ulysses_size": int, "ulysses_async": bool, "ulysses_float8": bool,
                           "ulysses_copy_engine": bool, "ulysses_head_chunks": int},
    "attention_backend": str,
    "quantize_config": {"quant_type": str, "exclude_layers": list},
    "compile": bool,
}


@dataclass(frozen=True)
class Preset:
    name: str
    cache: CacheSettings | None
    scm_mask: str | tuple[int, ...] | None  # a cache-dit steps_mask preset name, or explicit bits
    scm_policy: str
    engine: EngineOptions
    # cache_config.num_inference_steps: the step count the mask is written for (an explicit
    # mask's length); None where a named mask's preset does not say.
    scm_reference_steps: int | None = None
    # parallelism_config.ulysses_size: the Ulysses degree this preset asks for. Applied by the
    # sampler where its ulysses_degree input is 0 (auto); None: the sampler's own auto degree.
    ulysses_size: int | None = None

    def scm_for(self, steps: int) -> ScmSettings | None:
        """The preset's SCM mask for a job of ``steps`` steps (None: no mask).

        A named mask (``fast``...) is built by cache-dit's ``steps_mask`` rule for ``steps``; an
        explicit 0/1 list is used as it is at its own length and resampled otherwise
        (``accel.job.scm.rescale_mask``: nearest reference step, last step computed).
        """
        if self.cache is None or self.scm_mask is None:
            return None
        if isinstance(self.scm_mask, str):
            return build_scm(steps, self.scm_mask, policy=self.scm_policy)
        return ScmSettings(mask=rescale_mask(self.scm_mask, steps), policy=self.scm_policy)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserInputError(f"{path}: preset not found; presets in {PRESET_DIR}: {', '.join(list_presets())}")
    return path


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}, line {node.start_mark.line + 1}"


def _type_name(expected) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join({int: "integer", float: "number", bool: "true/false", str: "text", list: "list",
                        dict: "mapping"}[t] for t in types)


def _check(path: Path, node: yaml.Node, schema: dict[str, Any], section: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise UserInputError(f"{_where(path, node)}: {section or 'the preset'} must be a mapping of keys")
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{section}.{key}" if section else key
        if key not in schema:
            raise UserInputError(
                f"{_where(path, key_node)}: unknown key {where!r}; allowed here: {', '.join(schema)}"
            )
        expected = schema[key]
        if key == "experts":
            _check_experts(path, value_node, where)
            continue
        if isinstance(expected, dict):
            _check(path, value_node, expected, where)
            continue
        value = yaml.safe_load(yaml.serialize(value_node))
        types = expected if isinstance(expected, tuple) else (expected,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise UserInputError(
                f"{_where(path, value_node)}: {where} must be {_type_name(expected)}, got {value!r}"
            )


def _check_experts(path: Path, node: yaml.Node, section: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise UserInputError(f"{_where(path, node)}: {section} must map high/low to cache settings")
    for key_node, value_node in node.value:
        if key_node.value not in EXPERTS:
            raise UserInputError(f"{_where(path, key_node)}: unknown expert {key_node.value!r}; use high or low")
        _check(path, value_node, EXPERT_KEYS, f"{section}.{key_node.value}")


def _expert_config(path: Path, expert: str, keys: dict[str, Any]) -> ExpertCacheConfig:
    """One expert's settings as cache-dit's load_configs reads ``keys`` (its defaults filled in)."""
    merged = {**CACHE_DIT_DEFAULTS, **keys}
    config = ExpertCacheConfig(
        Fn_compute_blocks=merged["Fn_compute_blocks"], Bn_compute_blocks=merged["Bn_compute_blocks"],
        max_warmup_steps=merged["max_warmup_steps"], max_cached_steps=merged["max_cached_steps"],
        max_continuous_cached_steps=merged["max_continuous_cached_steps"],
        residual_diff_threshold=float(merged["residual_diff_threshold"]),
        taylorseer=merged["enable_taylorseer"],
        taylorseer_order=merged["taylorseer_order"] if merged["enable_taylorseer"] else 1,
    )
    try:
        config.validate(expert)
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}") from error
    return config


def _scm_mask(path: Path, cache_section: dict[str, Any]) -> tuple[str | tuple[int, ...] | None, int | None]:
    """The mask (a preset name or 0/1 bits) and its reference step count."""
    mask = cache_section.get("steps_computation_mask")
    reference = cache_section.get("num_inference_steps")
    if reference is not None and reference < 1:
        raise UserInputError(f"{path}: cache_config.num_inference_steps must be >= 1, got {reference}")
    if mask is None:
        return None, reference
    if isinstance(mask, str):
        if mask not in SCM_PRESETS:
            raise UserInputError(f"{path}: steps_computation_mask {mask!r} is not a preset; use one of "
                                 f"{SCM_PRESETS} or a list of 0/1")
        if reference is not None:  # cache-dit builds the mask at this count when it loads the file
            try:
                build_scm(reference, mask)
            except UserInputError as error:
                raise UserInputError(f"{path}: cache_config.num_inference_steps: {error}") from error
        return mask, reference
    if not mask or any(isinstance(b, bool) or b not in (0, 1) for b in mask):
        raise UserInputError(f"{path}: steps_computation_mask must be a preset name or a non-empty list of 0 "
                             f"and 1, got {mask!r}")
    if reference is not None and reference != len(mask):
        raise UserInputError(
            f"{path}: steps_computation_mask lists {len(mask)} steps but cache_config.num_inference_steps "
            f"is {reference}; an explicit mask has one 0/1 per step of num_inference_steps"
        )
    return tuple(int(b) for b in mask), len(mask)


def load_preset(name_or_path: str) -> Preset:
    path = preset_path(name_or_path)
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise UserInputError(f"{path}: not valid YAML: {error}") from error
    data: dict[str, Any] = {} if root is None else yaml.safe_load(text)
    if root is not None:
        _check(path, root, SCHEMA, "")

    backend = data.get("attention_backend", "native")
    if backend not in ATTENTION_BACKENDS:
        raise UserInputError(f"{path}: attention_backend {backend!r} is unknown; use one of {tuple(ATTENTION_BACKENDS)}")
    quantize = None
    if "quantize_config" in data:
        section = data["quantize_config"]
        excludes = section.get("exclude_layers", DEFAULT_QUANT_EXCLUDES)
        if not all(isinstance(layer, str) for layer in excludes):
            raise UserInputError(f"{path}: quantize_config.exclude_layers must be a list of layer names, "
                                 f"got {excludes!r}")
        try:  # cache-dit lower-cases the quant type
            quantize = QuantSettings(quant_type=section.get("quant_type", DEFAULT_QUANT_TYPE).lower(),
                                     exclude_layers=tuple(excludes))
        except UserInputError as error:
            raise UserInputError(f"{path}: {error}") from error
    parallel = data.get("parallelism_config", {})
    ulysses_size = parallel.get("ulysses_size")
    if ulysses_size is not None and ulysses_size < 1:
        raise UserInputError(f"{path}: parallelism_config.ulysses_size must be >= 1, got {ulysses_size}")
    try:
        engine = EngineOptions(
            quantize=quantize, compile=data.get("compile", False), attention_backend=backend,
            ulysses_async=parallel.get("ulysses_async", True), ulysses_float8=parallel.get("ulysses_float8", False),
            ulysses_copy_engine=parallel.get("ulysses_copy_engine", True),
            ulysses_head_chunks=parallel.get("ulysses_head_chunks", EngineOptions.ulysses_head_chunks),
        )
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}") from error

    cache_section = data.get("cache_config")
    if cache_section is None:
        return Preset(path.stem, None, None, "dynamic", engine, ulysses_size=ulysses_size)
    common = {k: v for k, v in cache_section.items() if k in EXPERT_KEYS}
    overrides = cache_section.get("experts", {})
    experts = {expert: _expert_config(path, expert, {**common, **overrides.get(expert, {})}) for expert in EXPERTS}
    mask, reference = _scm_mask(path, cache_section)
    policy = cache_section.get("steps_computation_policy", "dynamic")
    if policy not in SCM_POLICIES:
        raise UserInputError(f"{path}: steps_computation_policy {policy!r} is unknown; use one of {SCM_POLICIES}")
    return Preset(path.stem, CacheSettings(**experts), mask, policy, engine,
                  scm_reference_steps=reference, ulysses_size=ulysses_size)


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The preset in cache-dit's YAML format (what ``load_preset`` reads back to the same preset)."""
    data: dict[str, Any] = {"attention_backend": preset.engine.attention_backend}
    if preset.cache is not None:
        def expert_keys(config: ExpertCacheConfig) -> dict[str, Any]:
            return {
                "Fn_compute_blocks": config.Fn_compute_blocks, "Bn_compute_blocks": config.Bn_compute_blocks,
                "residual_diff_threshold": config.residual_diff_threshold,
                "max_warmup_steps": config.max_warmup_steps, "max_cached_steps": config.max_cached_steps,
                "max_continuous_cached_steps": config.max_continuous_cached_steps,
                "enable_taylorseer": config.taylorseer, "taylorseer_order": config.taylorseer_order,
            }

        high, low = expert_keys(preset.cache.high), expert_keys(preset.cache.low)
        section: dict[str, Any] = dict(high)
        if preset.scm_mask is not None:
            section["steps_computation_mask"] = (preset.scm_mask if isinstance(preset.scm_mask, str)
                                                 else list(preset.scm_mask))
            section["steps_computation_policy"] = preset.scm_policy
            if preset.scm_reference_steps is not None:
                section["num_inference_steps"] = preset.scm_reference_steps
        low_overrides = {k: v for k, v in low.items() if high[k] != v}
        if low_overrides:
            section["experts"] = {"low": low_overrides}
        data["cache_config"] = section
    if preset.engine.quantize is not None:
        data["quantize_config"] = {"quant_type": preset.engine.quantize.quant_type,
                                   "exclude_layers": list(preset.engine.quantize.exclude_layers)}
    parallel = {k: v for k, v in (("ulysses_size", preset.ulysses_size), ("ulysses_float8", preset.engine.ulysses_float8)) if v}
    for key in ("ulysses_async", "ulysses_copy_engine"):  # on by default
        if not getattr(preset.engine, key):
            parallel[key] = False
    if preset.engine.ulysses_head_chunks != EngineOptions.ulysses_head_chunks:
        parallel["ulysses_head_chunks"] = preset.engine.ulysses_head_chunks
    if parallel:
        data["parallelism_config"] = parallel
    if preset.engine.compile:
        data["compile"] = True
    return data
