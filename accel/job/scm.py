"""SCM step masks: built with cache-dit's ``steps_mask`` (ported: accel/job/steps_mask.py, so this
host-safe module never imports cache-dit), rescaled to another step count, split between the experts."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserInputError
from .settings import SCM_PRESETS, ScmSettings
from .steps_mask import steps_mask


def build_scm(
    steps: int,
    preset: str | None = "fast",
    compute_bins: Sequence[int] | None = None,
    cache_bins: Sequence[int] | None = None,
    policy: str = "dynamic",
) -> ScmSettings:
    """A mask of exactly ``steps`` bits from a preset or from explicit compute/cache bins."""
    if compute_bins or cache_bins:
        if not (compute_bins and cache_bins):
            raise UserInputError("SCM bins need both compute_bins and cache_bins")
        if any(b <= 0 for b in (*compute_bins, *cache_bins)):
            raise UserInputError("SCM bins must be positive step counts")
        if len(compute_bins) not in (len(cache_bins), len(cache_bins) + 1):
            raise UserInputError(
                f"SCM bins alternate compute, cache, compute...: {len(compute_bins)} compute bins "
                f"need {len(compute_bins) - 1} or {len(compute_bins)} cache bins, got {len(cache_bins)}"
            )
        covered = sum(compute_bins) + sum(cache_bins)
        if covered != steps:
            raise UserInputError(f"SCM bins cover {covered} steps but the sampler runs {steps} steps")
        mask = steps_mask(compute_bins=list(compute_bins), cache_bins=list(cache_bins), total_steps=steps)
    else:
        if preset not in SCM_PRESETS:
            raise UserInputError(f"SCM preset {preset!r} is unknown; expected one of {SCM_PRESETS}")
        try:
            mask = steps_mask(total_steps=steps, mask_policy=preset)
        except AssertionError as error:  # cache-dit defines its presets for 4, 6 or >= 8 steps
            raise UserInputError(f"SCM preset {preset!r} at {steps} steps: {error}") from error
    return ScmSettings(mask=tuple(int(b) for b in mask[:steps]), policy=policy)


def rescale_mask(mask: Sequence[int], steps: int) -> tuple[int, ...]:
    """An explicit 0/1 mask of ``len(mask)`` (reference) steps resampled to ``steps`` steps.

    At the reference length the mask is returned as it is. Otherwise step ``i`` of ``steps`` takes
    the bit of the nearest reference step on a grid whose first and last steps line up:
    ``round(i * (len(mask) - 1) / (steps - 1))``, halves rounded up (one step: the last reference
    step); then the last step is set to compute, as cache-dit's own masks always end. Longer runs
    repeat bits, shorter ones drop some, so the computed fraction is kept roughly, not exactly.
    """
    reference = len(mask)
    if reference < 1:
        raise UserInputError("SCM mask must be a non-empty sequence of 0 and 1")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"an SCM mask needs a step count >= 1, got {steps!r}")
    if steps == reference:
        return tuple(int(b) for b in mask)
    if steps == 1:
        return (1,)
    span, last = reference - 1, steps - 1
    bits = [int(mask[(2 * i * span + last) // (2 * last)]) for i in range(steps)]
    bits[-1] = 1
    return tuple(bits)


def check_mask_length(scm: ScmSettings, steps: int) -> None:
    if len(scm.mask) != steps:
        raise UserInputError(
            f"SCM mask has {len(scm.mask)} steps but the sampler runs {steps} steps; "
            "build the mask with the sampler's step count"
        )


def expert_masks(scm: ScmSettings, experts: Sequence[str]) -> dict[str, list[int]]:
    """Each expert's slice of the mask, starting with a compute step.

    cache-dit's static policy caches a mask-0 step without looking for a cached residual; an
    expert's first step has none yet (cache-dit fails with "State 'blocks_Bn_residual' not
    found"), so it must compute. Where the slice starts with 0, its first compute step moves to
    the start, keeping the mask's compute count, unless that step is the slice's last (the final
    steps keep computing, as cache-dit's masks always end on one): then one is added.
    """
    masks: dict[str, list[int]] = {}
    for bit, expert in zip(scm.mask, experts):
        masks.setdefault(expert, []).append(bit)
    for bits in masks.values():
        if bits[0] == 0 and 1 in bits[:-1]:
            bits[bits.index(1)] = 0
        bits[0] = 1
    return masks
