"""The scheduler patch: UniPC's per-step solve without its CPU-GPU sync gives the same steps."""

from __future__ import annotations

import pytest
import torch

from accel.job.settings import SamplerSettings
from accel.sampling.schedules import make_scheduler, solve_without_sync


def unipc_steps(patched: bool, steps: int = 6) -> torch.Tensor:
    scheduler = make_scheduler(SamplerSettings(steps=steps))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 16, 2, 4, 4, generator=generator)
    for t in scheduler.timesteps:
        model_output = torch.randn(sample.shape, generator=generator)
        if patched:
            with solve_without_sync():
                sample = scheduler.step(model_output, t, sample, return_dict=False)[0]
        else:
            sample = scheduler.step(model_output, t, sample, return_dict=False)[0]
    return sample


def test_unipc_with_the_unchecked_solve_steps_exactly_as_with_torch_solve(monkeypatch):
    unchecked_calls = []
    solve_ex = torch.linalg.solve_ex
    monkeypatch.setattr(torch.linalg, "solve_ex", lambda *a, **k: unchecked_calls.append(1) or solve_ex(*a, **k))
    assert torch.equal(unipc_steps(patched=True), unipc_steps(patched=False))
    assert len(unchecked_calls) >= 4  # the corrector's solve, once per step from the third on


def test_torch_solve_is_restored_after_the_step_even_when_it_raises():
    solve = torch.linalg.solve
    with pytest.raises(RuntimeError, match="step failed"), solve_without_sync():
        assert torch.linalg.solve is not solve
        raise RuntimeError("step failed")
    assert torch.linalg.solve is solve
