"""The node classes without ComfyUI: inputs, validation messages, and runs against the tiny model."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pack():
    """The pack imported by path, as ComfyUI does (module name = its directory path)."""
    name = str(ROOT)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[name])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    module = sys.modules[name]
    yield module
    importlib.import_module(f"{name}.accel.parallel.registry").REGISTRY.release()


def node(pack, node_id):
    return pack.NODE_CLASS_MAPPINGS[node_id]


def sub(pack, module):
    return importlib.import_module(f"{pack.__name__}.{module}")


def tiny_model(pack):
    return node(pack, "WanDualTransformerLoader")().load("tiny-random", "none", "none", "", "bf16", 0.875)[0]


def defaults(pack, node_id):
    spec = node(pack, node_id).INPUT_TYPES()["required"]
    return {k: v[1]["default"] for k, v in spec.items() if len(v) > 1 and "default" in v[1]}


def sampler_inputs(pack, **overrides):
    model = tiny_model(pack)
    smoke = node(pack, "WanSmokeConditioning")()
    inputs = {**defaults(pack, "UlyssesParallelSampler"), "model": model,
              "positive": smoke.build(model, 1, 16)[0], "negative": smoke.build(model, 2, 16)[0],
              "latent": {"samples": torch.zeros(1, 16, 3, 8, 8)}, "steps": 12, "gpus": "cpu"}
    inputs.update(overrides)
    return inputs


def test_the_five_nodes_and_the_smoke_node_are_registered(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {"WanDualTransformerLoader", "CacheDiTConfig", "SCMMask", "FP8Quantize",
                                             "UlyssesParallelSampler", "WanSmokeConditioning"}
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["UlyssesParallelSampler"] == "Ulysses Parallel Sampler"
    assert pack.WEB_DIRECTORY == "./web" and (ROOT / "web" / "panel.js").is_file()
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY.startswith("cache-dit") and cls.DESCRIPTION
        assert hasattr(cls, cls.FUNCTION) and "required" in cls.INPUT_TYPES()


def test_loader_names_the_missing_file(pack, tmp_path):
    loader = node(pack, "WanDualTransformerLoader")
    missing = tmp_path / "wan_high.safetensors"
    message = loader.VALIDATE_INPUTS("single-file", str(missing), str(missing), "", "bf16", 0.875)
    assert message is not True and f"{missing}: file not found" in message
    assert "pick both" in loader.VALIDATE_INPUTS("single-file", "none", "none", "", "bf16", 0.875)
    assert loader.VALIDATE_INPUTS("tiny-random", "none", "none", "", "bf16", 0.875) is True


def test_cache_config_defaults_are_the_sglang_run_and_presets_load(pack, tmp_path, monkeypatch):
    config = node(pack, "CacheDiTConfig")()
    widgets = {k: v for k, v in defaults(pack, "CacheDiTConfig").items() if k != "preset"}
    custom = config.build(defaults(pack, "CacheDiTConfig")["preset"], **widgets)[0]
    assert custom.cache == sub(pack, "accel.config").CacheSettings()
    assert config.build("sglang-fast", **widgets)[0].scm_mask == "fast"
    bad = tmp_path / "mine.yaml"
    bad.write_text("cache_config:\n  Fn_compute_blocks: 1\n  warmup_steps: 3\n")
    assert "unknown preset '/etc/passwd'" in node(pack, "CacheDiTConfig").VALIDATE_INPUTS("/etc/passwd")
    monkeypatch.setattr(sub(pack, "accel.presets"), "PRESET_DIR", tmp_path)
    message = node(pack, "CacheDiTConfig").VALIDATE_INPUTS("mine")
    assert f"{bad}, line 3: unknown key 'cache_config.warmup_steps'" in message


def test_scm_mask_node_shows_the_mask_and_counts(pack):
    out = node(pack, "SCMMask")().build(40, "fast", "static", "", "")
    assert out["result"][0].mask == tuple(int(b) for b in "1111111111001100000110000001100000100001")
    assert "18 compute / 22 cache of 40 steps, static" in out["ui"]["text"][0]
    message = node(pack, "SCMMask").VALIDATE_INPUTS(20, "custom bins", "dynamic", "6,1", "3")
    assert "cover 10 steps but the sampler runs 20" in message
    assert "comma-separated" in node(pack, "SCMMask").VALIDATE_INPUTS(20, "custom bins", "dynamic", "6;1", "3")


def test_sampler_layout_validation_messages(pack):
    sampler = node(pack, "UlyssesParallelSampler")
    assert sampler.VALIDATE_INPUTS("cpu:2", 0, False) is True
    assert "GPU [0, 1] not found" in sampler.VALIDATE_INPUTS("0,1", 0, False)
    assert "even number of ranks" in sampler.VALIDATE_INPUTS("cpu:3", 0, True)
    assert "do not fit" in sampler.VALIDATE_INPUTS("cpu:2", 4, False)
    parse = sub(pack, "nodes.sampler").parse_layout
    assert parse("auto", 0, True, gpu_count=4).ulysses == 2
    assert parse("1,3", 0, False, gpu_count=4).devices == (1, 3)


def test_sampler_runs_the_smoke_workflow_like_the_core(pack):
    from accel.sampler import Job, Runtime, run_job  # the same core imported by name

    inputs = sampler_inputs(pack)
    inputs["cache_config"] = node(pack, "CacheDiTConfig")().build("sglang-fast")[0]
    inputs["scm_mask"] = node(pack, "SCMMask")().build(12, "fast", "dynamic", "", "")["result"][0]
    latent, table = node(pack, "UlyssesParallelSampler")().sample(**inputs)
    assert latent["samples"].shape == (1, 16, 3, 8, 8) and "high/cond" in table
    job, _ = node(pack, "UlyssesParallelSampler").job_and_engine(
        **{k: v for k, v in inputs.items() if k not in ("gpus", "ulysses_degree", "cfg_parallel")})
    from accel.config import JobSettings

    reference = run_job(Runtime.load(inputs["model"].spec),
                        Job(job.cond, job.uncond, job.latent, JobSettings.from_dict(job.settings.to_dict())))
    assert torch.allclose(latent["samples"], reference.latent, atol=1e-6)


def test_sampler_refuses_bad_inputs_before_any_gpu_work(pack):
    registry = sub(pack, "accel.parallel.registry").REGISTRY
    node(pack, "UlyssesParallelSampler")().sample(**sampler_inputs(pack, steps=4))
    warm = registry.current
    errors = sub(pack, "accel.errors")
    sampler = node(pack, "UlyssesParallelSampler")()
    inputs = sampler_inputs(pack)
    inputs["cache_config"] = node(pack, "CacheDiTConfig")().build("sglang-fast")[0]
    inputs["scm_mask"] = node(pack, "SCMMask")().build(40, "fast", "dynamic", "", "")["result"][0]
    with pytest.raises(errors.UserInputError, match="SCM mask has 40 steps but the sampler runs 12"):
        sampler.sample(**inputs)
    with pytest.raises(errors.UserInputError, match="SCM mask needs caching"):
        sampler.sample(**{**inputs, "cache_config": None})
    with pytest.raises(errors.UserInputError, match="needs a CUDA GPU; this run is on the CPU"):
        sampler.sample(**{**sampler_inputs(pack), "quantization": node(pack, "FP8Quantize")().build(
            "float8_per_row", "embedder")[0]})
    with pytest.raises(errors.UserInputError, match="latent must be"):
        sampler.sample(**sampler_inputs(pack, latent={"samples": torch.zeros(1, 4, 8, 8)}))
    assert registry.current is warm and warm.alive  # nothing started, nothing torn down


def test_free_releases_the_worker_group(pack):
    registry = sub(pack, "accel.parallel.registry").REGISTRY
    node(pack, "UlyssesParallelSampler")().sample(**sampler_inputs(pack, steps=4))
    group = registry.current
    assert group is not None and group.alive
    calls = []

    class FakeModelManagement:
        @staticmethod
        def unload_all_models():
            calls.append("unloaded")

    sub(pack, "nodes.routes").release_on_unload(FakeModelManagement)
    FakeModelManagement.unload_all_models()
    assert calls == ["unloaded"] and registry.current is None and not group.alive


def test_trace_routes(pack, tmp_path):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    store = sub(pack, "nodes.traces").TraceStore(tmp_path)
    store.save("p-1", "7", {"steps": 2, "records": [], "summary": {"computed": 2}, "info": {}})
    released = []

    async def scenario():
        routes = web.RouteTableDef()
        sub(pack, "nodes.routes").add_routes(routes, store, lambda: released.append(1) or True)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            listing = await (await client.get("/cachedit/traces")).json()
            one = await client.get("/cachedit/traces/p-1")
            missing = await client.get("/cachedit/traces/nope")
            escape = await client.get("/cachedit/traces/..%2Fsecret")
            release = await (await client.post("/cachedit/release")).json()
            return listing, one.status, await one.json(), missing.status, escape.status, release

    listing, status, record, missing, escape, release = asyncio.run(scenario())
    assert listing[0]["prompt_id"] == "p-1" and listing[0]["summary"] == {"computed": 2}
    assert status == 200 and record["node_id"] == "7" and missing == 404 and escape == 404
    assert release == {"released": True} and released == [1]


def test_smoke_conditioning_has_the_model_width(pack):
    (conditioning,) = node(pack, "WanSmokeConditioning")().build(tiny_model(pack), 3, 16)
    assert conditioning[0][0].shape == (1, 16, 32) and conditioning[0][1]["smoke_test"]
