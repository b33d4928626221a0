"""SCM Mask: which steps compute and which may be cached (cache-dit's steps_mask)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.scm import build_scm
from ..accel.job.settings import SCM_POLICIES, SCM_PRESETS, ScmSettings
from .handles import CATEGORY, SCM_MASK, validation_result

CUSTOM = "custom bins"


def parse_bins(text: str, name: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise UserInputError(f"{name} must be comma-separated step counts like 6,1,1, got {text!r}") from error


def describe(scm: ScmSettings) -> str:
    bits = "".join(map(str, scm.mask))
    computed = sum(scm.mask)
    return (f"{bits}\n{computed} compute / {len(bits) - computed} cache of {len(bits)} steps, {scm.policy} "
            f"(static caches every 0 step; dynamic still checks the residual threshold)")


class SCMMask:
    CATEGORY = CATEGORY
    RETURN_TYPES = (SCM_MASK, "STRING")
    RETURN_NAMES = ("scm_mask", "mask")
    FUNCTION = "build"
    # Not an OUTPUT_NODE: the mask text still reaches the node (any node's "ui" is sent when it runs),
    # and as an output a valid SCM Mask made ComfyUI accept a prompt whose loader or sampler failed
    # validation (HTTP 200, only the mask ran) instead of refusing it.
    DESCRIPTION = (
        "Steps Computation Mask: 1 = the step always computes, 0 = a cache step. Presets (cache-dit's, "
        "defined for 28 steps and scaled): slow, medium, fast (18 of 40 computed), ultra. Or give "
        "compute/cache bins, e.g. compute 6,1,1 and cache 3,4 = 6 computed, 3 cached, 1, 4, 1. "
        "The steps must equal the sampler's steps. Each expert's first step computes whatever the mask says."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "steps": ("INT", {"default": 40, "min": 4, "max": 1000}),
                "preset": ([*SCM_PRESETS, CUSTOM], {"default": "fast"}),
                "policy": (list(SCM_POLICIES), {"default": "dynamic"}),
                "compute_bins": ("STRING", {"default": "", "tooltip": "custom bins only, e.g. 6,1,1,1,1,1"}),
                "cache_bins": ("STRING", {"default": "", "tooltip": "custom bins only, e.g. 1,3,4,5,4"}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps, preset, policy, compute_bins, cache_bins):
        return validation_result(cls.mask, steps, preset, policy, compute_bins, cache_bins)

    @staticmethod
    def mask(steps, preset, policy, compute_bins, cache_bins) -> ScmSettings:
        if preset == CUSTOM:
            return build_scm(steps, None, parse_bins(compute_bins, "compute_bins"),
                             parse_bins(cache_bins, "cache_bins"), policy)
        return build_scm(steps, preset, policy=policy)

    def build(self, steps, preset, policy, compute_bins, cache_bins):
        scm = self.mask(steps, preset, policy, compute_bins, cache_bins)
        text = describe(scm)
        return {"ui": {"text": [text]}, "result": (scm, text)}
