"""Cache-DiT Config: DBCache + TaylorSeer per expert, or a YAML preset from configs/."""

from __future__ import annotations

from ..accel.job.presets import Preset, list_presets, load_preset
from ..accel.job.settings import (
    HIGH_DEFAULT,
    LOW_DEFAULT,
    CacheSettings,
    EngineOptions,
    ExpertCacheConfig,
)
from .comfy import io
from .handles import CATEGORY, NODE_PREFIX, CacheConfig, schema_check, validation_result

CUSTOM = "custom (the settings below)"
EXPERTS = {"high": ("high-noise", HIGH_DEFAULT), "low": ("low-noise", LOW_DEFAULT)}
FIELDS = {  # widget name suffix -> (ExpertCacheConfig field, input type, options, tooltip)
    "Fn": ("Fn_compute_blocks", io.Int, {"min": 1, "max": 40},
           "first blocks always computed; their residual decides whether to cache"),
    "Bn": ("Bn_compute_blocks", io.Int, {"min": 0, "max": 40}, "last blocks always computed"),
    "warmup": ("max_warmup_steps", io.Int, {"min": 0, "max": 100}, "first steps of the expert that always compute"),
    "max_cached": ("max_cached_steps", io.Int, {"min": -1, "max": 1000},
                   "most steps of the expert that may be cached; -1: no limit"),
    "max_continuous": ("max_continuous_cached_steps", io.Int, {"min": -1, "max": 1000},
                       "most cached steps in a row; -1: no limit"),
    "threshold": ("residual_diff_threshold", io.Float, {"min": 0.0, "max": 0.99, "step": 0.01},
                  "cache when the relative change of the Fn residual is below this; 0 never caches"),
    "taylorseer": ("taylorseer", io.Boolean, {},
                   "TaylorSeer: a cached step extrapolates the residual from the last computed ones"),
    "taylorseer_order": ("taylorseer_order", io.Int, {"min": 1, "max": 4}, "TaylorSeer's order of extrapolation"),
}


def widgets() -> list:
    inputs = []
    for expert, (label, defaults) in EXPERTS.items():
        for suffix, (field, kind, options, tooltip) in FIELDS.items():
            inputs.append(kind.Input(f"{expert}_{suffix}", default=getattr(defaults, field), **options,
                                     tooltip=f"{label} expert: {tooltip} (custom only)"))
    return inputs


def build_preset(preset: str, values: dict) -> Preset:
    """The preset file, or the widgets' settings for 'custom'."""
    if preset != CUSTOM:
        return load_preset(preset)
    experts = {}
    for expert in EXPERTS:
        settings = {field: values[f"{expert}_{suffix}"] for suffix, (field, *_) in FIELDS.items()}
        experts[expert] = ExpertCacheConfig(**settings)
        experts[expert].validate(expert)
    return Preset(name="custom", cache=CacheSettings(**experts), scm_mask=None, scm_policy="dynamic",
                  engine=EngineOptions())


def check_preset(node: type, preset: str) -> None:
    schema_check(node, preset=preset)  # names only: a prompt must not make the server read other files
    if preset not in (CUSTOM, None):  # None: a linked input, known only in execute
        load_preset(preset)


class CacheDiTConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}Config",
            display_name="Cache-DiT Config",
            category=CATEGORY,
            description=(
                "cache-dit DBCache + TaylorSeer for each Wan2.2 expert. Defaults are SGLang's Wan2.2 run "
                "(F1B0, threshold 0.24, TaylorSeer; high-noise warmup 4 / max 8 cached, low-noise warmup 2 / "
                "max 20). A preset from the pack's configs/ folder (cache-dit's YAML format) replaces the "
                "widgets and may also carry an SCM mask, FP8 and compile settings. Connect to the sampler's "
                "cache_config input; leave that input empty for no caching."
            ),
            inputs=[
                io.Combo.Input("preset", options=[CUSTOM, *list_presets()], default=CUSTOM,
                               tooltip="a YAML preset of the pack's configs/ folder, or the settings below"),
                *widgets(),
            ],
            outputs=[CacheConfig.Output(display_name="cache_config")],
        )

    @classmethod
    def validate_inputs(cls, preset) -> bool | str:
        """A preset with an unknown key or a wrong type fails here, naming the file and the line (the
        widgets are not named, so ComfyUI range-checks them itself)."""
        return validation_result(check_preset, cls, preset)

    @classmethod
    def execute(cls, preset, **values) -> io.NodeOutput:
        check_preset(cls, preset)  # again: a linked (converted) input skipped validate_inputs
        return io.NodeOutput(build_preset(preset, values))
