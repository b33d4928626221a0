"""YAML presets in cache-dit's format, and engine options refused where they cannot run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, tiny_job

from accel.errors import UserInputError
from accel.job.presets import PRESET_DIR, list_presets, load_preset, preset_to_dict
from accel.job.scm import build_scm, rescale_mask
from accel.job.settings import (
    EXPERTS,
    CacheSettings,
    EngineOptions,
    JobSettings,
    ModelSpec,
    QuantSettings,
    SamplerSettings,
)
from accel.model.engine_check import check_engine
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime


def test_the_documented_presets_exist():
    assert {"none", "sglang-fast", "sglang-dynamic", "balanced", "fp8", "lightning"} <= set(list_presets())


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


@pytest.mark.parametrize("name", ["none", "sglang-fast", "sglang-dynamic", "balanced", "fp8", "lightning"])
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
            preset.ulysses_size) == (False, False, 2, 2)
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


# --- parsing without cache-dit, checked against cache-dit -------------------------------------------

EXTRA_PRESETS = {  # beyond configs/: keys left out (cache-dit's defaults), TaylorSeer off, explicit masks
    "defaults": "cache_config:\n  Fn_compute_blocks: 2\n",
    "empty-cache": "cache_config: {}\nattention_backend: cudnn\n",
    "taylorseer-off": "cache_config:\n  residual_diff_threshold: 0\n  enable_taylorseer: false\n  taylorseer_order: 2\n"
                      "  max_warmup_steps: 0\n",
    "order-2": "cache_config:\n  enable_taylorseer: true\n  taylorseer_order: 2\n  experts:\n    high:\n"
               "      enable_taylorseer: false\n    low:\n      Bn_compute_blocks: 2\n",
    "explicit": "cache_config:\n  Fn_compute_blocks: 1\n  steps_computation_mask: [1, 1, 1, 0, 0, 1, 0, 1]\n"
                "  steps_computation_policy: static\n",
    "explicit-n": "cache_config:\n  steps_computation_mask: [1, 1, 0, 0, 1, 1]\n  num_inference_steps: 6\n",
    "named-8": "cache_config:\n  steps_computation_mask: ultra\n  num_inference_steps: 8\n",
    "quantized": "quantize_config:\n  quant_type: INT8_per_row\n",
    "quantized-excludes": "quantize_config:\n  exclude_layers: [embed]\nparallelism_config:\n  ulysses_size: 2\n"
                          "  ulysses_float8: true\n",
}


def cache_dit_view(path: Path) -> dict:
    """For each expert: cache-dit's load_configs of the file with that expert's overrides merged in."""
    import cache_dit

    data = yaml.safe_load(path.read_text()) or {}
    views = {}
    for expert in EXPERTS:
        view = dict(data)
        if data.get("cache_config") is not None:
            section = {k: v for k, v in data["cache_config"].items() if k != "experts"}
            view["cache_config"] = {**section, **data["cache_config"].get("experts", {}).get(expert, {})}
        views[expert] = cache_dit.load_configs(view)
    return views


def preset_files(tmp_path_factory) -> list[Path]:
    extra = tmp_path_factory.mktemp("extra")
    for name, text in EXTRA_PRESETS.items():
        (extra / f"{name}.yaml").write_text(text)
    return sorted(PRESET_DIR.glob("*.yaml")) + sorted(extra.glob("*.yaml"))


@pytest.fixture(scope="module")
def all_preset_files(tmp_path_factory):
    return preset_files(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_cache_dit_loads_every_shipped_preset_as_it_stands(name):
    import cache_dit

    loaded = cache_dit.load_configs(str(PRESET_DIR / f"{name}.yaml"))
    preset = load_preset(name)
    assert (loaded["cache_config"] is None) == (preset.cache is None)
    if preset.scm_mask is not None:  # the mask cache-dit builds from the file is the pack's at that count
        assert preset.scm_reference_steps == loaded["cache_config"].num_inference_steps == 40
        assert loaded["cache_config"].steps_computation_mask == list(preset.scm_for(40).mask)
        assert loaded["cache_config"].steps_computation_policy == preset.scm_policy


def test_the_pack_parses_every_preset_as_cache_dit_does(all_preset_files):
    assert len(all_preset_files) == len(list_presets()) + len(EXTRA_PRESETS)
    for path in all_preset_files:
        preset = load_preset(str(path))
        views = cache_dit_view(path)
        for expert, loaded in views.items():
            dbcache, calibrator = loaded["cache_config"], loaded["calibrator_config"]
            if dbcache is None:
                assert preset.cache is None, path
                continue
            assert dataclasses.asdict(preset.cache.for_expert(expert)) == {
                "Fn_compute_blocks": dbcache.Fn_compute_blocks, "Bn_compute_blocks": dbcache.Bn_compute_blocks,
                "max_warmup_steps": dbcache.max_warmup_steps, "max_cached_steps": dbcache.max_cached_steps,
                "max_continuous_cached_steps": dbcache.max_continuous_cached_steps,
                "residual_diff_threshold": float(dbcache.residual_diff_threshold),
                "taylorseer": calibrator is not None and calibrator.enable_calibrator,
                "taylorseer_order": calibrator.taylorseer_order if calibrator is not None else 1,
            }, (path, expert)
            reference = dbcache.num_inference_steps
            assert preset.scm_reference_steps == (reference if reference is not None else
                                                  dbcache.steps_computation_mask and len(dbcache.steps_computation_mask))
            if dbcache.steps_computation_mask is None:
                assert preset.scm_mask is None, path
            else:
                steps = len(dbcache.steps_computation_mask)
                assert preset.scm_for(steps).mask == tuple(dbcache.steps_computation_mask), path
                assert preset.scm_policy == dbcache.steps_computation_policy, path
        loaded = views["high"]
        quantize = loaded["quantize_config"]
        assert (None if quantize is None else (quantize.quant_type, tuple(quantize.exclude_layers))) == \
            (None if preset.engine.quantize is None else
             (preset.engine.quantize.quant_type, preset.engine.quantize.exclude_layers)), path
        assert (loaded["attention_backend"] or "native") == preset.engine.attention_backend, path
        parallel = loaded["parallelism_config"]
        assert (None if parallel is None else parallel.ulysses_size) == preset.ulysses_size, path
        if parallel is not None:
            assert parallel.ulysses_float8 == preset.engine.ulysses_float8, path


def test_num_inference_steps_round_trips_and_is_checked(tmp_path):
    preset = load_preset("sglang-fast")
    assert preset_to_dict(preset)["cache_config"]["num_inference_steps"] == 40
    path = tmp_path / "p.yaml"
    path.write_text("cache_config:\n  steps_computation_mask: fast\n  num_inference_steps: 5\n")
    with pytest.raises(UserInputError, match="num_inference_steps: SCM preset 'fast' at 5 steps"):
        load_preset(str(path))
    path.write_text("cache_config:\n  steps_computation_mask: [1, 0, 1]\n  num_inference_steps: 40\n")
    with pytest.raises(UserInputError, match="lists 3 steps but cache_config.num_inference_steps is 40"):
        load_preset(str(path))
    path.write_text("cache_config:\n  steps_computation_mask: [1, 2, 1]\n")
    with pytest.raises(UserInputError, match="list of 0 and 1"):
        load_preset(str(path))
    path.write_text("cache_config:\n  num_inference_steps: 0\n")
    with pytest.raises(UserInputError, match="num_inference_steps must be >= 1"):
        load_preset(str(path))
    path.write_text("parallelism_config:\n  ulysses_size: 0\n")
    with pytest.raises(UserInputError, match="ulysses_size must be >= 1"):
        load_preset(str(path))


def test_a_named_mask_is_rebuilt_for_the_job_steps():
    preset = load_preset("sglang-fast")
    for steps in (4, 8, 20, 28, 40, 50, 80):
        assert preset.scm_for(steps) == build_scm(steps, "fast", policy="static")
    with pytest.raises(UserInputError, match="SCM preset 'fast' at 5 steps"):
        preset.scm_for(5)


def test_an_explicit_mask_is_resampled_to_the_job_steps(tmp_path):
    bits = [1, 1, 1, 0, 0, 1, 0, 0, 0, 1]
    path = tmp_path / "explicit.yaml"
    path.write_text(f"cache_config:\n  steps_computation_mask: {bits}\n  num_inference_steps: 10\n")
    preset = load_preset(str(path))
    assert preset.scm_reference_steps == 10 and preset.scm_for(10).mask == tuple(bits)
    assert preset.scm_for(19).mask == tuple(bits[(2 * i * 9 + 18) // 36] for i in range(19))
    # 20 steps: each reference step twice (step i takes reference step round(i * 9 / 19))
    assert preset.scm_for(20).mask == (1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1)
    # 5 steps: reference steps 0, 2, 5 (2.25 and 4.5, halves up), 7, 9
    assert preset.scm_for(5).mask == (1, 1, 1, 0, 1)
    assert preset.scm_for(4).mask == (1, 0, 0, 1)  # reference steps 0, 3, 6, 9
    assert preset.scm_for(1).mask == (1,)


def test_rescale_keeps_the_ends_and_the_last_step_computed():
    fast = build_scm(40, "fast").mask
    for steps in range(1, 121):
        mask = rescale_mask(fast, steps)
        assert len(mask) == steps and mask[-1] == 1 and mask[0] == 1
    assert rescale_mask(fast, 40) == fast
    assert rescale_mask(fast, 79) == tuple(b for bit in fast for b in (bit, bit))[1:]  # 79 = 2 x 40 - 1
    assert sum(rescale_mask(fast, 80)) == 36 and sum(rescale_mask(fast, 20)) == 8  # 18 of 40 in the reference
    assert rescale_mask((1, 0), 3) == (1, 0, 1)  # the middle rounds up to the last reference step, forced on
    assert rescale_mask((1, 0, 0, 0), 4) == (1, 0, 0, 0)  # the reference length: as written
    assert rescale_mask((1, 1, 0, 0), 6) == (1, 1, 1, 0, 0, 1)  # reference 0, 1, 1, 2, 2, 3; the last forced on
    with pytest.raises(UserInputError, match="step count >= 1"):
        rescale_mask(fast, 0)


def test_host_modules_load_presets_and_masks_without_cache_dit():
    """accel.job runs in ComfyUI's process, which may have no cache-dit (nor diffusers, torchao)."""
    tests = Path(__file__).resolve().parent
    code = (
        "import sys\n"
        "from accel.job.presets import list_presets, load_preset\n"
        "from accel.job.scm import build_scm\n"
        "names = list_presets()\n"
        "assert len(names) >= 5, names\n"
        "for name in names:\n"
        "    preset = load_preset(name)\n"
        "    for steps in (8, 20, 40, 50):\n"
        "        preset.scm_for(steps)\n"
        "assert len(build_scm(40, 'fast').mask) == 40\n"
        "assert build_scm(9, compute_bins=[4, 2], cache_bins=[3]).mask == (1, 1, 1, 1, 0, 0, 0, 1, 1)\n"
        "loaded = sorted(m for m in ('cache_dit', 'diffusers', 'torchao') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tests, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("clean")
