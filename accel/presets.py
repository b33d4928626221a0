"""YAML presets in cache-dit's own config format, checked key by key with file and line.

A preset holds cache-dit's top-level sections (``cache_config``, ``parallelism_config``,
``attention_backend``, ``quantize_config``) and is turned into cache-dit objects by
``cache_dit.load_configs``. Two keys are this pack's own: ``cache_config.experts`` (per-expert
overrides, ``high`` and ``low``) and a top-level ``compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import (
    ATTENTION_BACKENDS, EXPERTS, SCM_POLICIES, SCM_PRESETS, CacheSettings, EngineOptions, ExpertCacheConfig,
    QuantSettings, ScmSettings,
)
from .errors import UserInputError
from .scm import build_scm

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"

EXPERT_KEYS: dict[str, type | tuple[type, ...]] = {
    "Fn_compute_blocks": int, "Bn_compute_blocks": int, "residual_diff_threshold": (int, float),
    "max_warmup_steps": int, "max_cached_steps": int, "max_continuous_cached_steps": int,
    "enable_taylorseer": bool, "taylorseer_order": int,
}
CACHE_KEYS = {**EXPERT_KEYS, "steps_computation_mask": (str, list), "steps_computation_policy": str, "experts": dict}
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
    ulysses: int | None

    def scm_for(self, steps: int) -> ScmSettings | None:
        if self.cache is None or self.scm_mask is None:
            return None
        if isinstance(self.scm_mask, str):
            return build_scm(steps, self.scm_mask, policy=self.scm_policy)
        return ScmSettings(mask=self.scm_mask, policy=self.scm_policy)


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


def load_preset(name_or_path: str) -> Preset:
    import cache_dit

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
        loaded = cache_dit.load_configs({"quantize_config": data["quantize_config"]})["quantize_config"]
        quantize = QuantSettings(quant_type=loaded.quant_type, exclude_layers=tuple(loaded.exclude_layers))
    parallel = data.get("parallelism_config", {})
    engine = EngineOptions(
        quantize=quantize, compile=data.get("compile", False), attention_backend=backend,
        ulysses_async=parallel.get("ulysses_async", True), ulysses_float8=parallel.get("ulysses_float8", False),
        ulysses_copy_engine=parallel.get("ulysses_copy_engine", True),
        ulysses_head_chunks=parallel.get("ulysses_head_chunks", EngineOptions.ulysses_head_chunks),
    )

    cache_section = data.get("cache_config")
    if cache_section is None:
        return Preset(path.stem, None, None, "dynamic", engine, parallel.get("ulysses_size"))
    common = {k: v for k, v in cache_section.items() if k in EXPERT_KEYS}
    overrides = cache_section.get("experts", {})
    experts = {}
    for expert in EXPERTS:
        merged = {**common, **overrides.get(expert, {})}
        loaded = cache_dit.load_configs({"cache_config": merged})
        dbcache, calibrator = loaded["cache_config"], loaded["calibrator_config"]
        config = ExpertCacheConfig(
            Fn_compute_blocks=dbcache.Fn_compute_blocks, Bn_compute_blocks=dbcache.Bn_compute_blocks,
            max_warmup_steps=dbcache.max_warmup_steps, max_cached_steps=dbcache.max_cached_steps,
            max_continuous_cached_steps=dbcache.max_continuous_cached_steps,
            residual_diff_threshold=float(dbcache.residual_diff_threshold),
            taylorseer=calibrator is not None and calibrator.enable_calibrator,
            taylorseer_order=calibrator.taylorseer_order if calibrator is not None else 1,
        )
        try:
            config.validate(expert)
        except UserInputError as error:
            raise UserInputError(f"{path}: {error}") from error
        experts[expert] = config
    mask = cache_section.get("steps_computation_mask")
    if isinstance(mask, str) and mask not in SCM_PRESETS:
        raise UserInputError(f"{path}: steps_computation_mask {mask!r} is not a preset; use one of {SCM_PRESETS} "
                             "or a list of 0/1")
    if isinstance(mask, list):
        mask = tuple(int(b) for b in mask)
    policy = cache_section.get("steps_computation_policy", "dynamic")
    if policy not in SCM_POLICIES:
        raise UserInputError(f"{path}: steps_computation_policy {policy!r} is unknown; use one of {SCM_POLICIES}")
    return Preset(path.stem, CacheSettings(**experts), mask, policy, engine, parallel.get("ulysses_size"))


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
        low_overrides = {k: v for k, v in low.items() if high[k] != v}
        if low_overrides:
            section["experts"] = {"low": low_overrides}
        data["cache_config"] = section
    if preset.engine.quantize is not None:
        data["quantize_config"] = {"quant_type": preset.engine.quantize.quant_type,
                                   "exclude_layers": list(preset.engine.quantize.exclude_layers)}
    parallel = {k: v for k, v in (("ulysses_size", preset.ulysses), ("ulysses_float8", preset.engine.ulysses_float8)) if v}
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
