"""LoRA chains merged into loaded experts: a change of chain (or strengths) on a loaded model gives
bit for bit what a fresh load with that chain gives, for fp32 files, bf16 files and fp8_scaled
files used as stored; weights change in place; random presets refuse a change."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import FP8_READY, TINY, single_files

from accel.errors import UserInputError
from accel.job.job import Job
from accel.job.settings import JobSettings, LoraSpec, SamplerSettings
from accel.job.smoke import smoke_embeddings
from accel.model.files import TINY_CONFIG
from accel.model.loading import load_experts, save_random_experts
from accel.model.lora import write_random_lora
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime


def job(loras=(), text_dim: int = 32) -> Job:
    settings = JobSettings(sampler=SamplerSettings(steps=4, switch_step=2, cfg_high=3.5, cfg_low=3.5),
                           loras=tuple(loras))
    return Job(cond=smoke_embeddings(1, text_dim), uncond=smoke_embeddings(2, text_dim),
               latent=torch.zeros(1, 16, 2, 4, 4), settings=settings)


def state(runtime: Runtime) -> dict[str, torch.Tensor]:
    return {f"{e}.{n}": p.detach().clone() for e in ("high", "low")
            for n, p in runtime.experts.expert(e).named_parameters()}


@pytest.fixture(scope="module")
def bf16_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16")
    return single_files(folder, load_experts(dataclasses.replace(TINY, dtype="bf16")))


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    a = write_random_lora(folder / "a.safetensors", TINY_CONFIG, seed=1)
    b = write_random_lora(folder / "b.safetensors", TINY_CONFIG, seed=2, alpha=None)
    return str(a), str(b)


def test_changing_the_chain_in_place_equals_a_fresh_load_bit_for_bit(bf16_files, loras):
    a, b = loras
    first = (LoraSpec(a, 1.0, 0.5),)
    second = (LoraSpec(b, 0.7, 0.0), LoraSpec(a, -0.3, 1.2))
    warm = Runtime.load(bf16_files)
    plain = run_job(warm, job()).latent
    weights = {n: p for n, p in warm.experts.high.named_parameters()}
    storage = weights["blocks.0.attn1.to_q.weight"].data_ptr()
    runs = {chain: run_job(warm, job(chain)) for chain in (first, second)}
    assert "lora_change_s" in runs[second].trace.info
    assert not torch.equal(runs[first].latent, plain) and not torch.equal(runs[second].latent, runs[first].latent)
    back = run_job(warm, job()).latent
    assert weights["blocks.0.attn1.to_q.weight"].data_ptr() == storage  # changed in place
    assert torch.equal(back, plain)  # no drift from merging and unmerging
    for chain, result in runs.items():
        fresh = Runtime.load(bf16_files, loras=chain)
        assert torch.equal(run_job(fresh, job(chain)).latent, result.latent)
    fresh_second = Runtime.load(bf16_files, loras=second)
    assert state(fresh_second).keys() == state(warm).keys()
    run_job(warm, job(second))
    assert all(torch.equal(state(warm)[k], v) for k, v in state(fresh_second).items())


def test_a_strength_of_zero_leaves_that_expert_untouched(bf16_files, loras):
    runtime = Runtime.load(bf16_files)
    before = state(runtime)
    run_job(runtime, job((LoraSpec(loras[0], strength_high=0.8, strength_low=0.0),)))
    after = state(runtime)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("low."))
    assert not torch.equal(after["high.blocks.0.attn1.to_q.weight"], before["high.blocks.0.attn1.to_q.weight"])
    assert not torch.equal(after["high.blocks.1.scale_shift_table"], before["high.blocks.1.scale_shift_table"])


def test_fp8_scaled_files_used_as_stored_are_requantized_exactly_on_a_change(tmp_path, loras):
    spec = save_random_experts(tmp_path / "dir", **FP8_READY)
    experts = load_experts(dataclasses.replace(spec, dtype="bf16"))
    files = dataclasses.replace(single_files(tmp_path, experts, fp8_scaled=True), fp8_scaled="as_stored")
    config = {**TINY_CONFIG, **FP8_READY}
    lora = str(write_random_lora(tmp_path / "wide.safetensors", config, seed=3))
    chain = (LoraSpec(lora, 1.0, 1.0),)
    warm = Runtime.load(files)
    run_job(warm, job())
    changed = run_job(warm, job(chain)).latent
    fresh = run_job(Runtime.load(files, loras=chain), job(chain)).latent
    assert torch.equal(changed, fresh)
    assert not torch.equal(changed, run_job(warm, job()).latent)


def test_a_random_preset_cannot_change_its_loras_in_place(loras):
    runtime = Runtime.load(TINY, loras=(LoraSpec(loras[0]),))
    with pytest.raises(UserInputError, match="no weight file to restore from"):
        run_job(runtime, job((LoraSpec(loras[1]),)))


def test_a_bad_lora_in_a_chain_changes_no_weight_and_the_group_state_stays_right(bf16_files, loras, tmp_path):
    from accel.model.files import TINY_CONFIG
    from accel.model.lora import write_random_lora

    wide = write_random_lora(tmp_path / "wide.safetensors", {**TINY_CONFIG, "attention_head_dim": 16}, seed=4)
    good = (LoraSpec(loras[0], 1.0, 1.0),)
    runtime = Runtime.load(bf16_files)
    before = run_job(runtime, job(good)).latent
    weights = state(runtime)
    with pytest.raises(UserInputError, match="shape"):
        run_job(runtime, job((LoraSpec(loras[1], 1.0, 1.0), LoraSpec(str(wide), 1.0, 1.0))))
    assert all(torch.equal(state(runtime)[k], v) for k, v in weights.items())  # the file was refused first
    assert torch.equal(run_job(runtime, job(good)).latent, before)
