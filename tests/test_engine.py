"""torch.compile of the transformer blocks: paid once, not again for cached steps, expert switches
or later jobs of the same shape."""

from __future__ import annotations

import torch
from helpers import TINY, tiny_job

from accel.job.scm import build_scm
from accel.job.settings import (
    CacheSettings,
    EngineOptions,
    JobSettings,
    SamplerSettings,
)
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime


def test_compiled_blocks_do_not_recompile_for_cache_steps_experts_or_later_jobs():
    from torch._dynamo.utils import counters

    runtime = Runtime.load(TINY, "cpu", EngineOptions(compile=True))
    cached = JobSettings(sampler=SamplerSettings(steps=12), cache=CacheSettings(), scm=build_scm(12, "fast"))
    first = run_job(runtime, tiny_job(cached))
    assert first.trace.info["compile_s"] > 0
    assert {r.expert for r in first.trace.records} == {"high", "low"}
    assert any(r.decision == "cache" for r in first.trace.records)
    graphs = counters["stats"]["unique_graphs"]
    second = run_job(runtime, tiny_job(cached))
    plain = run_job(runtime, tiny_job(JobSettings(sampler=SamplerSettings(steps=12))))
    assert second.trace.info["compile_s"] == 0 and plain.trace.info["compile_s"] == 0
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(first.latent, second.latent)
    eager = run_job(Runtime.load(TINY), tiny_job(cached))
    assert [r.decision for r in eager.trace.records] == [r.decision for r in first.trace.records]
    assert torch.allclose(eager.latent, first.latent, rtol=1e-3, atol=1e-4)
