"""The nodes without ComfyUI: schemas, validation messages, the host-side hooks, and runs against the
tiny model. Without ComfyUI the nodes are built on nodes/api_standin.py (the same names as
``comfy_api.latest``); tests/integration runs them in a real ComfyUI server."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import sub

ROOT = Path(__file__).resolve().parents[1]
IDS = {"CacheDiT_WanDualTransformerLoader", "CacheDiT_Config", "CacheDiT_SCMMask", "CacheDiT_FP8Quantize",
       "CacheDiT_UlyssesParallelSampler", "CacheDiT_WanSmokeConditioning", "CacheDiT_WanDualLoraLoader",
       "CacheDiT_WanVAEDecode"}
NEWER_THAN_THE_PREFIX = {"CacheDiT_WanDualLoraLoader", "CacheDiT_WanVAEDecode"}  # they never had an old id
WORKFLOWS = ROOT / "examples" / "workflows"


def registered(pack) -> dict:
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def node(pack, node_id):
    return registered(pack)[f"CacheDiT_{node_id}"]


def run(pack, node_id, **inputs):
    """execute, as ComfyUI calls it (a classmethod with the inputs by name); returns the NodeOutput."""
    return node(pack, node_id).execute(**inputs)


def loader_args(source="single-file", high="none", low="none", diffusers="none", dtype="bf16",
                fp8_scaled="dequantize") -> dict:
    """The loader's inputs that its validate_inputs takes, by name (as ComfyUI passes them)."""
    return {"source": source, "high_noise_model": high, "low_noise_model": low, "diffusers_model": diffusers,
            "dtype": dtype, "fp8_scaled": fp8_scaled}


def tiny_model(pack, source="tiny-random", boundary=0.0):
    return run(pack, "WanDualTransformerLoader", **loader_args(source), boundary=boundary)[0]


def defaults(pack, node_id):
    return {i.id: i.default for i in node(pack, node_id).define_schema().inputs if i.default is not None}


LATENT = (1, 16, 3, 8, 8)


def sampler_inputs(pack, model=None, **overrides):
    """The sampler's inputs at their defaults on the tiny model, 12 steps on a CPU rank; an I2V model
    gets the smoke conditioning's start image (of the latent's size)."""
    model = tiny_model(pack) if model is None else model
    smoke = sub(pack, "nodes.smoke").smoke_conditioning
    latent = overrides.pop("latent", None) or {"samples": torch.zeros(LATENT)}
    inputs = {**defaults(pack, "UlyssesParallelSampler"), "model": model, "positive": smoke(model, 1, 16, latent),
              "negative": smoke(model, 2, 16, latent), "latent": latent, "steps": 12, "gpus": "cpu"}
    inputs.update(overrides)
    return inputs


def sampler_widgets(pack, **overrides):
    """The inputs the sampler's validate_inputs takes, at their defaults (gpus 'cpu'), by name."""
    sampler = node(pack, "UlyssesParallelSampler")
    names = [a for a in inspect.getfullargspec(sampler.validate_inputs).args if a != "cls"]
    values = {**defaults(pack, "UlyssesParallelSampler"), "gpus": "cpu", **overrides}
    return {name: values[name] for name in names}


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


def example_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def test_example_workflows_use_the_new_ids(pack):
    nodes = registered(pack)
    old = sub(pack, "nodes").OLD_NODE_IDS
    assert set(old.values()) == IDS - NEWER_THAN_THE_PREFIX
    for path in example_files():
        workflow = json.loads(path.read_text())
        if "nodes" in workflow:  # the UI format
            kinds = [n["type"] for n in workflow["nodes"]]
        else:  # the API format
            kinds = [n["class_type"] for n in workflow.values()]
        assert not set(kinds) & set(old), f"{path.name}: old node ids {set(kinds) & set(old)}"
        assert set(kinds) & set(nodes), f"{path.name} uses none of the pack's nodes"


# Entries of ComfyUI's model lists (empty outside ComfyUI): any name is a valid value in a file
LISTED = {"high_noise_model", "low_noise_model", "diffusers_model", "lora_name"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROLS = ("fixed", "increment", "decrement", "randomize")  # the value after a seed widget


def widget_inputs(schema) -> list:
    """The widgets in the order the frontend builds them (and the UI format stores their values):
    required inputs in schema order, then optional ones."""
    widgets = [i for i in schema.inputs if i.io_type in WIDGET_TYPES]
    return [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]


def widget_value_error(spec, value) -> str | None:
    """Why ``value`` cannot be the value of widget ``spec`` (None: it can)."""
    kind = spec.io_type
    if kind == "COMBO":
        if not isinstance(value, str):
            return f"{value!r} is not a choice"
        return None if spec.id in LISTED or value in spec.options else f"{value!r} not in {spec.options}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    number = int if kind == "INT" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        return f"{value!r} is not an {kind}"
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        return f"{value!r} is outside [{spec.min}, {spec.max}]"
    return None


def output_types(workflow_nodes: dict, nodes: dict) -> dict:
    """class type -> its output types, for the pack's nodes (ComfyUI's from the examples' builder)."""
    core = load_builder().CORE
    types = {}
    for kind in workflow_nodes:
        if kind in nodes:
            types[kind] = [o.io_type for o in nodes[kind].define_schema().outputs]
        elif kind in core:
            types[kind] = [t for _, t in core[kind]["outputs"]]
    return types


def load_builder():
    """examples/workflows/build_examples.py, which writes the examples (and describes ComfyUI's nodes in them)."""
    name = "cachedit_build_examples"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, WORKFLOWS / "build_examples.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_api_examples_validate_against_the_nodes_schemas(pack):
    nodes = registered(pack)
    files = [p for p in example_files() if p.name.endswith("_api.json")]
    assert len(files) >= 8
    for path in files:
        prompt = json.loads(path.read_text())
        kinds = output_types({n["class_type"] for n in prompt.values()}, nodes)
        for node_id, entry in prompt.items():
            kind, values = entry["class_type"], entry["inputs"]
            where = f"{path.name} node {node_id} ({kind})"
            for name, value in values.items():  # a link: [node id, output slot] of a node of this prompt
                if isinstance(value, list):
                    source, slot = value
                    assert source in prompt, f"{where}: {name} links to a missing node {source}"
                    source_kind = prompt[source]["class_type"]
                    assert source_kind in kinds and slot < len(kinds[source_kind]), f"{where}: {name} slot {slot}"
            if kind not in nodes:
                continue
            inputs = {i.id: i for i in nodes[kind].define_schema().inputs}
            assert set(values) <= set(inputs), f"{where}: unknown inputs {set(values) - set(inputs)}"
            missing = {name for name, i in inputs.items() if not i.optional} - set(values)
            assert not missing, f"{where}: required inputs missing: {missing}"
            for name, value in values.items():
                spec = inputs[name]
                if isinstance(value, list):  # a link: the source's output type must be the input's
                    source_kind = prompt[value[0]]["class_type"]
                    assert kinds[source_kind][value[1]] == spec.io_type, f"{where}: {name} gets {source_kind}"
                elif spec.io_type in WIDGET_TYPES:
                    problem = widget_value_error(spec, value)
                    assert problem is None, f"{where}: {name}: {problem}"
                else:
                    pytest.fail(f"{where}: {name} is a {spec.io_type} socket, given a constant {value!r}")


def test_ui_examples_store_the_widget_values_in_the_schemas_order(pack):
    nodes = registered(pack)
    files = [p for p in example_files() if p.name.endswith("_ui.json")]
    assert len(files) >= 8
    for path in files:
        workflow = json.loads(path.read_text())
        links = {link[0]: link for link in workflow["links"]}
        by_id = {n["id"]: n for n in workflow["nodes"]}
        for item in workflow["nodes"]:
            where = f"{path.name} node {item['id']} ({item['type']})"
            for slot, socket in enumerate(item["inputs"]):  # each link is the same at both of its ends
                if socket.get("link") is not None:
                    link_id, source, source_slot, target, target_slot, kind = links[socket["link"]]
                    assert (target, target_slot, kind) == (item["id"], slot, socket["type"]), where
                    assert link_id in by_id[source]["outputs"][source_slot]["links"], where
                    assert by_id[source]["outputs"][source_slot]["type"] == kind, where
            if item["type"] not in nodes:
                continue
            schema = nodes[item["type"]].define_schema()
            values = list(item["widgets_values"])
            for spec in widget_inputs(schema):
                assert values, f"{where}: no value for {spec.id} (too few widget values)"
                value = values.pop(0)
                assert widget_value_error(spec, value) is None, f"{where}: {spec.id}: {widget_value_error(spec, value)}"
                if getattr(spec, "control_after_generate", False):
                    assert values and values.pop(0) in CONTROLS, f"{where}: {spec.id} has no control value after it"
            assert not values, f"{where}: {len(values)} widget values too many"
            sockets = [(i.id, i.io_type) for i in schema.inputs if i.io_type not in WIDGET_TYPES]
            assert [(s["name"], s["type"]) for s in item["inputs"]] == sockets, where
            outputs = [(o.display_name, o.io_type) for o in schema.outputs]
            assert [(o["name"], o["type"]) for o in item["outputs"]] == outputs, where


def test_each_ui_example_is_its_api_example(pack):
    """The two formats of one workflow hold the same nodes, links and values."""
    builder = load_builder()
    nodes = registered(pack)
    pairs = [(p, p.with_name(p.name.replace("_api.json", "_ui.json"))) for p in example_files()
             if p.name.endswith("_api.json")]
    for api_path, ui_path in pairs:
        prompt, workflow = json.loads(api_path.read_text()), json.loads(ui_path.read_text())
        graph = {str(n["id"]): n for n in workflow["nodes"] if n["type"] != builder.NOTE}
        assert set(graph) == set(prompt), api_path.name
        links = {link[0]: link for link in workflow["links"]}
        for node_id, entry in prompt.items():
            item = graph[node_id]
            assert item["type"] == entry["class_type"]
            shape = builder.node_shape(item["type"], nodes)
            values = iter(item["widgets_values"])
            for name, control in shape["widgets"]:
                assert next(values) == entry["inputs"][name], (api_path.name, node_id, name)
                if control:
                    next(values)
            for socket in item["inputs"]:
                expected = entry["inputs"].get(socket["name"])
                actual = None if socket["link"] is None else [str(links[socket["link"]][1]), links[socket["link"]][2]]
                assert actual == expected, (api_path.name, node_id, socket["name"])


def test_the_committed_examples_are_what_the_builder_writes(pack):
    files = load_builder().build()
    stale = [name for name, text in files.items() if (WORKFLOWS / name).read_text(encoding="utf-8") != text]
    assert not stale, f"run `.venv/bin/python examples/workflows/build_examples.py`: {stale} differ"
    assert {p.name for p in example_files()} == set(files)
    readme = (WORKFLOWS / "README.md").read_text()
    unlisted = [n for n in files if n.endswith("_api.json") and f"`{n.removesuffix('_api.json')}_*`" not in readme]
    assert not unlisted, f"examples/workflows/README.md does not list {unlisted}"


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
    assert {"ulysses_degree", "sampler_name", "scheduler", "expert_switch"} <= ignored_checks(sampler)
    assert "above the maximum 64" in sampler.validate_inputs(**sampler_widgets(pack, ulysses_degree=65, scheduler=None))
    assert "not one of the choices" in sampler.validate_inputs(**sampler_widgets(pack, scheduler="dpm++"))
    assert "not one of the choices" in sampler.validate_inputs(**sampler_widgets(pack, sampler_name="uni_pc"))
    assert "not one of the choices" in sampler.validate_inputs(**sampler_widgets(pack, expert_switch="sigma"))
    assert "below the minimum 4" in mask.validate_inputs(2, "fast", "dynamic", "", "")
    assert "'wild' is not one of the choices" in mask.validate_inputs(20, "fast", "wild", "", "")
    assert "not one of the choices" in node(pack, "FP8Quantize").validate_inputs("float8")
    assert "cfg" not in ignored_checks(sampler) and "boundary" not in ignored_checks(node(pack, "WanDualTransformerLoader"))
    assert not {"shift", "switch_step", "steps"} & ignored_checks(sampler)  # ComfyUI keeps their range checks
    lora = node(pack, "WanDualLoraLoader")
    assert "lora_name" in ignored_checks(lora)  # v0.3.64 would not check the list: the node does
    assert not {"strength_high_noise", "strength_low_noise"} & ignored_checks(lora)


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
            message = loader.validate_inputs(**loader_args("single-file", high, low))
            assert message is not True and name not in message and "/etc" not in message
            with pytest.raises(sub(pack, "accel.errors").UserInputError) as error:
                loader.execute(**loader_args("single-file", high, low), boundary=0.875)
            assert str(error.value) == message
            messages.add(message.split(":", 1)[1])  # after the input's name
    assert len(messages) == 1  # whether /etc/hostname exists or not
    assert "not in ComfyUI's 'diffusion_models' list" in messages.pop()
    # a listed pair loads, resolved to the files under models/
    pair = loader_args("single-file", "wan_high.safetensors", "sub/wan_low.safetensors")
    assert loader.validate_inputs(**pair) is True
    handle = loader.execute(**pair, boundary=0.875)[0]
    assert handle.spec.high_path == str(comfy_lists["diffusion_models"] / "wan_high.safetensors")
    # a broken listed file is named by its list entry, not by the server's path
    (comfy_lists["diffusion_models"] / "broken.safetensors").write_bytes(b"\x01")
    message = loader.validate_inputs(**loader_args("single-file", "broken.safetensors", "wan_high.safetensors"))
    assert message.startswith("broken.safetensors: truncated") and str(comfy_lists["diffusion_models"]) not in message
    # the other sources still refuse unlisted names (they are the combos' values, whatever the source)
    assert "not in ComfyUI's" in loader.validate_inputs(**loader_args("tiny-random", "/etc/hostname"))
    assert "not in ComfyUI's" in loader.validate_inputs(**loader_args("tiny-random-i2v", "none", "/etc/hostname"))


def test_loader_offers_comfyuis_diffusers_directories_not_a_path(pack, comfy_lists):
    loader = node(pack, "WanDualTransformerLoader")
    root = comfy_lists["diffusers"]
    for part in ("transformer", "transformer_2"):
        (root / "Wan2.2-T2V-A14B-Diffusers" / part).mkdir(parents=True)
        (root / "org" / "Nested-Wan" / part).mkdir(parents=True)
    (root / "not-wan" / "transformer").mkdir(parents=True)  # one expert only: not offered
    for part in ("transformer", "transformer_2"):  # both experts' configs are read (a T2V/I2V mix is refused)
        config = {"text_dim": 32, "in_channels": 16}
        (root / "Wan2.2-T2V-A14B-Diffusers" / part / "config.json").write_text(json.dumps(config))
    inputs = {i.id: i for i in loader.define_schema().inputs}
    assert "diffusers_path" not in inputs and inputs["diffusers_model"].io_type == "COMBO"
    assert inputs["diffusers_model"].options == ["none", "Wan2.2-T2V-A14B-Diffusers", "org/Nested-Wan"]
    handle = loader.execute(**loader_args("diffusers", diffusers="Wan2.2-T2V-A14B-Diffusers"), boundary=0.875)[0]
    assert handle.spec.path == str(root / "Wan2.2-T2V-A14B-Diffusers")
    messages = {loader.validate_inputs(**loader_args("diffusers", diffusers=name))
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
    message = loader.validate_inputs(**loader_args("single-file", str(missing), str(missing)))
    assert message is not True and f"{missing}: file not found" in message
    assert "pick both" in loader.validate_inputs(**loader_args("single-file"))
    assert "pick a diffusers directory" in loader.validate_inputs(**loader_args("diffusers"))
    for source in ("tiny-random", "tiny-random-i2v"):
        assert loader.validate_inputs(**loader_args(source)) is True
    assert "compute in bf16" in loader.validate_inputs(**loader_args("single-file", str(missing), str(missing),
                                                                     dtype="fp16", fp8_scaled="as_stored"))
    # the fixed choices its validate_inputs names are checked by the node (a random source ignores them)
    assert "not one of the choices" in loader.validate_inputs(**loader_args("tiny-random", fp8_scaled="fp8"))
    assert "not one of the choices" in loader.validate_inputs(**loader_args("tiny-random", dtype="float8"))
    assert "not one of the choices" in loader.validate_inputs(**loader_args("huge-random"))
    with pytest.raises(sub(pack, "accel.errors").UserInputError, match="not one of the choices"):
        loader.execute(**loader_args("tiny-random", dtype="float8"), boundary=0.0)  # linked: not validated


# --- the LoRA node: entries of ComfyUI's loras list, chained on the model handle ------------------------

def tiny_lora(pack, path: Path, seed: int = 0) -> Path:
    """A random LoRA over every Linear of the tiny model, in ComfyUI's diffusion_model. layout."""
    from accel.model.lora import write_random_lora

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_random_lora(path, sub(pack, "accel.model.files").TINY_CONFIG, seed)


def lora_inputs(model, lora_name, high=1.0, low=1.0) -> dict:
    return {"model": model, "lora_name": lora_name, "strength_high_noise": high, "strength_low_noise": low}


def test_lora_node_chains_loras_onto_the_handle_in_order(pack, comfy_lists):
    lora = node(pack, "WanDualLoraLoader")
    first = tiny_lora(pack, comfy_lists["loras"] / "lightning_high.safetensors", seed=1)
    second = tiny_lora(pack, comfy_lists["loras"] / "styles" / "low.safetensors", seed=2)
    inputs = {i.id: i for i in lora.define_schema().inputs}
    assert inputs["lora_name"].options == ["lightning_high.safetensors", "styles/low.safetensors"]  # ComfyUI's list
    assert lora.validate_inputs(lora_name="styles/low.safetensors") is True
    model = tiny_model(pack, boundary=0.9)
    one = lora.execute(**lora_inputs(model, "lightning_high.safetensors", 1.0, 0.0))[0]
    two = lora.execute(**lora_inputs(one, "styles/low.safetensors", 0.0, 0.75))[0]
    spec = sub(pack, "accel.job.settings").LoraSpec
    assert two.loras == (spec(str(first), 1.0, 0.0), spec(str(second), 0.0, 0.75))  # in chain order, as files
    assert one.loras == (spec(str(first), 1.0, 0.0),) and model.loras == ()  # each node returns a new handle
    assert (two.spec, two.boundary) == (model.spec, model.boundary)
    job, _ = sub(pack, "nodes.sampler").job_and_engine(sampler_inputs(pack, model=two))
    assert job.settings.loras == two.loras  # the chain travels with the job to the workers


def test_lora_node_refuses_names_outside_the_list_and_pickles(pack, comfy_lists):
    lora, errors = node(pack, "WanDualLoraLoader"), sub(pack, "accel.errors")
    mine = tiny_lora(pack, comfy_lists["loras"] / "mine.safetensors")
    model = tiny_model(pack)
    messages = set()
    for name in (*UNLISTED, str(mine)):  # a server path is refused even where it is a listed file
        message = lora.validate_inputs(lora_name=name)
        assert message is not True and name not in message and "/etc" not in message
        with pytest.raises(errors.UserInputError) as error:
            lora.execute(**lora_inputs(model, name))
        assert str(error.value) == message
        messages.add(message)
    assert len(messages) == 1 and messages.pop().startswith("lora_name: not in ComfyUI's 'loras' list")
    # listed, but a pickle: refused before anything opens it, named by its list entry
    (comfy_lists["loras"] / "old_style.pt").write_bytes(b"\x80\x04K\x01.")
    message = lora.validate_inputs(lora_name="old_style.pt")
    assert message.startswith("lora_name: old_style.pt: only .safetensors LoRA files are loaded")
    assert str(comfy_lists["loras"]) not in message
    with pytest.raises(errors.UserInputError, match="only .safetensors"):
        lora.execute(**lora_inputs(model, "old_style.pt"))
    (comfy_lists["loras"] / "broken.safetensors").write_bytes(b"\x01")
    assert lora.validate_inputs(lora_name="broken.safetensors").startswith("lora_name: broken.safetensors: truncated")
    assert lora.validate_inputs(lora_name=None) is True  # linked: checked in execute


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

    def validate(gpus, ulysses_degree, cfg_parallel):
        return sampler.validate_inputs(**sampler_widgets(pack, gpus=gpus, ulysses_degree=ulysses_degree,
                                                         cfg_parallel=cfg_parallel))

    assert validate("cpu:2", 0, False) is True
    assert "GPU [0, 1] not found" in validate("0,1", 0, False)
    assert "even number of ranks" in validate("cpu:3", 0, True)
    assert "do not fit" in validate("cpu:2", 4, False)
    assert "gpus must be" in validate("cpu:x", 0, False)
    assert validate(None, 4, False) is True  # a linked gpus input: checked in execute
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


def sampler_settings_of(pack, **overrides):
    """The sampler settings the node gives the job (checked against the model, no worker started)."""
    job, _ = sub(pack, "nodes.sampler").job_and_engine(sampler_inputs(pack, **overrides))
    return job.settings.sampler


def test_switch_step_minus_one_is_half_the_steps_and_boundary_is_the_loaders_rule(pack):
    errors = sub(pack, "accel.errors")
    for steps, half in ((12, 6), (20, 10), (4, 2), (5, 2)):  # the templates split 10 of 20, 2 of 4
        sampler = sampler_settings_of(pack, steps=steps)  # switch_step's default: -1
        assert sampler.switch_step == half and sampler.experts() == ["high"] * half + ["low"] * (steps - half)
    assert sampler_settings_of(pack, switch_step=3).experts() == ["high"] * 3 + ["low"] * 9
    with pytest.raises(errors.UserInputError, match="switch_step must be in"):
        sampler_settings_of(pack, steps=4, switch_step=10)
    # 'boundary': Wan's rule with the loader's boundary (switch_step ignored)
    comfy_sigmas = sub(pack, "accel.sampling.comfy_sigmas").comfy_sigmas
    for boundary in (0.9, 0.95):
        rule = sampler_settings_of(pack, model=tiny_model(pack, boundary=boundary), expert_switch="boundary",
                                   switch_step=1)
        assert rule.switch_step is None and rule.boundary == boundary
        sigmas = comfy_sigmas("simple", 12, 8.0)[:-1]  # 12 steps, the auto shift of a T2V model
        assert rule.experts() == ["high" if sigma >= boundary else "low" for sigma in sigmas]
    assert sampler_settings_of(pack, expert_switch="boundary").boundary == 0.875  # the loader's 0: auto
    out = run(pack, "UlyssesParallelSampler", **sampler_inputs(pack, steps=4))
    assert "low-noise expert from step 2 (switch_step)" in out[1]  # the decision table says where it switched


def test_shift_and_boundary_auto_follow_the_models_kind(pack):
    for source, kind, shift, boundary in (("tiny-random", "t2v", 8.0, 0.875), ("tiny-random-i2v", "i2v", 5.0, 0.9)):
        model = tiny_model(pack, source)  # the loader's boundary 0: auto
        assert model.kind == kind and model.boundary is None
        sampler = sampler_settings_of(pack, model=model, shift=0.0, expert_switch="boundary")
        assert (sampler.shift, sampler.boundary) == (shift, boundary), source
        chosen = sampler_settings_of(pack, model=tiny_model(pack, source, boundary=0.5), shift=3.0,
                                     expert_switch="boundary")
        assert (chosen.shift, chosen.boundary) == (3.0, 0.5), source  # what is set is kept


def test_image_conditioning_mismatches_are_node_errors_before_any_worker_starts(pack):
    registry, errors = sub(pack, "accel.parallel.registry").REGISTRY, sub(pack, "accel.errors")
    smoke = sub(pack, "nodes.smoke").smoke_conditioning
    registry.release()
    assert registry.current is None
    t2v, i2v = tiny_model(pack), tiny_model(pack, "tiny-random-i2v")
    latent = {"samples": torch.zeros(LATENT)}
    text_only = sampler_inputs(pack, model=i2v, positive=smoke(t2v, 1, 16), negative=smoke(t2v, 2, 16))
    with pytest.raises(errors.UserInputError, match="this is an image-to-video model .* WanImageToVideo"):
        run(pack, "UlyssesParallelSampler", **text_only)
    with_image = sampler_inputs(pack, model=t2v, positive=smoke(i2v, 1, 16, latent), negative=smoke(i2v, 2, 16, latent),
                                latent=latent)
    with pytest.raises(errors.UserInputError, match="carries an image .* but this is a text-to-video model"):
        run(pack, "UlyssesParallelSampler", **with_image)
    longer = {"samples": torch.zeros(1, 16, 5, 8, 8)}  # WanImageToVideo set to another length than the latent
    mismatch = sampler_inputs(pack, model=i2v, positive=smoke(i2v, 1, 16, longer), negative=smoke(i2v, 2, 16, longer),
                              latent=latent)
    with pytest.raises(errors.UserInputError, match=r"concat_latent_image is \[1, 16, 5, 8, 8\]"):
        run(pack, "UlyssesParallelSampler", **mismatch)
    other = {**smoke(i2v, 2, 16, latent)[0][1], "concat_latent_image": torch.ones(1, 16, *LATENT[2:])}
    different = sampler_inputs(pack, model=i2v, positive=smoke(i2v, 1, 16, latent),
                               negative=[[smoke(i2v, 2, 16, latent)[0][0], other]], latent=latent)
    with pytest.raises(errors.UserInputError, match="positive and negative carry different start images"):
        run(pack, "UlyssesParallelSampler", **different)
    assert registry.current is None  # no worker group was started for any of them


def test_smoke_conditioning_gives_an_i2v_model_a_start_image_of_the_latents_size(pack):
    errors, sampler = sub(pack, "accel.errors"), sub(pack, "nodes.sampler")
    i2v = tiny_model(pack, "tiny-random-i2v")
    shape = (1, 16, 5, 6, 10)
    latent = {"samples": torch.zeros(shape)}
    (conditioning,) = run(pack, "WanSmokeConditioning", model=i2v, seed=3, tokens=16, latent=latent).args
    embeddings, extras = conditioning[0]
    assert embeddings.shape == (1, 16, 32) and extras["smoke_test"]
    assert extras["concat_latent_image"].shape == shape  # as WanImageToVideo puts it on the conditioning
    mask = extras["concat_mask"]
    assert mask.shape == (1, 1, *shape[2:]) and mask[:, :, 0].eq(0).all() and mask[:, :, 1:].eq(1).all()
    (other_seed,) = run(pack, "WanSmokeConditioning", model=i2v, seed=4, tokens=16, latent=latent).args
    # One image on both sides, as WanImageToVideo: the seed changes the embeddings only.
    assert torch.equal(other_seed[0][1]["concat_latent_image"], extras["concat_latent_image"])
    assert not torch.equal(other_seed[0][0], embeddings)
    assert sampler.image_of(conditioning, other_seed, shape, True).shape == (1, 20, *shape[2:])  # 4 mask + 16 image
    with pytest.raises(errors.UserInputError, match="needs the latent"):
        run(pack, "WanSmokeConditioning", model=i2v, seed=3, tokens=16)
    (text_only,) = run(pack, "WanSmokeConditioning", model=tiny_model(pack), seed=3, tokens=16, latent=latent).args
    assert "concat_latent_image" not in text_only[0][1]  # a T2V model gets none


def test_sampler_runs_the_i2v_smoke_workflow_like_the_core(pack):
    from accel.job.job import Job  # the same core imported by name
    from accel.job.settings import JobSettings
    from accel.sampling.loop import run_job
    from accel.sampling.runtime import Runtime

    inputs = sampler_inputs(pack, model=tiny_model(pack, "tiny-random-i2v"), steps=8)
    out = run(pack, "UlyssesParallelSampler", **inputs)
    latent, table = out[0], out[1]
    assert latent["samples"].shape == LATENT and "high/cond" in table and "from step 4 (switch_step)" in table
    job, _ = sub(pack, "nodes.sampler").job_and_engine(inputs)
    assert job.image.shape == (1, 20, *LATENT[2:]) and job.settings.sampler.shift == 5.0
    reference = run_job(Runtime.load(inputs["model"].spec),
                        Job(job.cond, job.uncond, job.latent, JobSettings.from_dict(job.settings.to_dict()),
                            image=job.image))
    assert torch.allclose(latent["samples"], reference.latent, atol=1e-6)


# --- the smoke examples, run through the nodes without ComfyUI ------------------------------------------

def readme_lora_command(target: Path) -> list[str]:
    """examples/workflows/README.md's command that writes the tiny LoRA, aimed at ``target`` (run from the pack's folder)."""
    block = (WORKFLOWS / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(block)
    assert argv[:4] == ["python", "-m", "accel", "make-smoke-lora"] and argv[-1].endswith("/cachedit_tiny_random_lora.safetensors")
    return [sys.executable, *argv[1:-1], str(target)]


def run_api_prompt(pack, prompt: dict) -> dict:
    """An API-format prompt through the nodes as ComfyUI runs it: validate_inputs with the constants
    (links arrive as None), then execute in link order; ComfyUI's EmptyHunyuanLatentVideo as it
    computes its latent, SaveLatent skipped."""
    nodes, results = registered(pack), {}

    def execute(node_id):
        if node_id in results:
            return
        entry = prompt[node_id]
        for value in entry["inputs"].values():
            if isinstance(value, list):
                execute(value[0])
        inputs = {k: results[v[0]][v[1]] if isinstance(v, list) else v for k, v in entry["inputs"].items()}
        kind = entry["class_type"]
        if kind == "EmptyHunyuanLatentVideo":
            frames = (inputs["length"] - 1) // 4 + 1
            results[node_id] = ({"samples": torch.zeros(inputs["batch_size"], 16, frames, inputs["height"] // 8,
                                                        inputs["width"] // 8)},)
        elif kind == "SaveLatent":
            results[node_id] = ()
        else:
            cls = nodes[kind]
            if "validate_inputs" in vars(cls):
                names = [a for a in inspect.getfullargspec(cls.validate_inputs).args if a != "cls"]
                constants = {a: None if isinstance(entry["inputs"].get(a), list) else entry["inputs"].get(a)
                             for a in names}
                assert cls.validate_inputs(**constants) is True, (node_id, kind)
            results[node_id] = tuple(cls.execute(**inputs).args)

    for node_id in prompt:
        execute(node_id)
    return results


def test_the_smoke_examples_run_through_the_nodes(pack, comfy_lists):
    lora_file = comfy_lists["loras"] / "cachedit_tiny_random_lora.safetensors"
    made = subprocess.run(readme_lora_command(lora_file), cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and lora_file.is_file(), made.stderr
    for name in ("smoke_api.json", "smoke_i2v_api.json", "smoke_lora_api.json"):
        prompt = json.loads((WORKFLOWS / name).read_text())
        results = run_api_prompt(pack, prompt)
        (sampler_id,) = [i for i, n in prompt.items() if n["class_type"] == "CacheDiT_UlyssesParallelSampler"]
        latent, table = results[sampler_id]
        assert latent["samples"].shape == (1, 16, 3, 8, 8) and "high/cond" in table, name
        model = results[prompt[sampler_id]["inputs"]["model"][0]][0]
        if name == "smoke_lora_api.json":
            spec = sub(pack, "accel.job.settings").LoraSpec
            assert model.loras == (spec(str(lora_file), 1.0, 0.5),)
        assert model.kind == ("i2v" if "i2v" in name else "t2v")


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
