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
from .handles import CACHE_CONFIG, CATEGORY, validation_result

CUSTOM = "custom (the settings below)"
FIELDS = {  # widget name suffix -> (ExpertCacheConfig field, widget spec)
    "Fn": ("Fn_compute_blocks", ("INT", {"min": 1, "max": 40, "tooltip": "first blocks always computed; their "
                                                                         "residual decides whether to cache"})),
    "Bn": ("Bn_compute_blocks", ("INT", {"min": 0, "max": 40, "tooltip": "last blocks always computed"})),
    "warmup": ("max_warmup_steps", ("INT", {"min": 0, "max": 100, "tooltip": "first steps of the expert that "
                                                                             "always compute"})),
    "max_cached": ("max_cached_steps", ("INT", {"min": -1, "max": 1000, "tooltip": "-1: no limit"})),
    "max_continuous": ("max_continuous_cached_steps", ("INT", {"min": -1, "max": 1000, "tooltip": "-1: no limit"})),
    "threshold": ("residual_diff_threshold", ("FLOAT", {"min": 0.0, "max": 0.99, "step": 0.01,
                                                        "tooltip": "cache when the relative change of the Fn "
                                                                   "residual is below this; 0 never caches"})),
    "taylorseer": ("taylorseer", ("BOOLEAN", {})),
    "taylorseer_order": ("taylorseer_order", ("INT", {"min": 1, "max": 4})),
}


def _widgets() -> dict:
    widgets = {}
    for expert, defaults in (("high", HIGH_DEFAULT), ("low", LOW_DEFAULT)):
        for suffix, (field, (kind, options)) in FIELDS.items():
            widgets[f"{expert}_{suffix}"] = (kind, {**options, "default": getattr(defaults, field)})
    return widgets


class CacheDiTConfig:
    CATEGORY = CATEGORY
    RETURN_TYPES = (CACHE_CONFIG,)
    RETURN_NAMES = ("cache_config",)
    FUNCTION = "build"
    DESCRIPTION = (
        "cache-dit DBCache + TaylorSeer for each Wan2.2 expert. Defaults are SGLang's Wan2.2 run "
        "(F1B0, threshold 0.24, TaylorSeer; high-noise warmup 4 / max 8 cached, low-noise warmup 2 / max 20). "
        "A preset from the pack's configs/ folder (cache-dit's YAML format) replaces the widgets and may "
        "also carry an SCM mask, FP8 and compile settings. Connect to the sampler's cache_config input; "
        "leave that input empty for no caching."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"preset": ([CUSTOM, *list_presets()], {"default": CUSTOM}), **_widgets()}}

    @classmethod
    def VALIDATE_INPUTS(cls, preset):
        """A preset with an unknown key or a wrong type fails here, naming the file and the line
        (the widgets are range-checked by ComfyUI itself)."""
        if preset == CUSTOM:
            return True
        if preset not in list_presets():  # names only: a prompt must not make the server read other files
            return f"unknown preset {preset!r}; presets: {', '.join(list_presets())}"
        return validation_result(load_preset, preset)

    @staticmethod
    def preset(preset: str, widgets: dict) -> Preset:
        if preset != CUSTOM:
            return load_preset(preset)
        experts = {}
        for expert in ("high", "low"):
            values = {field: widgets[f"{expert}_{suffix}"] for suffix, (field, _) in FIELDS.items()}
            experts[expert] = ExpertCacheConfig(**values)
            experts[expert].validate(expert)
        return Preset(name="custom", cache=CacheSettings(**experts), scm_mask=None, scm_policy="dynamic",
                      engine=EngineOptions(), ulysses=None)

    def build(self, preset, **widgets):
        return (self.preset(preset, widgets),)
