"""Residency plans (resident / swap / stream): the host's plan choice arithmetic, and on the CPU the
same placement code paths as on a GPU (device = cpu, mirrors = separate host copies; cache-dit's
layerwise offload in its synchronous mode, async needs CUDA), giving bit-identical latents and
cache decisions to resident, across LoRA changes and warm jobs. The CUDA tests at the end run
only where a GPU is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import FP8_READY, TINY, gloo_rank, single_files, tiny_job

from accel import shared_memory
from accel.errors import UserInputError
from accel.job import memory
from accel.job.memory import GIB, MemoryNeed, choose_plan, expert_size
from accel.job.settings import (
    CacheSettings,
    EngineOptions,
    JobSettings,
    LoraSpec,
    ModelSpec,
    SamplerSettings,
)
from accel.model.files import A14B_CONFIG, A14B_I2V_CONFIG, TINY_CONFIG
from accel.model.loading import load_experts, save_random_experts
from accel.model.lora import write_random_lora
from accel.model.residency import (
    Slot,
    SwapResidency,
    copy_parts,
    nbytes,
    plain_parts,
    rebuild,
    same_storage,
)
from accel.parallel.layout import ParallelLayout
from accel.parallel.registry import resolve_residency
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime

A14B_TOKENS_640 = 33_600  # 640x640x81: 21 latent frames x 40 x 40 patches


# the estimate and the choice


@pytest.mark.parametrize("config", [TINY_CONFIG, A14B_CONFIG, A14B_I2V_CONFIG])
def test_expert_size_counts_the_built_model(config):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    size = expert_size(config)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.block_linear == sum(m.weight.numel() for n, m in model.named_modules()
                                    if n.startswith("blocks.") and isinstance(m, torch.nn.Linear))


def test_a14b_expert_is_14_3e9_params_and_the_activation_factor_reproduces_the_h200_runs():
    assert expert_size(A14B_CONFIG).params == pytest.approx(14.3e9, rel=0.005)
    # Both bf16 experts resident, one GPU, 720x1280x81 = 75,600 tokens: 68 GiB measured
    # (max_memory_allocated); 480x832x33 = 14,040 tokens: 55-58 GiB. The overhead is not in those.
    for tokens, low, high in ((75_600, 67.5, 69.0), (14_040, 55.0, 58.0)):
        peak = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, tokens).peaks["resident"] - memory.OVERHEAD_BYTES
        assert low <= peak / GIB <= high


def test_copy_engine_buffers_are_four_q_of_one_rank():
    plain = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, 33_600, ulysses=4)
    engine = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, 33_600, ulysses=4, copy_engine=True)
    assert engine.tokens_per_rank == 8_400
    assert engine.peaks["swap"] - plain.peaks["swap"] == 4 * 8_400 * 5120 * 2


@pytest.mark.parametrize("quantized, budget_gib, plan", [
    (False, 139.0, "resident"), (False, 60.0, "swap"), (False, 40.0, "swap"), (False, 24.0, "stream"),
    (True, 60.0, "resident"), (True, 32.0, "swap"), (True, 24.0, "stream"), (True, 16.0, "stream"),
])
def test_auto_picks_the_fastest_plan_that_fits_the_smallest_gpu(quantized, budget_gib, plan):
    need = MemoryNeed.estimate(A14B_CONFIG, "bf16", quantized, A14B_TOKENS_640)
    budgets = {"GPU 0": 139 * GIB, "GPU 1": int(budget_gib * GIB)}  # the smaller one decides
    choice = choose_plan("auto", need, budgets)
    assert choice.plan == plan and choice.fits and not choice.forced
    assert f"residency {plan} (auto" in choice.reason() and "GPU 1" in choice.reason()


def test_no_plan_fits_names_the_memory_that_would():
    need = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, A14B_TOKENS_640)
    with pytest.raises(UserInputError) as error:
        choose_plan("auto", need, {"GPU 0": 6 * GIB})
    text = str(error.value)
    assert f"{need.peaks['stream'] / GIB:.1f} GiB" in text and "'stream'" in text and "GPU 0 has 6.0 GiB" in text


def test_the_estimates_cover_the_capped_h200_runs():
    """bench/results/2026-12-01-NVIDIA-H200-memory.md, 640x640x81: peak max_memory_allocated per
    plan (GiB); the swap plan with FP8 weights ran out of memory under a 24 GiB cap."""
    measured = {(False, "resident"): 58.85, (True, "resident"): 37.98, (False, "stream"): 7.16, (True, "stream"): 11.34}
    for (quantized, plan), peak in measured.items():
        need = MemoryNeed.estimate(A14B_CONFIG, "bf16", quantized, A14B_TOKENS_640).peaks[plan] - memory.OVERHEAD_BYTES
        assert peak <= need / GIB <= peak + 6.0, (quantized, plan)
    fp8 = MemoryNeed.estimate(A14B_CONFIG, "bf16", True, A14B_TOKENS_640)
    assert fp8.peaks["swap"] > 24 * GIB  # so a 24 GiB card streams
    assert choose_plan("auto", fp8, {"GPU 0": 16 * GIB}).plan == "stream"


def test_a_forced_plan_is_kept_and_cpu_ranks_are_resident():
    need = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, A14B_TOKENS_640)
    forced = choose_plan("resident", need, {"GPU 0": 24 * GIB})
    assert forced.plan == "resident" and forced.forced and not forced.fits and "may run out" in forced.reason()
    assert choose_plan("auto", need, {}).plan == "resident"


def test_the_host_resolves_auto_before_the_group_and_the_plan_is_in_its_key():
    spec = ModelSpec(source="a14b-random", dtype="bf16")
    gpus = ParallelLayout(devices=(0,))
    latent = (1, 16, 21, 80, 80)  # 640x640x81
    resolved = resolve_residency(spec, gpus, EngineOptions(residency="auto"), latent, {"GPU 0": 24 * GIB})
    assert resolved.residency == "stream" and "33,600 tokens" in resolved.residency_reason
    cpu = resolve_residency(spec, ParallelLayout(), EngineOptions(residency="auto"), latent, {})
    assert cpu.residency == "resident"
    # The plan is part of the group key; the reason (free memory then) is not.
    assert dataclasses.replace(resolved, residency_reason="") == resolved
    assert dataclasses.replace(resolved, residency="swap") != resolved
    assert EngineOptions.from_dict(resolved.to_dict()) == resolved
    with pytest.raises(UserInputError, match="fits no residency plan"):
        resolve_residency(spec, gpus, EngineOptions(residency="auto"), latent, {"GPU 0": 4 * GIB})
    with pytest.raises(UserInputError, match="residency 'gpu' is unknown"):
        EngineOptions(residency="gpu")


def test_memory_fraction_caps_the_budget(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_FRACTION_ENV, "0.25")
    assert memory.memory_fraction() == 0.25
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (100 * GIB, 140 * GIB))
    assert memory.usable_bytes([0]) == {"GPU 0": 35 * GIB}
    monkeypatch.setenv(memory.MEMORY_FRACTION_ENV, "2")
    with pytest.raises(UserInputError):
        memory.memory_fraction()


# plans on the CPU: the same latents and decisions as resident


def settings(steps=10, switch_step=5, loras=()) -> JobSettings:
    return JobSettings(sampler=SamplerSettings(steps=steps, switch_step=switch_step), cache=CacheSettings(),
                       loras=tuple(loras))


def decisions(result):
    return [(r.step, r.expert, r.branch, r.decision, r.residual_diff) for r in result.trace.records]


@pytest.fixture(scope="module")
def resident_runs():
    runtime = Runtime.load(TINY)
    job = tiny_job(settings())
    return run_job(runtime, job), run_job(runtime, job)


@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_plans_give_resident_latents_and_decisions_twice(plan, resident_runs):
    runtime = Runtime.load(TINY, engine=EngineOptions(residency=plan))
    assert runtime.residency.plan == plan
    assert any(note.startswith(f"residency {plan}") for note in runtime.notes)
    job = tiny_job(settings())
    first, second = run_job(runtime, job), run_job(runtime, job)
    for ours, theirs in zip((first, second), resident_runs):
        assert torch.equal(ours.latent, theirs.latent)
        assert decisions(ours) == decisions(theirs)
    info = second.trace.info["residency"]
    assert info["plan"] == plan and info["on_device"] == ["low"]  # the low-noise expert left resident
    assert [o["expert"] for o in info["onloads"]] == ["high"]  # the next job brings back only the high one


@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_a_device_that_holds_one_expert_swaps_at_the_switch(plan, resident_runs):
    runtime = Runtime.load(TINY, engine=EngineOptions(residency=plan))
    residency = runtime.residency
    residency.budget = int(1.5 * residency.states["high"].device_bytes)  # pretend: one expert fits, not two
    job = tiny_job(settings())
    results = [run_job(runtime, job), run_job(runtime, job)]
    for ours, theirs in zip(results, resident_runs):
        assert torch.equal(ours.latent, theirs.latent) and decisions(ours) == decisions(theirs)
    assert [(o["expert"], o["at"]) for o in results[0].trace.info["residency"]["onloads"]] == [("low", "switch")]
    assert [(o["expert"], o["at"]) for o in results[1].trace.info["residency"]["onloads"]] == \
        [("high", "start"), ("low", "switch")]
    # Only the running expert off its mirrors; the other points at them.
    for expert, on_device in (("high", False), ("low", True)):
        for slot in residency.states[expert].slots:
            if slot.moved:
                assert same_storage(slot.get(), slot.mirror) != on_device


def test_a_job_brings_its_first_expert_back_only_with_room_for_its_activations(resident_runs):
    """Both experts fit by their bytes, not with the job's activations (an FP8 pair under a 32 GiB
    cap ran out of memory so on the H200): the warm job drops the low-noise expert first."""
    runtime = Runtime.load(TINY, engine=EngineOptions(residency="swap"))
    residency = runtime.residency
    residency.budget = int(2.5 * residency.states["high"].device_bytes)  # activations: 1 GiB margin and more
    job = tiny_job(settings())
    results = [run_job(runtime, job), run_job(runtime, job)]
    assert torch.equal(results[1].latent, resident_runs[1].latent)
    assert [(o["expert"], o["at"]) for o in results[1].trace.info["residency"]["onloads"]] == \
        [("high", "start"), ("low", "switch")]


def test_offloading_is_re_pointing_at_the_mirror():
    runtime = Runtime.load(TINY, engine=EngineOptions(residency="swap"))
    residency: SwapResidency = runtime.residency
    weight = runtime.experts.high.blocks[0].attn1.to_q.weight
    device_copy = weight.data
    slot = residency.by_name["high"]["blocks.0.attn1.to_q.weight"]
    assert not same_storage(device_copy, slot.mirror) and torch.equal(device_copy, slot.mirror)
    residency.offload("high")
    assert weight.data.data_ptr() == slot.mirror.data_ptr()  # no copy
    residency.onload("high", "start")
    assert weight.data.data_ptr() != slot.mirror.data_ptr() and torch.equal(weight.data, slot.mirror)


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("residency-lora")
    spec = save_random_experts(folder / "model")
    loras = [LoraSpec(str(write_random_lora(folder / f"lora{seed}.safetensors", TINY_CONFIG, seed)),
                      strength_high=0.8, strength_low=1.2) for seed in (1, 2)]
    return spec, loras


@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_lora_changes_reach_both_copies(plan, lora_model):
    spec, (first, second) = lora_model
    chains = [(first,), (first, second), (), (second,)]
    expected = []
    resident = Runtime.load(spec)
    for chain in chains:
        expected.append(run_job(resident, tiny_job(settings(loras=chain))))
    runtime = Runtime.load(spec, engine=EngineOptions(residency=plan))
    runtime.residency.budget = int(1.5 * runtime.residency.states["high"].device_bytes)
    for chain, theirs in zip(chains, expected):
        ours = run_job(runtime, tiny_job(settings(loras=chain)))
        assert torch.equal(ours.latent, theirs.latent) and decisions(ours) == decisions(theirs)
        for expert in ("high", "low"):  # every weight equal where it lives and in its mirror
            for slot in runtime.residency.states[expert].slots:
                assert torch.equal(slot.get(), slot.mirror), slot.name


@pytest.fixture(scope="module")
def fp8_files(tmp_path_factory):
    """A tiny fp8_scaled pair (widths FP8 takes), used as stored: torchao Float8Tensor weights."""
    folder = tmp_path_factory.mktemp("residency-fp8")
    experts = load_experts(dataclasses.replace(save_random_experts(folder / "dir", **FP8_READY), dtype="bf16"))
    return dataclasses.replace(single_files(folder, experts, fp8_scaled=True), fp8_scaled="as_stored")


@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_fp8_weights_as_stored_give_resident_latents_under_every_plan(plan, fp8_files):
    from torchao.quantization import Float8Tensor

    job = tiny_job(settings())
    resident = Runtime.load(fp8_files)
    expected = [run_job(resident, job) for _ in range(2)]
    runtime = Runtime.load(fp8_files, engine=EngineOptions(residency=plan))
    runtime.residency.budget = int(1.5 * runtime.residency.states["high"].device_bytes)
    for theirs in expected:
        ours = run_job(runtime, job)
        assert torch.equal(ours.latent, theirs.latent) and decisions(ours) == decisions(theirs)
    slot = runtime.residency.by_name["high"]["blocks.0.attn1.to_q.weight"]
    assert isinstance(slot.get(), Float8Tensor) and same_storage(slot.get(), slot.mirror)  # between forwards


def test_compile_is_dropped_with_a_note_under_stream_with_fp8_weights(fp8_files):
    from accel.sampling.runtime import STREAM_FP8_COMPILE_NOTE

    runtime = Runtime.load(fp8_files, engine=EngineOptions(residency="stream", compile=True))
    assert not runtime.engine.compile and STREAM_FP8_COMPILE_NOTE in runtime.notes
    swap = Runtime.load(fp8_files, engine=EngineOptions(residency="swap"))
    assert STREAM_FP8_COMPILE_NOTE not in swap.notes


def test_cache_dit_layerwise_offload_moves_float8_weights_once_installed():
    """cache-dit re-points a weight with ``parameter.data = x``: a Float8Tensor parameter keeps its
    own inner tensors then. With layerwise_float8 installed the layer computes with what cache-dit
    assigned, and plain tensors still go cache-dit's own way."""
    from cache_dit.offload import layerwise
    from torchao.quantization import Float8Tensor
    from torchao.quantization.granularity import PerRow

    from accel.model import layerwise_float8

    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    weight = linear.weight.data
    linear.weight = torch.nn.Parameter(Float8Tensor.from_hp(weight, granularity=PerRow()), requires_grad=False)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    expected = linear(x)
    negated = Float8Tensor.from_hp(-weight, granularity=PerRow())
    layerwise_float8.install()
    layerwise_float8.install()  # idempotent: one wrapper
    assign = layerwise._assign_direct_state_tensor
    assert not getattr(assign.__wrapped__, "_accel_moves_tensor_subclasses", False)
    assign(linear, kind="parameter", name="weight", tensor=negated, requires_grad=False)
    torch.testing.assert_close(linear(x), F.linear(x, negated.dequantize(), linear.bias), rtol=2e-2, atol=2e-2)
    assert (linear(x) - expected).abs().max() > 0.5
    bias = torch.zeros_like(linear.bias)
    assign(linear, kind="parameter", name="bias", tensor=bias, requires_grad=False)
    assert type(linear.bias) is torch.nn.Parameter and linear.bias.data_ptr() == bias.data_ptr()
    assert torch.ops.aten.record_stream.default in Float8Tensor._ATEN_OP_TABLE[Float8Tensor]
    with pytest.raises(KeyError, match="Missing parameter"):
        assign(linear, kind="parameter", name="scale", tensor=negated, requires_grad=False)


def test_float8_weights_move_by_their_inner_tensors():
    from torchao.quantization import Float8Tensor
    from torchao.quantization.granularity import PerRow

    linear = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    linear.weight = torch.nn.Parameter(Float8Tensor.from_hp(linear.weight.data, granularity=PerRow()),
                                       requires_grad=False)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    expected = linear(x)
    weight = linear.weight.data
    mirror = rebuild(weight, lambda part: part.clone())
    assert type(mirror) is Float8Tensor and len(plain_parts(mirror)) == 2 and not same_storage(mirror, weight)
    assert nbytes(mirror) == 32 * 64 + 32 * 4  # float8 qdata and fp32 per-row scales
    # ``param.data = x`` does not take for a Float8Tensor parameter (it keeps its own qdata and
    # scale), so a slot re-points it with a new Parameter.
    negated = Float8Tensor.from_hp(-weight.dequantize(), granularity=PerRow())
    linear.weight.data = negated
    assert torch.equal(linear(x), expected)  # still the old weight
    slot = Slot(linear, "parameter", "weight", "weight", mirror=mirror)
    slot.set(negated)
    assert torch.equal(linear(x), -expected)
    target = rebuild(mirror, torch.empty_like)
    copy_parts(target, mirror)
    slot.set(target)
    assert torch.equal(linear(x), expected) and same_storage(slot.get(), target)


# on a GPU (skipped on the CPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_cuda_plans_equal_resident(plan):
    spec = dataclasses.replace(TINY, dtype="bf16")
    job = tiny_job(settings())
    resident = Runtime.load(spec, "cuda")
    expected = [run_job(resident, job) for _ in range(2)]
    del resident
    runtime = Runtime.load(spec, "cuda", EngineOptions(residency=plan))
    runtime.residency.budget = int(1.5 * runtime.residency.states["high"].device_bytes)
    for theirs in expected:
        ours = run_job(runtime, job)
        assert torch.equal(ours.latent, theirs.latent) and decisions(ours) == decisions(theirs)
    assert all(s.mirror.is_pinned() for s in runtime.residency.states["low"].slots
               if type(s.mirror) is torch.Tensor)


@cuda
@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_cuda_fp8_plans_equal_resident(plan, tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9")
    from accel.job.settings import QuantSettings

    spec = dataclasses.replace(save_random_experts(tmp_path, attention_head_dim=16, ffn_dim=64), dtype="bf16")
    engine = EngineOptions(quantize=QuantSettings())
    job = tiny_job(settings())
    resident = Runtime.load(spec, "cuda", engine)
    expected = run_job(resident, job)
    del resident
    runtime = Runtime.load(spec, "cuda", dataclasses.replace(engine, residency=plan))
    from torchao.quantization import Float8Tensor

    assert isinstance(runtime.experts.low.blocks[0].attn1.to_q.weight.data, Float8Tensor)
    ours = run_job(runtime, job)
    assert torch.equal(ours.latent, expected.latent) and decisions(ours) == decisions(expected)


@pytest.mark.parametrize("quantized", [False, True], ids=["bf16", "fp8"])
def test_shard_splits_the_linear_weights_and_needs_no_host_copies(quantized):
    one = MemoryNeed.estimate(A14B_CONFIG, "bf16", quantized, A14B_TOKENS_640)
    two = MemoryNeed.estimate(A14B_CONFIG, "bf16", quantized, A14B_TOKENS_640, ulysses=2)
    assert "shard" not in one.peaks
    size = expert_size(A14B_CONFIG)
    linears = size.linear_bytes(2, quantized)
    saved = 2 * (linears - -(-linears // 2))  # half of both experts' Linears
    activations_gap = memory.activation_bytes(A14B_CONFIG, "bf16", A14B_TOKENS_640, quantized) \
        - memory.activation_bytes(A14B_CONFIG, "bf16", two.tokens_per_rank, quantized)  # all tokens on every rank
    assert two.peaks["resident"] - two.peaks["shard"] == saved - activations_gap
    assert two.host["resident"] == 0 and two.host["swap"] == two.host["stream"] > 25 * GIB
    assert two.host["shard"] == two.host["swap"]  # both experts whole in host RAM while a worker loads them


def test_host_ram_decides_between_a_shared_copy_and_none_fitting():
    need = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, A14B_TOKENS_640, ulysses=2)
    gpus = {"GPU 0": 40 * GIB, "GPU 1": 40 * GIB}  # swap fits the GPUs
    assert choose_plan("auto", need, gpus, memory.HostBudget(512 * GIB, workers=2)).plan == "swap"
    shared = memory.HostBudget(64 * GIB, workers=2, shared_free=128 * GIB)  # one copy in /dev/shm: fits
    assert choose_plan("auto", need, gpus, shared).plan == "swap" and "host RAM 1 x" in choose_plan(
        "auto", need, gpus, shared).reason()
    small_host = memory.HostBudget(64 * GIB, workers=2)  # no /dev/shm room: two workers x 57 GiB do not fit
    assert not memory.fits("shard", need, gpus, small_host)  # its load holds each worker's own whole experts
    with pytest.raises(UserInputError, match="pinned host RAM") as error:
        choose_plan("auto", need, gpus, small_host)
    assert "2 x 53.2 GiB" in str(error.value) and "/dev/shm" in str(error.value)
    one_gpu = MemoryNeed.estimate(A14B_CONFIG, "bf16", False, A14B_TOKENS_640)
    with pytest.raises(UserInputError, match="pinned host RAM") as error:
        choose_plan("auto", one_gpu, {"GPU 0": 24 * GIB}, memory.HostBudget(32 * GIB, workers=1))
    assert "32.0 GiB available" in str(error.value)


def test_host_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       131072000 kB\nMemAvailable:    65536000 kB\n")
    assert memory.host_available_bytes(meminfo) == 65536000 * 1024
    assert memory.host_available_bytes(tmp_path / "missing") is None


def shared_mirror_files(pid: int) -> set[str]:
    """The /dev/shm mirror chunks a process maps (unlinked once every rank mapped them)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-2] for line in maps.splitlines() if "-mirror" in line and line.endswith("(deleted)")}


@pytest.mark.parametrize("plan", ["swap", "stream"])
def test_a_groups_workers_share_one_host_copy_and_lora_changes_reach_it(plan, lora_model):
    from accel.parallel.group import WorkerGroup
    from accel.parallel.layout import ParallelLayout

    if not shared_memory.shared_room(64 << 20) or not Path("/proc/self/maps").exists():
        pytest.skip("needs room in /dev/shm and /proc")
    spec, (first, second) = lora_model
    resident = Runtime.load(spec)
    with WorkerGroup(spec, ParallelLayout(ulysses=2), EngineOptions(residency=plan), loras=(first,)) as group:
        for chain in ((first,), (first, second), ()):
            expected = run_job(resident, tiny_job(settings(loras=chain)))
            ours = group.run(tiny_job(settings(loras=chain)))
            assert torch.allclose(ours.latent, expected.latent, rtol=1e-5, atol=1e-6)
            assert [d[:4] for d in decisions(ours)] == [d[:4] for d in decisions(expected)]
        assert any("host mirrors" in note and "one copy shared by the group's 2 workers" in note
                   for note in ours.trace.info["notes"])
        assert any("rank 0 reads the files" in note for note in ours.trace.info["notes"])
        files = [shared_mirror_files(proc.pid) for proc in group.procs]
        assert files[0] and files[0] == files[1]  # both ranks map the very same chunks
    assert not list(shared_memory.SHARED_MEMORY.glob(f"{shared_memory.SHARED_PREFIX}*-mirror*"))  # nothing left behind


def test_fp8_weights_as_stored_are_shared_with_rank_0_alone_reading_them(fp8_files):
    """fp8_scaled as stored under swap, CFG parallel on 2 ranks: the second worker builds its
    float8 experts empty and maps the first's copy, scales included."""
    from accel.parallel.group import WorkerGroup
    from accel.parallel.layout import ParallelLayout

    if not shared_memory.shared_room(64 << 20) or not Path("/proc/self/maps").exists():
        pytest.skip("needs room in /dev/shm and /proc")
    job = tiny_job(settings())
    expected = run_job(Runtime.load(fp8_files), job)
    with WorkerGroup(fp8_files, ParallelLayout(cfg=2), EngineOptions(residency="swap")) as group:
        ours = group.run(job)
        files = [shared_mirror_files(proc.pid) for proc in group.procs]
    assert decisions(ours) == decisions(expected) and torch.allclose(ours.latent, expected.latent, rtol=1e-5, atol=1e-6)
    assert any("rank 0 reads the files" in note for note in ours.trace.info["notes"])
    assert files[0] and files[0] == files[1]


def _shared_arena(rank: int) -> tuple[int, int, bool, bool]:
    import torch.distributed as dist

    from accel.model.host_mirrors import SharedArena

    weights = [torch.arange(n, dtype=torch.float32) * (k + 1) for k, n in enumerate((1000, 5, 70_000))]
    arena = SharedArena(dist.group.WORLD, register=True)
    places = [arena.place(w.numel() * w.element_size()) for w in weights]
    arena.open()
    mirrors = [arena.view(where, w) for where, w in zip(places, weights)]
    if arena.writes:
        for mirror, w in zip(mirrors, weights):
            mirror.copy_(w)
    arena.filled()
    on_gpu = [m.to("cuda", non_blocking=True) for m in mirrors]
    torch.cuda.synchronize()
    return (rank, arena.shared_by, all(m.is_pinned() for m in mirrors),
            all(torch.equal(g.cpu(), w) for g, w in zip(on_gpu, weights)))


@cuda
def test_cuda_shared_mirrors_are_page_locked_and_copy_to_the_gpu():
    """Two ranks on one GPU (gloo only): one set of /dev/shm chunks, registered with CUDA by each."""
    import torch.multiprocessing as mp

    from accel.parallel.launch import free_port

    if not shared_memory.shared_room(64 << 20):
        pytest.skip("no room in /dev/shm")
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(gloo_rank, args=(free_port(), _shared_arena, queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    assert results == [(0, 2, True, True), (1, 2, True, True)]


def test_the_random_presets_share_one_copy_too(resident_runs):
    """No files: rank 0 builds the experts from the seed, rank 1 builds them empty and maps its copy."""
    from accel.parallel.group import WorkerGroup
    from accel.parallel.layout import ParallelLayout

    if not shared_memory.shared_room(64 << 20):
        pytest.skip("needs room in /dev/shm")
    with WorkerGroup(TINY, ParallelLayout(ulysses=2), EngineOptions(residency="swap")) as group:
        ours = group.run(tiny_job(settings()))
    expected, _ = resident_runs
    assert torch.allclose(ours.latent, expected.latent, rtol=1e-5, atol=1e-6)
    assert [d[:4] for d in decisions(ours)] == [d[:4] for d in decisions(expected)]
