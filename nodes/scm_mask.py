"""SCM Mask: which steps compute and which may be cached (cache-dit's steps_mask)."""

from __future__ import annotations

from ..accel.errors import UserInputError
from ..accel.job.scm import build_scm
from ..accel.job.settings import SCM_POLICIES, SCM_PRESETS, ScmSettings
from .comfy import io, ui
from .handles import CATEGORY, NODE_PREFIX, ScmMask, schema_check, validation_result

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


def build_mask(steps: int, preset: str, policy: str, compute_bins: str, cache_bins: str) -> ScmSettings:
    if preset == CUSTOM:
        return build_scm(steps, None, parse_bins(compute_bins, "compute_bins"), parse_bins(cache_bins, "cache_bins"),
                         policy)
    return build_scm(steps, preset, policy=policy)


def check_mask(node: type, steps: int, preset: str, policy: str, compute_bins: str, cache_bins: str) -> None:
    schema_check(node, steps=steps, preset=preset, policy=policy)
    if None not in (steps, preset, policy, compute_bins, cache_bins):  # a linked input is known only in execute
        build_mask(steps, preset, policy, compute_bins, cache_bins)


class SCMMask(io.ComfyNode):
    # Not an output node: the mask text still reaches the node (any node's ui is sent when it runs),
    # and as an output a valid SCM Mask made ComfyUI accept a prompt whose loader or sampler failed
    # validation (HTTP 200, only the mask ran) instead of refusing it.
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}SCMMask",
            display_name="SCM Mask",
            category=CATEGORY,
            description=(
                "Steps Computation Mask: 1 = the step always computes, 0 = a cache step. Presets (cache-dit's, "
                "defined for 28 steps and scaled): slow, medium, fast (18 of 40 computed), ultra. Or give "
                "compute/cache bins, e.g. compute 6,1,1 and cache 3,4 = 6 computed, 3 cached, 1, 4, 1. "
                "The steps must equal the sampler's steps. Each expert's first step computes whatever the mask says."
            ),
            inputs=[
                io.Int.Input("steps", default=40, min=4, max=1000, tooltip="the sampler's steps"),
                io.Combo.Input("preset", options=[*SCM_PRESETS, CUSTOM], default="fast",
                               tooltip="cache-dit's mask presets, from most computed (slow) to least (ultra); "
                                       "or the bins below"),
                io.Combo.Input("policy", options=list(SCM_POLICIES), default="dynamic",
                               tooltip="dynamic: a 0 step is cached only if the residual is below the threshold; "
                                       "static: every 0 step is cached"),
                io.String.Input("compute_bins", default="", tooltip="custom bins only, e.g. 6,1,1,1,1,1"),
                io.String.Input("cache_bins", default="", tooltip="custom bins only, e.g. 1,3,4,5,4"),
            ],
            outputs=[ScmMask.Output(display_name="scm_mask"), io.String.Output(display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, steps, preset, policy, compute_bins, cache_bins) -> bool | str:
        """The mask must build for these steps (ComfyUI's own checks of these inputs are redone by
        schema_check: naming them here turns them off)."""
        return validation_result(check_mask, cls, steps, preset, policy, compute_bins, cache_bins)

    @classmethod
    def execute(cls, steps, preset, policy, compute_bins, cache_bins) -> io.NodeOutput:
        schema_check(cls, steps=steps, preset=preset, policy=policy)  # again: a linked input was not validated
        scm = build_mask(steps, preset, policy, compute_bins, cache_bins)
        text = describe(scm)
        return io.NodeOutput(scm, text, ui=ui.PreviewText(text))
