"""Worker groups on CPU: 2 gloo ranks, tiny model. Parity with one process, agreement between
ranks, the similarity patch, faults, cancel, warm reuse."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import FP8_READY, TINY, relative_error, single_files, tiny_job

from accel import shared_memory
from accel.errors import JobCancelled, UserInputError, WorkerGroupError
from accel.job.scm import build_scm
from accel.job.settings import (
    CacheSettings,
    EngineOptions,
    ExpertCacheConfig,
    JobSettings,
    ModelSpec,
    SamplerSettings,
)
from accel.model.loading import load_experts, save_random_experts
from accel.parallel.group import WorkerGroup
from accel.parallel.layout import ParallelLayout
from accel.parallel.registry import WorkerGroupRegistry
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def cached(steps=20, policy="dynamic", preset="fast", **cache) -> JobSettings:
    config = ExpertCacheConfig(**cache) if cache else None
    return JobSettings(
        sampler=SamplerSettings(steps=steps),
        cache=CacheSettings(high=config, low=config) if config else CacheSettings(),
        scm=build_scm(steps, preset, policy=policy) if preset else None,
    )


def decisions(trace):
    return sorted((r.step, r.expert, r.branch, r.decision, r.residual_diff) for r in trace.records)


def pids_gone(pids, within_s=5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("layout,engine", [
    (ParallelLayout(ulysses=2), EngineOptions()),
    (ParallelLayout(ulysses=2), EngineOptions(ulysses_async=False)),
    (ParallelLayout(cfg=2), EngineOptions()),
], ids=["ulysses2-overlapped-all-to-all", "ulysses2-all-to-all-in-sequence", "cfg2"])
def test_parallel_run_decides_and_samples_as_one_process(runtime, layout, engine):
    assert_group_samples_as_one_process(TINY, runtime, layout, engine)


def assert_group_samples_as_one_process(spec, runtime, layout, engine) -> None:
    """Static and dynamic SCM: same decisions, same latent, every rank of a group agreeing."""
    with WorkerGroup(spec, layout, engine) as group:
        for policy in ("dynamic", "static"):
            job = tiny_job(cached(policy=policy))
            single = run_job(runtime, job)
            parallel = group.run(job)
            assert decisions(parallel.trace) == decisions(single.trace)
            assert torch.allclose(parallel.latent, single.latent, rtol=1e-5, atol=1e-6)
            assert all(r.ranks_agreed for r in parallel.trace.records)
            assert {r.ranks for r in parallel.trace.records} == {layout.ulysses}
            assert any(r.decision == "cache" for r in parallel.trace.records)


@pytest.mark.parametrize("layout", [ParallelLayout(ulysses=2), ParallelLayout(cfg=2, ulysses=2)],
                         ids=["shard2", "cfg2-x-shard2"])
def test_sharded_weights_decide_and_sample_as_one_process(four_heads, layout):
    """Residency "shard": cache-dit's tensor parallelism on the sequence-parallel ranks. The row-wise
    layers' partial sums meet in an all-reduce, so the numbers agree to rounding, not bit for bit."""
    spec, single_runtime = four_heads
    with WorkerGroup(spec, layout, EngineOptions(residency="shard")) as group:
        job = tiny_job(cached(policy="dynamic"))
        single, sharded = run_job(single_runtime, job), group.run(job)
        assert [d[:4] for d in decisions(sharded.trace)] == [d[:4] for d in decisions(single.trace)]
        for got, expected in zip(decisions(sharded.trace), decisions(single.trace)):
            assert (got[4] is None) == (expected[4] is None)
            assert got[4] is None or got[4] == pytest.approx(expected[4], rel=1e-4, abs=1e-6)
        assert torch.allclose(sharded.latent, single.latent, rtol=1e-4, atol=1e-5)
        assert all(r.ranks_agreed for r in sharded.trace.records)
        assert any(r.decision == "cache" for r in sharded.trace.records)
        assert sharded.trace.info["residency"]["plan"] == "shard"
        notes = sharded.trace.info["notes"]
        assert any("split over 2 ranks" in note for note in notes)
        # where /dev/shm has room, the group loads one host copy and every worker takes its share of it
        assert any("takes its share from that copy" in note for note in notes) == shared_memory.shared_room(64 << 20)


@pytest.fixture(scope="module")
def fp8_four_heads(tmp_path_factory):
    """A tiny fp8_scaled pair with 4 heads (widths FP8 takes, also split in two), used as stored."""
    folder = tmp_path_factory.mktemp("shard-fp8")
    experts = load_experts(dataclasses.replace(
        save_random_experts(folder / "dir", num_attention_heads=4, **FP8_READY), dtype="bf16"))
    return dataclasses.replace(single_files(folder, experts, fp8_scaled=True), fp8_scaled="as_stored")


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_sharded_fp8_weights_decide_and_sample_as_resident_fp8(fp8_four_heads, compile):
    """FP8 weights as stored, split with their scales over 2 ranks: the row-wise layers quantize
    their input parts with the whole input's scale, so the result is resident FP8's to rounding;
    the split blocks also compile."""
    job = tiny_job(cached(policy="dynamic"))
    single = run_job(Runtime.load(fp8_four_heads), job)
    with WorkerGroup(fp8_four_heads, ParallelLayout(ulysses=2), EngineOptions(residency="shard", compile=compile)) as group:
        sharded = group.run(job)
    assert [d[:4] for d in decisions(sharded.trace)] == [d[:4] for d in decisions(single.trace)]
    # bf16 rounding of the partial sums, which FP8 re-quantization downstream magnifies: measured
    # 0.7% on the latent and 3% on a residual diff here, where the same split of this model in
    # bf16 gives 0.4% and 1% against bf16 resident, and bf16 resident is 0.9% from FP8 resident
    for got, expected in zip(decisions(sharded.trace), decisions(single.trace)):
        assert got[4] is None or got[4] == pytest.approx(expected[4], rel=6e-2)
    assert relative_error(sharded.latent, single.latent) < 1.5e-2
    assert any(r.decision == "cache" for r in sharded.trace.records)
    assert any("FP8 layers per expert, split with their scales" in note for note in sharded.trace.info["notes"])
    assert (sharded.trace.info["compile_s"] > 0) == compile


def test_shard_is_refused_without_a_sequence_parallel_group_or_with_block_scaled_weights():
    from accel.job.settings import QuantSettings
    from accel.model.engine_check import check_shard

    with pytest.raises(UserInputError, match="Ulysses degree of 2 or more"):
        WorkerGroup(TINY, ParallelLayout(cfg=2), EngineOptions(residency="shard")).check()
    with pytest.raises(UserInputError, match="Ulysses degree of 2 or more"):
        Runtime.load(TINY, "cpu", EngineOptions(residency="shard"))
    for kind in ("float8_per_block", "int8_weight_only"):
        with pytest.raises(UserInputError, match=f"per row or per tensor .*not {kind}"):
            check_shard(EngineOptions(residency="shard", quantize=QuantSettings(kind)), TINY, ulysses=2)
    for engine, spec in ((EngineOptions(residency="shard", quantize=QuantSettings("float8_per_row")), TINY),
                         (EngineOptions(residency="shard", quantize=QuantSettings("int8_weight_only")),
                          dataclasses.replace(TINY, dtype="bf16", fp8_scaled="as_stored"))):
        check_shard(engine, spec, ulysses=2)  # as stored: the file's per-tensor FP8, the quant type not applied


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory):
    """The tiny model with 4 heads (Ulysses 4 splits heads 4 ways) and a one-process runtime of it."""
    spec = save_random_experts(tmp_path_factory.mktemp("four-heads"), num_attention_heads=4)
    return spec, Runtime.load(spec)


@pytest.mark.parametrize("layout,chunks", [
    (ParallelLayout(ulysses=4), 1), (ParallelLayout(cfg=2, ulysses=2), 2), (ParallelLayout(ulysses=2), 2),
], ids=["ulysses4", "cfg2-x-ulysses2-two-head-chunks", "ulysses2-two-head-chunks"])
def test_four_head_model_decides_and_samples_as_one_process(four_heads, layout, chunks):
    """Ulysses over 4 ranks, and each rank's 2 heads attended and exchanged as 2 chunks."""
    spec, single_runtime = four_heads
    assert_group_samples_as_one_process(spec, single_runtime, layout, EngineOptions(ulysses_head_chunks=chunks))


def test_ulysses_samples_a_batch_of_two_latents_as_one_process(runtime):
    """Batch 2 is the case where the received shards are not already in sequence order."""
    job = tiny_job(cached(steps=8))
    job.latent = torch.randn(2, *job.latent.shape[1:], generator=torch.Generator().manual_seed(0))
    single = run_job(runtime, job)
    with WorkerGroup(TINY, ParallelLayout(ulysses=2)) as group:
        parallel = group.run(job)
    assert parallel.latent.shape[0] == 2 and not torch.equal(parallel.latent[0], parallel.latent[1])
    assert torch.allclose(parallel.latent, single.latent, rtol=1e-5, atol=1e-6)
    assert decisions(parallel.trace) == decisions(single.trace)


def test_killed_worker_is_an_error_within_seconds_and_leaves_no_process():
    group = WorkerGroup(TINY, ParallelLayout(ulysses=2)).start()
    pids = [p.pid for p in group.procs]
    killed_at = []

    def kill_rank1(step, records):
        if step == 2:
            os.kill(pids[1], signal.SIGKILL)
            killed_at.append(time.monotonic())

    with pytest.raises(WorkerGroupError, match="rank 1 killed by signal 9"):
        group.run(tiny_job(cached(steps=2000, preset=None)), on_step=kill_rank1)
    assert time.monotonic() - killed_at[0] < 5.0
    assert pids_gone(pids)
    assert not group.alive


def test_cancel_stops_within_a_step_and_the_group_stays_usable():
    with WorkerGroup(TINY, ParallelLayout(ulysses=2)) as group:
        seen = []

        def cancel_at_3(step, records):
            seen.append(step)
            if step == 3:
                group.cancel()

        with pytest.raises(JobCancelled, match=r"cancelled before step (\d+) of 2000") as cancelled:
            group.run(tiny_job(cached(steps=2000, preset=None)), on_step=cancel_at_3)
        stopped = int(cancelled.value.args[0].split()[3])
        # Every step the workers finished was reported before they stopped: no step ran after it.
        assert seen == list(range(stopped)) and stopped < 2000
        pids = [p.pid for p in group.procs]
        result = group.run(tiny_job(cached()))
        assert result.trace.records and group.alive and [p.pid for p in group.procs] == pids


def test_a_hung_rank_is_torn_down_after_a_cancel():
    group = WorkerGroup(TINY, ParallelLayout(ulysses=2), cancel_grace_s=2.0).start()
    pids = [p.pid for p in group.procs]

    def hang_rank1_then_cancel(step, records):
        if step == 2:
            os.kill(pids[1], signal.SIGSTOP)  # neither steps nor dies: rank 0 soon waits in a collective
            threading.Timer(1.0, group.cancel).start()

    try:
        with pytest.raises(WorkerGroupError, match="did not stop within 2 s of the cancel"):
            group.run(tiny_job(cached(steps=2000, preset=None)), on_step=hang_rank1_then_cancel)
        assert pids_gone(pids) and not group.alive
    finally:
        group.close()


def test_a_host_side_exception_mid_job_stops_the_job_and_keeps_the_group():
    with WorkerGroup(TINY, ParallelLayout(ulysses=2)) as group:
        def explode(step, records):
            if step == 2:
                raise RuntimeError("progress bar broke")

        with pytest.raises(RuntimeError, match="progress bar broke"):
            group.run(tiny_job(cached(steps=2000, preset=None)), on_step=explode)
        assert group.alive
        assert len(group.run(tiny_job(cached(steps=6))).trace.records) == 12


def test_warm_group_is_reused_and_a_new_layout_restarts_it():
    registry = WorkerGroupRegistry()
    try:
        first = registry.acquire(TINY, ParallelLayout(ulysses=2))
        one = first.run(tiny_job(cached(steps=6)))
        again = registry.acquire(TINY, ParallelLayout(ulysses=2))
        two = again.run(tiny_job(cached(steps=6)))
        assert again is first
        assert two.trace.info["loaded_at"] == one.trace.info["loaded_at"]  # weights loaded once
        assert (one.trace.info["jobs_served"], two.trace.info["jobs_served"]) == (1, 2)
        old_pids = [p.pid for p in first.procs]
        other = registry.acquire(TINY, ParallelLayout(cfg=2))
        assert other is not first and pids_gone(old_pids)
    finally:
        assert registry.release()
    assert pids_gone([p.pid for p in other.procs])


def test_workers_die_with_their_host():
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from accel.parallel.group import WorkerGroup
        from accel.parallel.layout import ParallelLayout
        from accel.job.settings import ModelSpec
        group = WorkerGroup(ModelSpec(dtype="fp32"), ParallelLayout(ulysses=2)).start()
        print(" ".join(str(p.pid) for p in group.procs), flush=True)
        os._exit(0)  # as if the server was killed: no cleanup runs
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert pids_gone(pids, within_s=5.0)


def test_layouts_that_do_not_fit_are_refused_before_launch():
    with pytest.raises(UserInputError, match=r"valid degrees: \[1, 2\]"):
        WorkerGroup(TINY, ParallelLayout(ulysses=4)).start()
    with pytest.raises(UserInputError, match="2 GPUs given"):
        ParallelLayout(ulysses=2, cfg=2, devices=(0, 1))


def test_uneven_sequence_on_cpu_ranks_names_valid_sizes():
    with WorkerGroup(TINY, ParallelLayout(ulysses=2)) as group:
        with pytest.raises(UserInputError, match="valid heights"):
            group.run(tiny_job(cached(steps=4), latent_hw=(6, 10)))
        assert group.run(tiny_job(cached(steps=4))).trace.records  # still usable


def test_demo_with_two_ranks_prints_the_same_table_with_agreement(tmp_path, capsys):
    from accel.cli import main

    assert main(["demo", "--steps", "10", "--out", str(tmp_path / "one")]) == 0
    one = capsys.readouterr().out
    assert main(["demo", "--steps", "10", "--ranks", "2", "--out", str(tmp_path / "two")]) == 0
    two = capsys.readouterr().out
    step_lines = [[line for line in out.splitlines() if line[:4].strip().isdigit()] for out in (one, two)]
    assert len(step_lines[0]) == 10
    # Every decision and residual diff as one process printed them, each step agreed by both ranks.
    assert step_lines[1] == [line + "  yes (2 ranks)" for line in step_lines[0]]


def test_a_lora_change_reuses_the_warm_group_and_a_random_presets_restarts_it(tmp_path):
    from safetensors.torch import save_file

    from accel.job.settings import LoraSpec
    from accel.model.files import TINY_CONFIG, to_original_layout
    from accel.model.loading import load_experts
    from accel.model.lora import write_random_lora

    experts = load_experts(TINY)
    paths = []
    for name in ("high", "low"):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        save_file(to_original_layout(experts.expert(name).state_dict()), paths[-1])
    files = ModelSpec(source="single-file", high_path=paths[0], low_path=paths[1], dtype="fp32")
    chain = (LoraSpec(str(write_random_lora(tmp_path / "a.safetensors", TINY_CONFIG, seed=1)), 1.0, 0.6),)
    job = tiny_job(JobSettings(sampler=SamplerSettings(steps=6, switch_step=3), loras=chain))
    registry = WorkerGroupRegistry()
    try:
        group = registry.acquire(files, ParallelLayout(ulysses=2))
        plain = group.run(tiny_job(JobSettings(sampler=SamplerSettings(steps=6, switch_step=3))))
        assert registry.acquire(files, ParallelLayout(ulysses=2), loras=chain) is group  # warm: no new processes
        with_lora = group.run(job)
        assert "lora_change_s" in with_lora.trace.info and not torch.equal(with_lora.latent, plain.latent)
        expected = run_job(Runtime.load(files, loras=chain), job).latent
        torch.testing.assert_close(with_lora.latent, expected, rtol=1e-5, atol=1e-6)  # Ulysses 2 vs one process
        random = registry.acquire(TINY, ParallelLayout(ulysses=2))
        assert registry.acquire(TINY, ParallelLayout(ulysses=2), loras=chain) is not random
    finally:
        registry.release()
