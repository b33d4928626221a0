"""The nodes without ComfyUI: schemas, validation messages, the host-side hooks, and runs against the
tiny model. Without ComfyUI the nodes are built on nodes/api_standin.py (the same names as
``comfy_api.latest``); tests/integration runs them in a real ComfyUI server."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
IDS = {"CacheDiT_WanDualTransformerLoader", "CacheDiT_Config", "CacheDiT_SCMMask", "CacheDiT_FP8Quantize",
       "CacheDiT_UlyssesParallelSampler", "CacheDiT_WanSmokeConditioning", "CacheDiT_WanDualLoraLoader"}


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


def registered(pack) -> dict:
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def node(pack, node_id):
    return registered(pack)[f"CacheDiT_{node_id}"]


def sub(pack, module):
    return importlib.import_module(f"{pack.__name__}.{module}")


def run(pack, node_id, **inputs):
    """execute, as ComfyUI calls it (a classmethod with the inputs by name); returns the NodeOutput."""
    return node(pack, node_id).execute(**inputs)


def tiny_model(pack):
    return run(pack, "WanDualTransformerLoader", source="tiny-random", high_noise_model="none",
               low_noise_model="none", diffusers_model="none", dtype="bf16", boundary=0.875)[0]


def defaults(pack, node_id):
    return {i.id: i.default for i in node(pack, node_id).define_schema().inputs if i.default is not None}


def sampler_inputs(pack, **overrides):
    model = tiny_model(pack)
    smoke = sub(pack, "nodes.smoke").smoke_conditioning
    inputs = {**defaults(pack, "UlyssesParallelSampler"), "model": model, "positive": smoke(model, 1, 16),
              "negative": smoke(model, 2, 16), "latent": {"samples": torch.zeros(1, 16, 3, 8, 8)}, "steps": 12,
              "gpus": "cpu"}
    inputs.update(overrides)
    return inputs


def preset(pack, name="sglang-fast"):
    return run(pack, "Config", preset=name, **{k: v for k, v in defaults(pack, "Config").items() if k != "preset"})[0]


def scm(pack, steps, preset="fast", policy="dynamic"):
    return run(pack, "SCMMask", steps=steps, preset=preset, policy=policy, compute_bins="", cache_bins="")[0]


# --- registration, schemas, saved workflows ---------------------------------------------------------

def test_the_nodes_are_registered_through_the_extension_with_prefixed_ids(pack):
    nodes = registered(pack)
    assert set(nodes) == IDS
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would load the pack the V1 way and skip the entrypoint
    assert pack.WEB_DIRECTORY == "./web" and (ROOT / "web" / "panel.js").is_file()
    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        assert schema.category.startswith("cache-dit") and schema.description and schema.display_name
        assert schema.is_experimental == (node_id == "CacheDiT_WanSmokeConditioning")
        untipped = [i.id for i in schema.inputs if not i.tooltip]
        assert not untipped, f"{node_id}: inputs without a tooltip: {untipped}"
    assert nodes["CacheDiT_UlyssesParallelSampler"].define_schema().display_name == "Ulysses Parallel Sampler"
    assert registered(pack)["CacheDiT_UlyssesParallelSampler"].define_schema().inputs[0].io_type == "WAN_DUAL_MODEL"


def test_example_workflows_use_the_new_ids_and_the_nodes_inputs(pack):
    nodes = registered(pack)
    old = sub(pack, "nodes").OLD_NODE_IDS
    assert set(old.values()) == IDS
    for path in sorted((ROOT / "examples" / "workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        if "nodes" in workflow:  # the UI format: widget values by position
            items = [(n["type"], n.get("widgets_values")) for n in workflow["nodes"]]
        else:  # the API format: inputs by name
            items = [(n["class_type"], n["inputs"]) for n in workflow.values()]
        for kind, values in items:
            assert kind not in old, f"{path.name}: old node id {kind}"
            if kind not in nodes:
                continue
            schema = nodes[kind].define_schema()
            widgets = [i for i in schema.inputs if i.default is not None]
            if isinstance(values, dict):
                assert {i.id for i in schema.inputs if not i.optional} <= set(values), (path.name, kind)
                assert set(values) <= {i.id for i in schema.inputs}, (path.name, kind)
                for i in schema.inputs:  # the choices the pack fixes (not ComfyUI's model lists)
                    if i.options and i.id not in LISTED and not isinstance(values.get(i.id), list):
                        assert values[i.id] in i.options, (path.name, kind, i.id, values[i.id])
            else:  # a seed widget carries its control ("fixed") after it
                controls = sum(1 for i in widgets if getattr(i, "control_after_generate", False))
                assert len(values) == len(widgets) + controls, (path.name, kind)


LISTED = {"high_noise_model", "low_noise_model", "diffusers_model"}  # entries of ComfyUI's lists


def ignored_checks(cls) -> set[str]:
    """The inputs whose range and list checks ComfyUI leaves to the node: those its validate_inputs names
    (all of them for **kwargs)."""
    spec = inspect.getfullargspec(cls.validate_inputs)
    if spec.varkw is not None:
        return {i.id for i in cls.define_schema().inputs}
    return set(spec.args)


def test_validate_inputs_never_takes_kwargs_and_redoes_the_checks_it_switches_off(pack):
    for node_id, cls in registered(pack).items():
        if "validate_inputs" in vars(cls):
            assert inspect.getfullargspec(cls.validate_inputs).varkw is None, node_id
    sampler, mask = node(pack, "UlyssesParallelSampler"), node(pack, "SCMMask")
    assert {"ulysses_degree", "scheduler"} <= ignored_checks(sampler)
    assert "above the maximum 64" in sampler.validate_inputs("cpu", 65, False, None, "auto")
    assert "not one of the choices" in sampler.validate_inputs("cpu", 0, False, "dpm++", "auto")
    assert "below the minimum 4" in mask.validate_inputs(2, "fast", "dynamic", "", "")
    assert "'wild' is not one of the choices" in mask.validate_inputs(20, "fast", "wild", "", "")
    assert "not one of the choices" in node(pack, "FP8Quantize").validate_inputs("float8")
    assert "cfg" not in ignored_checks(sampler) and "boundary" not in ignored_checks(node(pack, "WanDualTransformerLoader"))


# --- defect 1: only names from ComfyUI's model lists --------------------------------------------------

def write_expert(path: Path) -> Path:
    """A tiny safetensors file with the keys the loader reads in the original Wan layout."""
    from safetensors.torch import save_file

    shapes = {"patch_embedding.weight": (24, 16, 1, 2, 2), "text_embedding.0.weight": (24, 32),
              "time_embedding.0.weight": (24, 256), "blocks.0.ffn.0.weight": (32, 24), "head.head.weight": (64, 24)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


@pytest.fixture
def comfy_lists(pack, tmp_path, monkeypatch):
    """ComfyUI's folder_paths, faked: models/<folder> under tmp_path, listed like ComfyUI lists them."""
    models = tmp_path / "models"
    folders = {"diffusion_models": models / "diffusion_models", "loras": models / "loras", "vae": models / "vae",
               "diffusers": models / "diffusers"}
    for folder in folders.values():
        folder.mkdir(parents=True)

    def get_filename_list(folder):
        root = folders[folder]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def get_full_path(folder, name):
        path = folders[folder] / name
        return str(path) if path.is_file() else None

    fake = SimpleNamespace(get_filename_list=get_filename_list, get_full_path=get_full_path,
                           get_folder_paths=lambda folder: [str(folders[folder])],
                           get_user_directory=lambda: str(tmp_path / "user"))
    monkeypatch.setattr(sub(pack, "nodes.comfy"), "folder_paths", fake)
    return folders


UNLISTED = ("/etc/hostname", "../../etc/passwd", "no_such_model.safetensors")


def test_loader_refuses_any_name_outside_the_list_with_one_text(pack, comfy_lists):
    loader = node(pack, "WanDualTransformerLoader")
    write_expert(comfy_lists["diffusion_models"] / "wan_high.safetensors")
    write_expert(comfy_lists["diffusion_models"] / "sub" / "wan_low.safetensors")
    messages = set()
    for name in UNLISTED:
        for high, low in ((name, "sub/wan_low.safetensors"), ("wan_high.safetensors", name)):
            message = loader.validate_inputs("single-file", high, low, "none", "bf16")
            assert message is not True and name not in message and "/etc" not in message
            with pytest.raises(sub(pack, "accel.errors").UserInputError) as error:
                loader.execute("single-file", high, low, "none", "bf16", 0.875)
            assert str(error.value) == message
            messages.add(message.split(":", 1)[1])  # after the input's name
    assert len(messages) == 1  # whether /etc/hostname exists or not
    assert "not in ComfyUI's 'diffusion_models' list" in messages.pop()
    # a listed pair loads, resolved to the files under models/
    assert loader.validate_inputs("single-file", "wan_high.safetensors", "sub/wan_low.safetensors", "none", "bf16") is True
    handle = loader.execute("single-file", "wan_high.safetensors", "sub/wan_low.safetensors", "none", "bf16", 0.875)[0]
    assert handle.spec.high_path == str(comfy_lists["diffusion_models"] / "wan_high.safetensors")
    # a broken listed file is named by its list entry, not by the server's path
    (comfy_lists["diffusion_models"] / "broken.safetensors").write_bytes(b"\x01")
    message = loader.validate_inputs("single-file", "broken.safetensors", "wan_high.safetensors", "none", "bf16")
    assert message.startswith("broken.safetensors: truncated") and str(comfy_lists["diffusion_models"]) not in message
    # the other sources still refuse unlisted names (they are the combos' values, whatever the source)
    assert "not in ComfyUI's" in loader.validate_inputs("tiny-random", "/etc/hostname", "none", "none", "bf16")


def test_loader_offers_comfyuis_diffusers_directories_not_a_path(pack, comfy_lists):
    loader = node(pack, "WanDualTransformerLoader")
    root = comfy_lists["diffusers"]
    for part in ("transformer", "transformer_2"):
        (root / "Wan2.2-T2V-A14B-Diffusers" / part).mkdir(parents=True)
        (root / "org" / "Nested-Wan" / part).mkdir(parents=True)
    (root / "not-wan" / "transformer").mkdir(parents=True)  # one expert only: not offered
    (root / "Wan2.2-T2V-A14B-Diffusers" / "transformer" / "config.json").write_text(json.dumps({"text_dim": 32}))
    inputs = {i.id: i for i in loader.define_schema().inputs}
    assert "diffusers_path" not in inputs and inputs["diffusers_model"].io_type == "COMBO"
    assert inputs["diffusers_model"].options == ["none", "Wan2.2-T2V-A14B-Diffusers", "org/Nested-Wan"]
    handle = loader.execute("diffusers", "none", "none", "Wan2.2-T2V-A14B-Diffusers", "bf16", 0.875)[0]
    assert handle.spec.path == str(root / "Wan2.2-T2V-A14B-Diffusers")
    messages = {loader.validate_inputs("diffusers", "none", "none", name, "bf16")
                for name in (*UNLISTED, "not-wan", "/tmp", str(root / "Wan2.2-T2V-A14B-Diffusers"))}
    assert len(messages) == 1 and "diffusers_model: not in ComfyUI's 'diffusers' list" in messages.pop()


def test_the_same_rule_for_lora_and_vae_files(pack, comfy_lists):
    comfy, errors = sub(pack, "nodes.comfy"), sub(pack, "accel.errors")
    for folder in ("loras", "vae"):
        (comfy_lists[folder] / "mine.safetensors").write_bytes(b"x")
        assert comfy.model_file_path(folder, "mine.safetensors") == str(comfy_lists[folder] / "mine.safetensors")
        texts = set()
        for name in UNLISTED:
            with pytest.raises(errors.UserInputError) as error:
                comfy.model_file_path(folder, name)
            texts.add(str(error.value))
        assert len(texts) == 1 and f"'{folder}' list" in texts.pop()


def test_outside_comfyui_the_loader_takes_paths_and_names_the_missing_file(pack, tmp_path):
    loader = node(pack, "WanDualTransformerLoader")
    missing = tmp_path / "wan_high.safetensors"
    message = loader.validate_inputs("single-file", str(missing), str(missing), "none", "bf16")
    assert message is not True and f"{missing}: file not found" in message
    assert "pick both" in loader.validate_inputs("single-file", "none", "none", "none", "bf16")
    assert "pick a diffusers directory" in loader.validate_inputs("diffusers", "none", "none", "none", "bf16")
    assert loader.validate_inputs("tiny-random", "none", "none", "none", "bf16") is True


# --- the other nodes ------------------------------------------------------------------------------------

def test_cache_config_defaults_are_the_sglang_run_and_presets_load(pack, tmp_path, monkeypatch):
    config = node(pack, "Config")
    custom = run(pack, "Config", **defaults(pack, "Config"))[0]
    assert custom.cache == sub(pack, "accel.job.settings").CacheSettings()
    assert preset(pack).scm_mask == "fast"
    assert config.validate_inputs("sglang-fast") is True
    assert "'/etc/passwd' is not one of the choices" in config.validate_inputs("/etc/passwd")
    bad = tmp_path / "mine.yaml"
    bad.write_text("cache_config:\n  Fn_compute_blocks: 1\n  warmup_steps: 3\n")
    monkeypatch.setattr(sub(pack, "accel.job.presets"), "PRESET_DIR", tmp_path)
    assert f"{bad}, line 3: unknown key 'cache_config.warmup_steps'" in config.validate_inputs("mine")
    with pytest.raises(sub(pack, "accel.errors").UserInputError, match="is not one of the choices"):
        run(pack, "Config", **{**defaults(pack, "Config"), "preset": str(bad)})  # linked: not validated before


def test_scm_mask_node_shows_the_mask_and_counts(pack):
    out = run(pack, "SCMMask", steps=40, preset="fast", policy="static", compute_bins="", cache_bins="")
    assert out[0].mask == tuple(int(b) for b in "1111111111001100000110000001100000100001")
    text = out.ui.as_dict()["text"][0]  # ui.PreviewText: shown on the node by the panel
    assert "18 compute / 22 cache of 40 steps, static" in text and out[1] == text
    mask = node(pack, "SCMMask")
    assert "cover 10 steps but the sampler runs 20" in mask.validate_inputs(20, "custom bins", "dynamic", "6,1", "3")
    assert "comma-separated" in mask.validate_inputs(20, "custom bins", "dynamic", "6;1", "3")
    assert mask.validate_inputs(None, "fast", "dynamic", "", "") is True  # a linked steps input: checked in execute


def test_sampler_layout_validation_messages(pack):
    sampler = node(pack, "UlyssesParallelSampler")
    scheduler = defaults(pack, "UlyssesParallelSampler")["scheduler"]
    assert sampler.validate_inputs("cpu:2", 0, False, scheduler, "auto") is True
    assert "GPU [0, 1] not found" in sampler.validate_inputs("0,1", 0, False, scheduler, "auto")
    assert "even number of ranks" in sampler.validate_inputs("cpu:3", 0, True, scheduler, "auto")
    assert "do not fit" in sampler.validate_inputs("cpu:2", 4, False, scheduler, "auto")
    assert "gpus must be" in sampler.validate_inputs("cpu:x", 0, False, scheduler, "auto")
    parse = sub(pack, "nodes.sampler").parse_layout
    assert parse("auto", 0, True, gpu_count=4).ulysses == 2
    assert parse("1,3", 0, False, gpu_count=4).devices == (1, 3)
    layout_of = sub(pack, "nodes.sampler").layout_of
    two = SimpleNamespace(ulysses_size=2)  # a preset's parallelism_config.ulysses_size, used where the degree is 0
    assert layout_of({"gpus": "cpu:2", "ulysses_degree": 0, "cfg_parallel": False, "cache_config": two}).ulysses == 2
    with pytest.raises(sub(pack, "accel.errors").UserInputError, match="do not fit"):
        layout_of({"gpus": "cpu:4", "ulysses_degree": 0, "cfg_parallel": False, "cache_config": two})


def test_sampler_runs_the_smoke_workflow_like_the_core(pack):
    from accel.job.job import Job  # the same core imported by name
    from accel.job.settings import JobSettings
    from accel.sampling.loop import run_job
    from accel.sampling.runtime import Runtime

    inputs = sampler_inputs(pack, cache_config=preset(pack), scm_mask=scm(pack, 12))
    out = run(pack, "UlyssesParallelSampler", **inputs)
    latent, table = out[0], out[1]
    assert latent["samples"].shape == (1, 16, 3, 8, 8) and "high/cond" in table
    assert out.ui.as_dict() == {"text": (table,)}  # the decision table as the node's ui.PreviewText
    job, _ = sub(pack, "nodes.sampler").job_and_engine(inputs)
    reference = run_job(Runtime.load(inputs["model"].spec),
                        Job(job.cond, job.uncond, job.latent, JobSettings.from_dict(job.settings.to_dict())))
    assert torch.allclose(latent["samples"], reference.latent, atol=1e-6)


def test_sampler_refuses_bad_inputs_before_any_gpu_work(pack):
    registry = sub(pack, "accel.parallel.registry").REGISTRY
    run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, steps=4))
    warm = registry.current
    errors = sub(pack, "accel.errors")
    inputs = sampler_inputs(pack, cache_config=preset(pack), scm_mask=scm(pack, 40))
    with pytest.raises(errors.UserInputError, match="SCM mask has 40 steps but the sampler runs 12"):
        run(pack, "UlyssesParallelSampler", **inputs)
    with pytest.raises(errors.UserInputError, match="SCM mask needs caching"):
        run(pack, "UlyssesParallelSampler", **{**inputs, "cache_config": None})
    quantization = run(pack, "FP8Quantize", quant_type="float8_per_row", exclude_layers="embedder")[0]
    with pytest.raises(errors.UserInputError, match="needs a CUDA GPU; this run is on the CPU"):
        run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, quantization=quantization))
    with pytest.raises(errors.UserInputError, match="latent must be"):
        run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, latent={"samples": torch.zeros(1, 4, 8, 8)}))
    assert registry.current is warm and warm.alive  # nothing started, nothing torn down


def test_smoke_conditioning_has_the_model_width(pack):
    (conditioning,) = run(pack, "WanSmokeConditioning", model=tiny_model(pack), seed=3, tokens=16).args
    assert conditioning[0][0].shape == (1, 16, 32) and conditioning[0][1]["smoke_test"]


# --- defect 4: the workers are released on an explicit /free only ---------------------------------------

class FakeQueue:
    """ComfyUI's PromptQueue as /free and the prompt worker use it: set_flag from POST /free,
    get_flags() from the worker loop after each prompt and whenever a flag wakes it."""

    def __init__(self):
        self.flags = {}

    def set_flag(self, name, data):
        self.flags[name] = data

    def get_flags(self, reset=True):
        flags = self.flags
        if reset:
            self.flags = {}
        return flags if reset else dict(flags)


class FakeServer:
    def __init__(self, client_id=None):
        from aiohttp import web

        self.routes = web.RouteTableDef()
        self.prompt_queue = FakeQueue()
        self.client_id, self.last_prompt_id, self.last_node_id = client_id, "prompt-1", "7"
        self.sent = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))


def test_free_flags_release_the_workers_other_unloads_do_not(pack):
    releases = []
    queue = FakeQueue()
    sub(pack, "nodes.routes").release_on_free(queue, lambda: releases.append(1) or True)
    sub(pack, "nodes.routes").release_on_free(queue, lambda: releases.append(2) or True)  # loaded twice: one hook
    assert queue.get_flags() == {} and not releases  # the worker loop after every prompt
    queue.set_flag("unload_models", True)  # POST /free {"unload_models": true}
    assert queue.get_flags() == {"unload_models": True} and releases == [1]
    queue.set_flag("free_memory", True)  # POST /free {"free_memory": true}: ComfyUI unloads too
    queue.get_flags()
    assert releases == [1, 1]
    queue.set_flag("unload_models", False)
    queue.set_flag("free_memory", True)  # ComfyUI resets its cache but unloads nothing: neither does the pack
    queue.get_flags()
    queue.set_flag("unload_models", True)
    queue.get_flags(reset=False)  # a look at the flags is not the worker acting on them
    assert releases == [1, 1]


def test_free_releases_the_worker_group_an_oom_unload_does_not(pack):
    registry = sub(pack, "accel.parallel.registry").REGISTRY
    server = FakeServer()
    calls = []
    model_management = SimpleNamespace(unload_all_models=lambda: calls.append("unloaded"))
    sub(pack, "nodes.routes").register(server)
    run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, steps=4))
    group = registry.current
    assert group is not None and group.alive
    # ComfyUI calls unload_all_models after an out-of-memory error and after every prompt under
    # --disable-smart-memory: the warm group stays
    model_management.unload_all_models()
    server.prompt_queue.get_flags()
    assert calls == ["unloaded"] and registry.current is group and group.alive
    server.prompt_queue.set_flag("unload_models", True)  # POST /free
    server.prompt_queue.get_flags()  # the prompt worker acts on it
    assert registry.current is None and not group.alive


# --- defect 5: events only to the client that queued the prompt ----------------------------------------

def test_step_and_done_events_go_to_the_client_that_queued_the_prompt(pack, monkeypatch, tmp_path):
    comfy = sub(pack, "nodes.comfy")
    server = FakeServer(client_id="tab-of-the-user")
    monkeypatch.setattr(comfy, "PromptServer", SimpleNamespace(instance=server))
    monkeypatch.setattr(sub(pack, "nodes.sampler"), "STORE", sub(pack, "nodes.traces").TraceStore(tmp_path))
    run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, steps=4))
    events = [(event, sid) for event, _, sid in server.sent]
    assert [e for e, _ in events] == ["cachedit.step"] * 4 + ["cachedit.done"]
    assert {sid for _, sid in events} == {"tab-of-the-user"}  # never None: that would reach every browser
    assert all(data["prompt_id"] == "prompt-1" for _, data, _ in server.sent)
    assert sub(pack, "nodes.traces").TraceStore(tmp_path).get("prompt-1")["node_id"] == "7"
    server.sent.clear()
    server.client_id = None  # an API prompt without a client id: nobody asked for live events
    run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, steps=4, seed=1))
    assert server.sent == []


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
