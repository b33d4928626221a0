"""cache-dit's SCM ``steps_mask``, ported so that ComfyUI's process never imports cache-dit.

Ported from cache-dit 1.5.3, ``cache_dit/caching/cache_interface.py`` (``steps_mask`` and its
helper ``_steps_mask``), Copyright the cache-dit authors, licensed under the Apache License,
Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). Changes: stdlib only (no torch,
diffusers or cache-dit imports); cache-dit's ``assert`` statements raise ``AssertionError``
explicitly (with the same messages), so the checks also hold under ``python -O``; the bins may
be any sequence of ints (cache-dit needs lists). The masks are bit for bit cache-dit's
(tests/test_steps_mask.py compares them for every preset at 1..100 steps and for explicit bins).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence


def _steps_mask(
    compute_bins: Sequence[int],
    cache_bins: Sequence[int],
    total_steps: int | None = None,
) -> list[int]:
    mask: list[int] = []
    step = 0
    compute_bins = list(compute_bins)
    cache_bins = list(cache_bins)
    # reverse to use as stacks
    compute_bins.reverse()
    cache_bins.reverse()

    if total_steps is not None:
        if not sum(compute_bins) + sum(cache_bins) >= total_steps:
            raise AssertionError("The sum of compute and cache intervals must be at least total_steps.")
    else:
        total_steps = sum(compute_bins) + sum(cache_bins)

    while step < total_steps:
        if compute_bins:
            ci = compute_bins.pop()
            mask.extend([1] * ci)
            step += ci
        if cache_bins:
            cai = cache_bins.pop()
            mask.extend([0] * cai)
            step += cai

        if step >= total_steps:
            break

    return mask[:total_steps]


def steps_mask(
    compute_bins: Sequence[int] | None = None,
    cache_bins: Sequence[int] | None = None,
    total_steps: int | None = None,
    mask_policy: str | None = "medium",
) -> list[int]:
    """A step computation mask (1: compute the step, 0: may reuse the cache).

    With both ``compute_bins`` and ``cache_bins``: compute, cache, compute... runs of those
    lengths, cut to ``total_steps`` (whose sum must cover it). Otherwise the predefined
    ``mask_policy`` (``slow``, ``medium``, ``fast``, ``ultra``) at ``total_steps``, defined by
    cache-dit for 4, 6 and >= 8 steps (AssertionError otherwise); its last step always computes.
    """
    # Prefer compute/cache bins if both are provided
    if compute_bins is not None and cache_bins is not None:
        return _steps_mask(compute_bins=compute_bins, cache_bins=cache_bins, total_steps=total_steps)

    if total_steps is None:
        raise AssertionError("total_steps must be provided when using predefined mask_policy.")
    # 28 steps predefined policies
    predefined_policies = {
        # NOTE: last step will never cache by default
        # mask: 11111111 0 111 00 111 00 11 00 1 000 1
        "slow": [
            [8, 3, 3, 2, 1, 1],  # = 18 compute steps
            [1, 2, 2, 2, 3],  # = 10 cache steps
        ],
        "medium": [
            [6, 2, 2, 2, 2, 1],  # = 15 compute steps
            [1, 3, 3, 3, 3],  # = 13 cache steps
        ],
        "fast": [
            [6, 1, 1, 1, 1, 1],  # = 11 compute steps
            [1, 3, 4, 5, 4],  # = 17 cache steps
        ],
        "ultra": [
            [4, 1, 1, 1, 1],  # = 8 compute steps
            [2, 5, 6, 7],  # = 20 cache steps
        ],
    }

    def _sum_policy(policy: list[list[int]]) -> int:
        return sum(policy[0]) + sum(policy[1])

    def _truncate_policy(policy: list[list[int]], target_steps: int) -> list[list[int]]:
        compute_bins, cache_bins = policy  # reference only
        while _sum_policy(policy) > target_steps:
            if cache_bins:
                cache_bins[-1] -= 1
                if cache_bins[-1] == 0:
                    cache_bins.pop()
            if _sum_policy(policy) <= target_steps:
                break
            if compute_bins:
                compute_bins[-1] -= 1
                if compute_bins[-1] == 0:
                    compute_bins.pop()
            if _sum_policy(policy) <= target_steps:
                break
        return [compute_bins, cache_bins]

    def _truncate_predefined_policies(
        policies: dict[str, list[list[int]]], target_steps: int
    ) -> dict[str, list[list[int]]]:
        truncated_policies = {}
        for name, policy in policies.items():
            truncated_policies[name] = _truncate_policy(policy, target_steps)
        return truncated_policies

    if total_steps > 28:
        # Expand the bins until they cover total_steps, keeping the policies' compute/cache
        # ratio, then truncate to exactly total_steps.
        for policy in predefined_policies.values():
            min_bins_len = min(len(policy[0]), len(policy[1]))
            compute_bins = copy.deepcopy(policy[0])
            cache_bins = copy.deepcopy(policy[1])
            while _sum_policy(policy) < total_steps:
                for i in range(min_bins_len):
                    policy[0][i] += max(int(compute_bins[i] * ((total_steps / 28) * 0.5)), 1)
                    if _sum_policy(policy) >= total_steps:
                        break
                    policy[1][i] += max(int(cache_bins[i] * ((total_steps / 28) * 0.5)), 1)
                    if _sum_policy(policy) >= total_steps:
                        break
                if _sum_policy(policy) >= total_steps:
                    break
                # compute bin due to compute_bins always longer than cache_bins
                policy[0][-1] += 1
                if _sum_policy(policy) >= total_steps:
                    break

        # truncate to exact total_steps
        predefined_policies = _truncate_predefined_policies(predefined_policies, total_steps)

    elif total_steps < 28 and total_steps >= 16:
        # Truncate bins to fit total_steps
        predefined_policies = _truncate_predefined_policies(predefined_policies, total_steps)
    elif total_steps < 16 and total_steps >= 8:
        # Mainly for distilled models with less steps, use smaller compute/cache bins
        if total_steps > 8:
            predefined_policies = {
                "slow": [
                    [4, 2, 2, 2, 1],  # = 11
                    [1, 1, 1, 1],  # = 4
                ],
                "medium": [
                    [4, 2, 1, 1, 1],  # = 9
                    [1, 1, 2, 2],  # = 6
                ],
                "fast": [
                    [3, 1, 1, 1, 1],  # = 7
                    [1, 2, 2, 3],  # = 8
                ],
                "ultra": [
                    [2, 1, 1, 1, 1],  # = 6
                    [1, 2, 3, 3],  # = 9
                ],
            }
            # Specifical case for Z-Image-Turbo with 9 steps
            if total_steps == 9:
                predefined_policies = {
                    "slow": [
                        [5, 2, 1],  # = 8
                        [1],  # = 1
                    ],
                    "medium": [
                        [5, 1, 1],  # = 7
                        [1, 1],  # = 2
                    ],
                    "fast": [
                        [4, 1, 1],  # = 6
                        [1, 2],  # = 3
                    ],
                    "ultra": [
                        [3, 1, 1],  # = 5
                        [2, 2],  # = 4
                    ],
                }
        else:  # total_steps == 8
            # cases: 8 steps distilled models
            predefined_policies = {
                "slow": [
                    [5, 1, 1],  # = 7
                    [1],  # = 1
                ],
                "medium": [
                    [4, 1, 1],  # = 6
                    [1, 1],  # = 2
                ],
                "fast": [
                    [3, 1, 1],  # = 5
                    [1, 2],  # = 3
                ],
                "ultra": [
                    [2, 1, 1],  # = 4
                    [2, 2],  # = 4
                ],
            }
        # cache-dit truncates once per policy (the same lists each time; after the first pass
        # the later ones change nothing).
        for _ in list(predefined_policies.values()):
            predefined_policies = _truncate_predefined_policies(predefined_policies, total_steps)
    elif total_steps < 8:
        # case: 4 or 6 steps distilled models
        if total_steps not in (4, 6):
            raise AssertionError(
                "Only total_steps=4 or 6 is supported for predefined masks "
                f"while total_steps < 8. Got total_steps={total_steps}."
            )
        constant_policy = [[2, 1], [1]] if total_steps == 4 else [[3, 1], [2]]
        predefined_policies = {
            "slow": constant_policy,
            "medium": constant_policy,
            "fast": constant_policy,
            "ultra": constant_policy,
        }

    if mask_policy not in predefined_policies:
        raise ValueError(f"mask_policy {mask_policy} is not valid. "
                         f"Choose from {list(predefined_policies.keys())}.")
    compute_bins, cache_bins = predefined_policies[mask_policy]
    # Will truncate if exceeded total_steps
    compute_mask = _steps_mask(compute_bins=compute_bins, cache_bins=cache_bins, total_steps=total_steps)
    # Force last step to compute
    compute_mask[-1] = 1
    return compute_mask
