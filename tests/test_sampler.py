"""The core loop: cache off equals plain sampling, SCM counts, thresholds, determinism, fresh state."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY, tiny_job
from reference import plain_sample

from accel.errors import UserInputError
from accel.job.scm import build_scm
from accel.job.settings import (
    CacheSettings,
    ExpertCacheConfig,
    JobSettings,
    SamplerSettings,
)
from accel.sampling.loop import run_job


def settings(steps=40, shift=12.0, cache=True, preset=None, policy="dynamic", **sampler) -> JobSettings:
    return JobSettings(
        sampler=SamplerSettings(steps=steps, shift=shift, **sampler),
        cache=CacheSettings() if cache else None,
        scm=build_scm(steps, preset, policy=policy) if preset else None,
    )


def counts(trace, decision="compute"):
    result = {}
    for record in trace.records:
        key = (record.expert, record.branch)
        result[key] = result.get(key, 0) + (record.decision == decision)
    return result


def test_cache_off_is_bit_identical_to_the_plain_loop(runtime):
    for sampler, scheduler, switch_step in (("wan_flow_unipc", "simple", None), ("euler", "simple", None),
                                            ("euler", "beta", 5)):
        job = tiny_job(settings(steps=10, cache=False, sampler=sampler, scheduler=scheduler, switch_step=switch_step))
        assert torch.equal(run_job(runtime, job).latent, plain_sample(TINY, job))


def test_scm_static_fast_40_computes_exactly_the_mask_ones(runtime):
    job = tiny_job(settings(shift=3.0, preset="fast", policy="static"))
    mask = job.settings.scm.mask
    experts = job.settings.sampler.experts()
    assert sum(mask) == 18 and mask[experts.index("low")] == 1  # shift 3: the boundary falls on a compute step
    trace = run_job(runtime, job).trace
    for expert in ("high", "low"):
        ones = sum(bit for bit, e in zip(mask, experts) if e == expert)
        assert counts(trace)[(expert, "cond")] == ones
        assert counts(trace)[(expert, "uncond")] == ones
    assert sum(counts(trace)[(e, "cond")] for e in ("high", "low")) == 18
    for record in trace.records:
        assert record.decision == ("compute" if record.scm else "cache")


def test_expert_first_step_computes_even_on_a_mask_zero(runtime):
    # shift 5: the low-noise expert takes over at step 17, a cache step of the fast mask; its first
    # compute step (19) moves to 17, so the run still computes the mask's 18 steps.
    job = tiny_job(settings(shift=5.0, preset="fast", policy="static"))
    experts = job.settings.sampler.experts()
    first_low = experts.index("low")
    mask = job.settings.scm.mask
    assert (first_low, mask[first_low], mask.index(1, first_low)) == (17, 0, 19)
    trace = run_job(runtime, tiny_job(settings(shift=5.0, preset="fast", policy="static")))
    cond = {r.step: r for r in trace.trace.records if r.branch == "cond"}
    assert (cond[17].decision, cond[17].scm, cond[19].decision, cond[19].scm) == ("compute", 1, "cache", 0)
    assert sum(counts(trace.trace)[(e, "cond")] for e in ("high", "low")) == 18


def test_zero_threshold_never_caches(runtime):
    never = ExpertCacheConfig(residual_diff_threshold=0.0, max_warmup_steps=0, max_cached_steps=-1)
    job = tiny_job(JobSettings(sampler=SamplerSettings(steps=20), cache=CacheSettings(high=never, low=never)))
    trace = run_job(runtime, job).trace
    assert trace.records and all(r.decision == "compute" for r in trace.records)


def test_dynamic_policy_caches_only_below_threshold(runtime):
    trace = run_job(runtime, tiny_job(settings(preset="fast"))).trace
    cached = [r for r in trace.records if r.decision == "cache"]
    assert cached, "the tiny model's residuals should fall under 0.24 on some mask-0 steps"
    assert all(r.residual_diff is not None and r.residual_diff < r.threshold for r in cached)
    assert all(r.scm == 0 for r in cached)


def test_trace_agrees_with_cache_dit_summary(runtime):
    trace = run_job(runtime, tiny_job(settings(preset="fast"))).trace
    for expert in ("high", "low"):
        stats = runtime.caches.stats(expert)
        for branch, steps_attr, diffs_attr in (("cond", "cached_steps", "residual_diffs"),
                                               ("uncond", "cfg_cached_steps", "cfg_residual_diffs")):
            records = [r for r in trace.records if r.expert == expert and r.branch == branch]
            assert [r.local_step for r in records if r.decision == "cache"] == list(getattr(stats, steps_attr))
            diffs = getattr(stats, diffs_attr)
            for record in records:
                raw = diffs.get(str(record.local_step))
                if record.residual_diff is None:
                    assert raw is None or raw < 0 or math.copysign(1, raw) < 0
                else:
                    assert raw == pytest.approx(record.residual_diff, rel=0, abs=0)


def test_same_seed_same_output_other_seed_other_output(runtime):
    first = run_job(runtime, tiny_job(settings(steps=8, seed=3))).latent
    again = run_job(runtime, tiny_job(settings(steps=8, seed=3))).latent
    other = run_job(runtime, tiny_job(settings(steps=8, seed=4))).latent
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_two_identical_cached_jobs_in_a_row_are_identical(runtime):
    job = tiny_job(settings(preset="fast"))
    first, second = run_job(runtime, job), run_job(runtime, job)
    assert torch.equal(first.latent, second.latent)

    def decisions(trace):
        return [(r.step, r.expert, r.branch, r.decision, r.residual_diff) for r in trace.records]

    assert decisions(first.trace) == decisions(second.trace)
    assert first.trace.summary() == second.trace.summary()


def test_settings_of_one_job_do_not_leak_into_the_next(runtime):
    """cache-dit's refresh_context keeps an old SCM mask when the new config has none."""
    from accel.sampling.runtime import Runtime

    without_mask = tiny_job(settings(steps=20))
    run_job(runtime, tiny_job(settings(steps=20, preset="ultra", policy="static")))
    after = run_job(runtime, without_mask)
    fresh = run_job(Runtime.load(TINY), without_mask)
    assert torch.equal(after.latent, fresh.latent)
    assert all(r.scm is None for r in after.trace.records)
    assert [r.decision for r in after.trace.records] == [r.decision for r in fresh.trace.records]


def test_cached_run_differs_from_plain_but_stays_close(runtime):
    plain = run_job(runtime, tiny_job(settings(cache=False))).latent
    cached = run_job(runtime, tiny_job(settings(preset="fast"))).latent
    error = ((cached - plain).norm() / plain.norm()).item()
    assert 0 < error < 0.1


def test_trace_json_has_the_documented_keys(runtime, tmp_path):
    trace = run_job(runtime, tiny_job(settings(steps=10, preset="fast"))).trace
    trace.write_json(tmp_path / "trace.json")
    import json

    data = json.loads((tmp_path / "trace.json").read_text())
    assert len(data["records"]) == 20
    for key in ("step", "expert", "branch", "scm", "decision", "residual_diff", "threshold", "taylorseer", "wall_ms"):
        assert key in data["records"][0]
    assert sum(row["compute"] + row["cache"] for row in data["summary"]["rows"].values()) == 20


@pytest.mark.parametrize(
    "job_settings, latent_shape, message",
    [
        (JobSettings(sampler=SamplerSettings(steps=10), cache=CacheSettings(), scm=build_scm(12, "fast")),
         (1, 16, 3, 8, 8), "12 steps"),
        (JobSettings(scm=build_scm(40, "fast")), (1, 16, 3, 8, 8), "SCM mask needs caching"),
        (JobSettings(cache=CacheSettings(high=ExpertCacheConfig(Fn_compute_blocks=2, Bn_compute_blocks=1))),
         (1, 16, 3, 8, 8), "exceeds the model's 2 layers"),
        (JobSettings(), (1, 4, 3, 8, 8), "latent must be"),
        (JobSettings(), (1, 16, 3, 7, 8), "multiples of"),
    ],
)
def test_bad_job_inputs_are_refused_with_a_clear_message(runtime, job_settings, latent_shape, message):
    job = tiny_job(job_settings)
    job.latent = torch.zeros(latent_shape)
    with pytest.raises(UserInputError, match=message):
        run_job(runtime, job)


def test_text_width_must_match_the_model(runtime):
    job = tiny_job()
    job.cond = torch.zeros(1, 8, 4096)
    with pytest.raises(UserInputError, match=r"\[batch, tokens, 32\]"):
        run_job(runtime, job)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="ddim"), "scheduler"), (dict(steps=0), "steps"), (dict(cfg_high=-1.0), "cfg"),
    (dict(boundary=1.5), "boundary"),
])
def test_bad_sampler_settings(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        SamplerSettings(**kwargs)


def test_scm_bins_must_cover_the_steps():
    with pytest.raises(UserInputError, match="cover 9 steps"):
        build_scm(10, compute_bins=[4, 2], cache_bins=[3])
    assert build_scm(9, compute_bins=[4, 2], cache_bins=[3]).mask == (1, 1, 1, 1, 0, 0, 0, 1, 1)
    with pytest.raises(UserInputError, match="preset"):
        build_scm(10, "warp")


def test_expert_switch_at_a_step_as_the_templates_or_by_wans_boundary(runtime):
    from accel.diagnostics.render import format_table

    template = SamplerSettings(steps=20, shift=8.0, cfg_high=3.5, cfg_low=3.5, switch_step=10)
    assert template.experts() == ["high"] * 10 + ["low"] * 10
    # Wan's rule on ComfyUI's simple schedule: sigma >= 0.875 holds for steps 0-10 at shift 8.
    assert SamplerSettings(steps=20, shift=8.0).experts() == ["high"] * 11 + ["low"] * 9
    result = run_job(runtime, tiny_job(JobSettings(sampler=SamplerSettings(steps=6, switch_step=2))))
    assert [r.expert for r in result.trace.records if r.branch == "cond"] == ["high"] * 2 + ["low"] * 4
    assert "low-noise expert from step 2 (switch_step)" in format_table(result.trace)
    with pytest.raises(UserInputError, match=r"switch_step must be in \[0, 6\]"):
        SamplerSettings(steps=6, switch_step=7)


def test_cfg_one_runs_one_forward_per_step_and_needs_no_negative(runtime):
    job = tiny_job(JobSettings(sampler=SamplerSettings(steps=4, cfg_high=1.0, cfg_low=1.0, switch_step=2)))
    job.uncond = None
    trace = run_job(runtime, job).trace
    assert [(r.step, r.branch) for r in trace.records] == [(step, "cond") for step in range(4)]
