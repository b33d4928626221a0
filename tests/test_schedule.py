"""The samplers: UniPC's per-step solve without its CPU-GPU sync gives the same steps; UniPC and
euler run ComfyUI's schedule."""

from __future__ import annotations

import pytest
import torch

from accel.job.settings import SamplerSettings
from accel.sampling.schedules import WanFlowUniPC, make_sampler, solve_without_sync


def unipc_steps(patched: bool, steps: int = 6) -> torch.Tensor:
    scheduler = WanFlowUniPC(SamplerSettings(steps=steps, sampler="wan_flow_unipc"), torch.device("cpu")).scheduler
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


@pytest.mark.parametrize("sampler", ["euler", "wan_flow_unipc"])
@pytest.mark.parametrize("scheduler", ["simple", "beta", "normal"])
def test_both_samplers_step_through_comfyuis_sigmas(sampler, scheduler):
    settings = SamplerSettings(steps=8, shift=5.0, sampler=sampler, scheduler=scheduler)
    timesteps = make_sampler(settings, torch.device("cpu")).timesteps
    expected = torch.tensor(settings.sigmas()[:-1]) * 1000
    # UniPC keeps diffusers' integer timesteps and its 1e-6 nudge off sigma 1.
    torch.testing.assert_close(timesteps.double(), expected.double(), atol=1.0 if sampler != "euler" else 0.0,
                               rtol=0.0)
