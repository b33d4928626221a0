"""The pack's port of cache-dit's ``steps_mask`` (accel/job/steps_mask.py) gives cache-dit's masks."""

from __future__ import annotations

import cache_dit
import pytest

from accel.errors import UserInputError
from accel.job.scm import build_scm
from accel.job.settings import SCM_PRESETS
from accel.job.steps_mask import steps_mask

STEPS = range(1, 101)


def outcome(function, **kwargs):
    """The mask, or the kind of error and its message."""
    try:
        return function(**kwargs)
    except (AssertionError, ValueError, IndexError) as error:
        return type(error), str(error)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("preset", SCM_PRESETS)
def test_presets_match_cache_dit_at_every_step_count(preset, steps):
    expected = outcome(cache_dit.steps_mask, total_steps=steps, mask_policy=preset)
    assert outcome(steps_mask, total_steps=steps, mask_policy=preset) == expected
    if isinstance(expected, list):
        assert len(expected) == steps and expected[-1] == 1
        assert build_scm(steps, preset).mask == tuple(expected)
    else:  # cache-dit has these presets for 4, 6 and >= 8 steps only
        assert expected[0] is AssertionError and steps in (1, 2, 3, 5, 7)
        with pytest.raises(UserInputError, match=f"SCM preset '{preset}' at {steps} steps"):
            build_scm(steps, preset)


def test_the_presets_cache_dit_refuses_are_the_same():
    refused = {steps for steps in STEPS for preset in SCM_PRESETS
               if not isinstance(outcome(cache_dit.steps_mask, total_steps=steps, mask_policy=preset), list)}
    assert refused == {1, 2, 3, 5, 7}


BINS = [
    # compute_bins, cache_bins, total_steps
    ([4, 2], [3], None),
    ([4, 2], [3], 9),
    ([4, 2], [3], 7),  # truncated inside the cache run
    ([4, 2], [3], 5),
    ([4, 2], [3], 4),  # truncated at the end of the first compute run
    ([4, 2], [3], 1),
    ([4, 2], [3], 0),
    ([4, 2], [3], 10),  # the bins cover 9 steps: refused
    ([1], [1], 2),
    ([3], [], None),
    ([3], [], 2),
    ([2, 2], [1, 1], None),  # ends on a cache run
    ([2, 2], [1, 1], 5),
    ([1, 1, 1], [2, 2, 2], 6),
    ([2], [1, 1, 1], None),  # more cache bins than compute bins
    ([2], [1, 1, 1], 4),
    ([], [3], None),
    ([], [], None),
    ([], [], 1),
    ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4], None),  # the 28-step fast preset
    ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4], 20),
    ([10, 2, 2, 2, 2, 1], [2, 5, 6, 7, 1], 40),
    ([10, 2, 2, 2, 2, 1], [2, 5, 6, 7, 1], 33),
    ([0, 2], [1], None),
    ([50], [50], 100),
    ([50], [50], 99),
]


@pytest.mark.parametrize("compute_bins, cache_bins, total_steps", BINS)
def test_explicit_bins_match_cache_dit(compute_bins, cache_bins, total_steps):
    expected = outcome(cache_dit.steps_mask, compute_bins=list(compute_bins), cache_bins=list(cache_bins),
                       total_steps=total_steps)
    assert outcome(steps_mask, compute_bins=compute_bins, cache_bins=cache_bins, total_steps=total_steps) == expected
    assert outcome(steps_mask, compute_bins=tuple(compute_bins), cache_bins=tuple(cache_bins),
                   total_steps=total_steps) == expected


def test_bins_are_not_changed():
    compute, cache = [4, 2], [3]
    steps_mask(compute_bins=compute, cache_bins=cache, total_steps=5)
    assert (compute, cache) == ([4, 2], [3])


@pytest.mark.parametrize("kwargs", [
    dict(compute_bins=[4, 2], total_steps=40),  # only one kind of bins: the mask_policy preset
    dict(cache_bins=[3], total_steps=12, mask_policy="ultra"),
    dict(total_steps=40),  # the default policy, medium
    dict(total_steps=40, mask_policy="warp"),
    dict(total_steps=None),
    dict(total_steps=0),
    dict(total_steps=-3, mask_policy="fast"),
    dict(total_steps=200, mask_policy="slow"),
    dict(total_steps=1000, mask_policy="ultra"),
])
def test_the_other_ways_of_calling_match_cache_dit(kwargs):
    assert outcome(steps_mask, **kwargs) == outcome(cache_dit.steps_mask, **kwargs)


def test_the_port_imports_nothing_but_the_stdlib():
    import ast
    import sys
    from pathlib import Path

    import accel.job.steps_mask as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
