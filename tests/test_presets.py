"""YAML presets in cache-dit's format, and engine options refused where they cannot run."""

from __future__ import annotations

import pytest
import torch
import yaml

from accel.job.settings import CacheSettings, EngineOptions, JobSettings, ModelSpec, QuantSettings, SamplerSettings
from accel.model.engine_check import check_engine
from accel.errors import UserInputError
from accel.job.presets import list_presets, load_preset, preset_to_dict
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime

from helpers import TINY, tiny_job


def test_the_documented_presets_exist():
    assert {"none", "sglang-fast", "sglang-dynamic", "balanced", "fp8"} <= set(list_presets())


def test_sglang_dynamic_is_the_sglang_run():
    preset = load_preset("sglang-dynamic")
    assert preset.cache == CacheSettings()  # the pack's defaults are that run: W4/MC8 high, W2/MC20 low
    assert (preset.cache.high.max_warmup_steps, preset.cache.high.max_cached_steps) == (4, 8)
    assert (preset.cache.low.max_warmup_steps, preset.cache.low.max_cached_steps) == (2, 20)
    scm = preset.scm_for(40)
    assert "".join(map(str, scm.mask)) == "1111111111001100000110000001100000100001"
    assert scm.policy == "dynamic" and preset.engine.quantize is None


def test_none_turns_everything_off():
    preset = load_preset("none")
    assert preset.cache is None and preset.scm_for(40) is None and preset.engine == EngineOptions()


def test_fp8_preset_quantizes_and_compiles():
    engine = load_preset("fp8").engine
    assert engine.quantize == QuantSettings("float8_per_row") and engine.compile


def test_sglang_fast_preset_computes_exactly_the_mask():
    preset = load_preset("sglang-fast")
    trace = run_job(Runtime.load(TINY), tiny_job(JobSettings(
        sampler=SamplerSettings(steps=40), cache=preset.cache, scm=preset.scm_for(40)))).trace
    assert trace.summary()["computed"] == 36  # 18 steps x cond and uncond, with the default shift 12


@pytest.mark.parametrize("name", ["none", "sglang-fast", "sglang-dynamic", "balanced", "fp8"])
def test_presets_round_trip(name, tmp_path):
    preset = load_preset(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(preset_to_dict(preset)))
    again = load_preset(str(path))
    assert (again.cache, again.scm_mask, again.scm_policy, again.engine) == \
        (preset.cache, preset.scm_mask, preset.scm_policy, preset.engine)


def test_ulysses_transport_switches_load_and_round_trip(tmp_path):
    path = tmp_path / "nccl.yaml"
    path.write_text("parallelism_config:\n  ulysses_size: 2\n  ulysses_async: false\n  ulysses_copy_engine: false\n"
                    "  ulysses_head_chunks: 2\n")
    preset = load_preset(str(path))
    assert (preset.engine.ulysses_async, preset.engine.ulysses_copy_engine, preset.engine.ulysses_head_chunks,
            preset.ulysses) == (False, False, 2, 2)
    path.write_text(yaml.safe_dump(preset_to_dict(preset)))
    assert load_preset(str(path)).engine == preset.engine
    assert load_preset("sglang-fast").engine.ulysses_copy_engine


def test_head_chunks_below_one_are_refused_with_the_key_named(tmp_path):
    path = tmp_path / "chunks.yaml"
    path.write_text("parallelism_config:\n  ulysses_head_chunks: 0\n")
    with pytest.raises(UserInputError, match="ulysses_head_chunks must be an integer >= 1"):
        load_preset(str(path))


@pytest.mark.parametrize("text, message", [
    ("cache_config:\n  Fn_compute_blocks: 1\n  residual_diff_treshold: 0.2\n",
     r"line 3: unknown key 'cache_config.residual_diff_treshold'"),
    ("cache_config:\n  max_cached_steps: many\n", r"line 2: cache_config.max_cached_steps must be integer"),
    ("cache_config:\n  enable_taylorseer: 1\n", r"line 2: cache_config.enable_taylorseer must be true/false"),
    ("cache_config:\n  experts:\n    middle:\n      max_warmup_steps: 1\n", r"line 3: unknown expert 'middle'"),
    ("cache_config:\n  experts:\n    low:\n      warmup: 1\n", r"line 4: unknown key 'cache_config.experts.low.warmup'"),
    ("speed: max\n", r"line 1: unknown key 'speed'"),
    ("cache_config:\n  steps_computation_mask: warp\n", "not a preset"),
    ("attention_backend: turbo\n", "attention_backend 'turbo' is unknown"),
    ("cache_config: [1, 2\n", "not valid YAML"),
])
def test_bad_presets_name_the_key_the_file_and_the_line(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message) as error:
        load_preset(str(path))
    assert str(path) in str(error.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserInputError, match="sglang-fast"):
        load_preset("turbo")


@pytest.mark.parametrize("quant", ["float8_per_row", "int8_weight_only"])
def test_quantization_on_cpu_is_refused_with_the_reason(quant):
    engine = EngineOptions(quantize=QuantSettings(quant))
    with pytest.raises(UserInputError, match="needs a CUDA GPU; this run is on the CPU"):
        Runtime.load(ModelSpec(), "cpu", engine)


def test_fp8_on_an_old_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(UserInputError, match="capability 8.9 or higher.*A100 is 8.0"):
        check_engine(EngineOptions(quantize=QuantSettings()), ModelSpec(), torch.device("cuda", 0))


def test_fp8_needs_bf16_weights(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(UserInputError, match="needs bf16 weights; the loader is set to fp16"):
        check_engine(EngineOptions(quantize=QuantSettings()), ModelSpec(dtype="fp16"), torch.device("cuda", 0))


def test_missing_attention_package_is_named():
    with pytest.raises(UserInputError, match="needs the Python package 'sageattention'"):
        check_engine(EngineOptions(attention_backend="sage"), ModelSpec(), None)


def test_unknown_quant_type_lists_the_known_ones():
    with pytest.raises(UserInputError, match="float8_per_row"):
        QuantSettings("float8")


def test_per_row_fp8_gets_bf16_linears_only():
    """cache-dit's float8_per_row asserts every Linear is bf16; diffusers keeps the time embedder in fp32."""
    from accel.model.engine import _bf16_for_per_row
    from accel.model.loading import load_experts

    module = load_experts(ModelSpec(dtype="bf16")).high
    assert module.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    cast = _bf16_for_per_row(module, "float8_per_row")
    assert "condition_embedder.time_embedder.linear_1" in cast
    assert all(m.weight.dtype == torch.bfloat16 for m in module.modules() if isinstance(m, torch.nn.Linear))
    assert _bf16_for_per_row(load_experts(ModelSpec(dtype="bf16")).high, "int8_weight_only") == []


def test_demo_takes_a_preset_and_refuses_fp8_on_cpu(tmp_path, capsys):
    from accel.cli import main

    assert main(["demo", "--config", "sglang-fast", "--out", str(tmp_path)]) == 0
    assert "computed 36" in capsys.readouterr().out
    assert main(["demo", "--config", "fp8", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU; this run is on the CPU" in capsys.readouterr().err
