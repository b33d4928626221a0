"""Writes the example workflows of this folder, in both of ComfyUI's formats, from one description each.

    cd <the pack> && .venv/bin/python examples/workflows/build_examples.py

The pack's widget order is read from the nodes' schemas (``define_schema``), so the UI-format files
load with each value in its widget after an input is added; ComfyUI's own nodes are described in
``CORE`` below (tests/integration/test_comfyui.py checks that table against a real server's
/object_info). tests/test_nodes.py fails when a committed file differs from what this script writes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# ComfyUI's own nodes used here (v0.3.64): sockets (name, type, optional), widgets in the frontend's
# order (required, then optional), outputs (name, type). LoadImage's image widget is followed by its
# upload button, which the UI format stores as one more value ("image").
CORE: dict[str, dict[str, Any]] = {
    "CLIPLoader": {"sockets": [], "widgets": ["clip_name", "type", "device"], "outputs": [("CLIP", "CLIP")]},
    "CLIPTextEncode": {"sockets": [("clip", "CLIP", False)], "widgets": ["text"],
                       "outputs": [("CONDITIONING", "CONDITIONING")]},
    "EmptyHunyuanLatentVideo": {"sockets": [], "widgets": ["width", "height", "length", "batch_size"],
                                "outputs": [("LATENT", "LATENT")]},
    "VAELoader": {"sockets": [], "widgets": ["vae_name"], "outputs": [("VAE", "VAE")]},
    "VAEDecode": {"sockets": [("samples", "LATENT", False), ("vae", "VAE", False)], "widgets": [],
                  "outputs": [("IMAGE", "IMAGE")]},
    "CreateVideo": {"sockets": [("images", "IMAGE", False), ("audio", "AUDIO", True)], "widgets": ["fps"],
                    "outputs": [("VIDEO", "VIDEO")]},
    "SaveVideo": {"sockets": [("video", "VIDEO", False)], "widgets": ["filename_prefix", "format", "codec"],
                  "outputs": []},
    "SaveLatent": {"sockets": [("samples", "LATENT", False)], "widgets": ["filename_prefix"], "outputs": []},
    "LoadImage": {"sockets": [], "widgets": ["image"], "upload": "image",
                  "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "WanImageToVideo": {
        "sockets": [("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False), ("vae", "VAE", False),
                    ("clip_vision_output", "CLIP_VISION_OUTPUT", True), ("start_image", "IMAGE", True)],
        "widgets": ["width", "height", "length", "batch_size"],
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
    },
}
NOTE = "MarkdownNote"  # the frontend's note: UI format only (not a node of the server)


def load_pack():
    """The pack imported by path, as ComfyUI does (without ComfyUI: the node API stand-in)."""
    name = str(ROOT)
    if name not in sys.modules:
        sys.path.insert(0, name)
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[name])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pack_nodes() -> dict[str, type]:
    extension = asyncio.run(load_pack().comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def widget_inputs(schema) -> list:
    """The schema's widget inputs in the frontend's order: required ones, then optional ones."""
    widgets = [i for i in schema.inputs if i.io_type in WIDGET_TYPES]
    return [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]


def node_shape(class_type: str, nodes: dict[str, type]) -> dict[str, Any]:
    """Sockets, widgets (name, has a control value after it) and outputs of a node."""
    if class_type in nodes:
        schema = nodes[class_type].define_schema()
        return {
            "sockets": [(i.id, i.io_type, i.optional) for i in schema.inputs if i.io_type not in WIDGET_TYPES],
            "widgets": [(i.id, bool(getattr(i, "control_after_generate", False))) for i in widget_inputs(schema)],
            "defaults": {i.id: i.default for i in widget_inputs(schema) if i.default is not None},
            "outputs": [(o.display_name, o.io_type) for o in schema.outputs],
            "upload": None,
        }
    core = CORE[class_type]
    return {"sockets": core["sockets"], "widgets": [(w, False) for w in core["widgets"]], "defaults": {},
                "outputs": core["outputs"], "upload": core.get("upload")}


def widget_values(workflow: Workflow, node: Node, shape: dict[str, Any]) -> dict[str, Any]:
    """Every widget's value: as given, else the schema's default (a pack node's input added later)."""
    names = [w for w, _ in shape["widgets"]]
    unknown = set(node.values) - set(names)
    assert not unknown, (workflow.name, node.type, unknown)
    values = {w: node.values.get(w, shape["defaults"].get(w)) for w in names}
    missing = [w for w, v in values.items() if v is None]
    assert not missing, (workflow.name, node.type, missing)
    return values


@dataclass
class Node:
    id: int
    type: str
    values: dict[str, Any] = field(default_factory=dict)  # widget values by input name
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # socket -> (node id, output slot)
    title: str | None = None


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    notes: list[str] = field(default_factory=list)  # MarkdownNote texts (UI format only)


def api_format(workflow: Workflow, nodes: dict[str, type]) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for node in workflow.nodes:
        shape = node_shape(node.type, nodes)
        inputs = widget_values(workflow, node, shape)
        for socket, _, optional in shape["sockets"]:
            if socket in node.links:
                source, slot = node.links[socket]
                inputs[socket] = [str(source), slot]
            else:
                assert optional, (workflow.name, node.type, socket)
        entry: dict[str, Any] = {"class_type": node.type, "inputs": inputs}
        if node.title:
            entry["_meta"] = {"title": node.title}
        prompt[str(node.id)] = entry
    return prompt


def _depths(workflow: Workflow) -> dict[int, int]:
    depth: dict[int, int] = {}

    def of(node: Node) -> int:
        if node.id not in depth:
            by_id = {n.id: n for n in workflow.nodes}
            depth[node.id] = 1 + max((of(by_id[s]) for s, _ in node.links.values()), default=-1)
        return depth[node.id]

    for node in workflow.nodes:
        of(node)
    return depth


def _size(node: Node, shape: dict[str, Any]) -> list[float]:
    if node.type == "CLIPTextEncode":
        return [400, 200]
    if node.type == "LoadImage":
        return [315, 314]
    rows = max(len(shape["sockets"]), len(shape["outputs"])) + len(shape["widgets"])
    return [320 if node.type.startswith("CacheDiT_") else 270, 30 + 24 * rows]


def ui_format(workflow: Workflow, nodes: dict[str, type]) -> dict[str, Any]:
    depth = _depths(workflow)
    order = sorted(workflow.nodes, key=lambda n: (depth[n.id], n.id))
    links: list[list[Any]] = []
    outputs_links: dict[tuple[int, int], list[int]] = {}
    entries: dict[int, dict[str, Any]] = {}
    column_y: dict[int, float] = {}
    for index, node in enumerate(order):
        shape = node_shape(node.type, nodes)
        size = _size(node, shape)
        column = depth[node.id] + 1  # column 0 holds the notes
        y = column_y.get(column, 90.0)
        column_y[column] = y + size[1] + 60
        inputs = []
        for slot, (socket, kind, optional) in enumerate(shape["sockets"]):
            link = None
            if socket in node.links:
                source, source_slot = node.links[socket]
                link = len(links) + 1
                links.append([link, source, source_slot, node.id, slot, kind])
                outputs_links.setdefault((source, source_slot), []).append(link)
            entry = {"name": socket, "type": kind, "link": link}
            if optional:
                entry = {"name": socket, "shape": 7, "type": kind, "link": link}
            inputs.append(entry)
        given = widget_values(workflow, node, shape)
        values: list[Any] = []
        for name, control in shape["widgets"]:
            values.append(given[name])
            if control:
                values.append("fixed")
        if shape["upload"]:
            values.append(shape["upload"])
        entries[node.id] = {
            "id": node.id, "type": node.type, "pos": [60 + 400 * column, y], "size": size, "flags": {},
            "order": index, "mode": 0, "inputs": inputs, "outputs": shape["outputs"],
            **({"title": node.title} if node.title else {}),
            "properties": {"Node name for S&R": node.type}, "widgets_values": values,
        }
    for entry in entries.values():
        entry["outputs"] = [{"name": name, "type": kind, "links": outputs_links.get((entry["id"], slot))}
                            for slot, (name, kind) in enumerate(entry["outputs"])]
    ui_nodes = [entries[n.id] for n in order]
    next_id = max(n.id for n in workflow.nodes) + 1
    note_y = 90.0
    for offset, text in enumerate(workflow.notes):
        height = 60 + 22 * (text.count("\n") + 1)
        ui_nodes.append({"id": next_id + offset, "type": NOTE, "pos": [60, note_y], "size": [380, height],
                         "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "title": "Note", "properties": {}, "widgets_values": [text]})
        note_y += height + 40
    return {
        "id": "00000000-0000-0000-0000-000000000000", "revision": 0,
        "last_node_id": max(n["id"] for n in ui_nodes), "last_link_id": len(links),
        "nodes": ui_nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}, "frontendVersion": "1.27.10"}, "version": 0.4,
    }


# --- the examples -----------------------------------------------------------------------------------

NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
            "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
            "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")  # Wan's own default negative prompt
T2V_PROMPT = "A red fox trots through fresh snow in a birch forest at golden hour, cinematic, shallow depth of field"
I2V_PROMPT = ("The scene comes to life: the subject turns slowly towards the camera, hair and clothes moving in a "
              "light breeze, the camera pushes in gently, soft natural light, cinematic")
CLIP = {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"}
VAE = {"vae_name": "wan_2.1_vae.safetensors"}
NO_FILES = {"high_noise_model": "none", "low_noise_model": "none", "diffusers_model": "none"}
NO_CACHE_ENGINE = {"gpus": "auto", "ulysses_degree": 0, "cfg_parallel": False, "compile": False,
                   "attention_backend": "auto"}


def loader(node_id: int, kind: str, fp8_scaled: str = "as_stored") -> Node:
    return Node(node_id, "CacheDiT_WanDualTransformerLoader", {
        "source": "single-file", "high_noise_model": f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors",
        "low_noise_model": f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors", "diffusers_model": "none",
        "dtype": "bf16", "fp8_scaled": fp8_scaled, "boundary": 0.0})


def sampler(node_id: int, links: dict, *, steps: int, cfg: float, shift: float, switch: int, **more) -> Node:
    values = {"seed": 0, "steps": steps, "cfg": cfg, "cfg_low_noise": cfg, "shift": shift, "sampler_name": "euler",
              "scheduler": "simple", "expert_switch": "step", "switch_step": switch, **NO_CACHE_ENGINE, **more}
    return Node(node_id, "CacheDiT_UlyssesParallelSampler", values, links)


def decode_and_save(first_id: int, latent_from: int, vae_from: int, prefix: str) -> list[Node]:
    return [
        Node(first_id, "VAEDecode", {}, {"samples": (latent_from, 0), "vae": (vae_from, 0)}),
        Node(first_id + 1, "CreateVideo", {"fps": 16.0}, {"images": (first_id, 0)}),
        Node(first_id + 2, "SaveVideo", {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
             {"video": (first_id + 1, 0)}),
    ]


def lightning_loras(first_id: int, model_from: int, kind: str, version: str) -> list[Node]:
    """The Lightning LoRA pair, one file per expert (the other strength 0): LoraLoaderModelOnly x2."""
    stem = f"wan2.2_{kind}_lightx2v_4steps_lora_{version}"
    return [
        Node(first_id, "CacheDiT_WanDualLoraLoader", {"lora_name": f"{stem}_high_noise.safetensors",
                                                      "strength_high_noise": 1.0, "strength_low_noise": 0.0},
             {"model": (model_from, 0)}, title="Lightning LoRA: high-noise expert"),
        Node(first_id + 1, "CacheDiT_WanDualLoraLoader", {"lora_name": f"{stem}_low_noise.safetensors",
                                                          "strength_high_noise": 0.0, "strength_low_noise": 1.0},
             {"model": (first_id, 0)}, title="Lightning LoRA: low-noise expert"),
    ]


def template_note(kind: str, lightning: bool, lora_version: str, shift: int, title: str, extra: str = "") -> str:
    """The note of a template workflow: its path's settings and the files it needs."""
    files = (f"models/diffusion_models: wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors, "
             f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors")
    if lightning:
        files += (f"\nmodels/loras: wan2.2_{kind}_lightx2v_4steps_lora_{lora_version}_high_noise.safetensors, "
                  f"wan2.2_{kind}_lightx2v_4steps_lora_{lora_version}_low_noise.safetensors")
    path = "Lightning: 4 steps split 2/2, cfg 1, shift 5" if lightning else f"20 steps split 10/10, cfg 3.5, shift {shift}"
    return (f"**Wan2.2 14B {title}, the official template's {'Lightning' if lightning else '20-step'} path "
            f"on the pack's nodes** ({path}; euler / simple; 640x640x81{extra}).\n\n{files}\nmodels/text_encoders: "
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors\nmodels/vae: wan_2.1_vae.safetensors\n\nSee "
            "examples/workflows/README.md for how the template's nodes map onto these.")


def t2v_template(lightning: bool) -> Workflow:
    model = 10 if lightning else 1  # the sampler's model: the last LoRA node, else the loader
    nodes = [
        loader(1, "t2v"),
        Node(2, "CLIPLoader", CLIP),
        Node(3, "CLIPTextEncode", {"text": T2V_PROMPT}, {"clip": (2, 0)}, title="CLIP Text Encode (Positive Prompt)"),
        Node(4, "CLIPTextEncode", {"text": NEGATIVE}, {"clip": (2, 0)}, title="CLIP Text Encode (Negative Prompt)"),
        Node(5, "EmptyHunyuanLatentVideo", {"width": 640, "height": 640, "length": 81, "batch_size": 1}),
        sampler(6, {"model": (model, 0), "positive": (3, 0), "negative": (4, 0), "latent": (5, 0)},
                **({"steps": 4, "cfg": 1.0, "shift": 5.0, "switch": 2} if lightning else
                   {"steps": 20, "cfg": 3.5, "shift": 8.0, "switch": 10})),
        Node(7, "VAELoader", VAE),
        *decode_and_save(11, 6, 7, "video/wan22_t2v_lightning" if lightning else "video/wan22_t2v"),
    ]
    if lightning:
        nodes += lightning_loras(9, 1, "t2v", "v1.1")
    note = template_note("t2v", lightning, "v1.1", shift=8, title="text to video")
    name = "wan22_t2v_lightning_4step" if lightning else "wan22_t2v_template_20step"
    return Workflow(name, sorted(nodes, key=lambda n: n.id), [note])


def i2v_template(lightning: bool) -> Workflow:
    model = 10 if lightning else 1
    nodes = [
        loader(1, "i2v"),
        Node(2, "CLIPLoader", CLIP),
        Node(3, "CLIPTextEncode", {"text": I2V_PROMPT}, {"clip": (2, 0)}, title="CLIP Text Encode (Positive Prompt)"),
        Node(4, "CLIPTextEncode", {"text": NEGATIVE}, {"clip": (2, 0)}, title="CLIP Text Encode (Negative Prompt)"),
        Node(5, "LoadImage", {"image": "example.png"}, title="Start image"),
        Node(6, "WanImageToVideo", {"width": 640, "height": 640, "length": 81, "batch_size": 1},
             {"positive": (3, 0), "negative": (4, 0), "vae": (7, 0), "start_image": (5, 0)}),
        Node(7, "VAELoader", VAE),
        sampler(8, {"model": (model, 0), "positive": (6, 0), "negative": (6, 1), "latent": (6, 2)},
                **({"steps": 4, "cfg": 1.0, "shift": 5.0, "switch": 2} if lightning else
                   {"steps": 20, "cfg": 3.5, "shift": 5.0, "switch": 10})),
        *decode_and_save(11, 8, 7, "video/wan22_i2v_lightning" if lightning else "video/wan22_i2v"),
    ]
    if lightning:
        nodes += lightning_loras(9, 1, "i2v", "v1")
    note = template_note("i2v", lightning, "v1", shift=5, title="image to video",
                         extra="; pick your start image in Load Image")
    name = "wan22_i2v_lightning_4step" if lightning else "wan22_i2v_template_20step"
    return Workflow(name, sorted(nodes, key=lambda n: n.id), [note])


def random_loader(node_id: int, source: str, title: str) -> Node:
    return Node(node_id, "CacheDiT_WanDualTransformerLoader",
                {"source": source, **NO_FILES, "dtype": "bf16", "fp8_scaled": "dequantize", "boundary": 0.0},
                title=title)


def smoke_conditioning(node_id: int, model_from: int, seed: int, title: str, latent_from: int | None = None) -> Node:
    links = {"model": (model_from, 0)}
    if latent_from is not None:
        links["latent"] = (latent_from, 0)
    return Node(node_id, "CacheDiT_WanSmokeConditioning", {"seed": seed, "tokens": 16}, links, title=title)


SMOKE_LATENT = {"width": 64, "height": 64, "length": 9, "batch_size": 1}
CPU = {**NO_CACHE_ENGINE, "gpus": "cpu"}


def smoke() -> Workflow:
    """No weights, no text encoder: the tiny random model with a cache preset and an SCM mask."""
    nodes = [
        random_loader(1, "tiny-random", "Load Wan2.2 Dual Transformer (tiny-random: noise, smoke test)"),
        smoke_conditioning(2, 1, 1, "positive (smoke test)"),
        smoke_conditioning(3, 1, 2, "negative (smoke test)"),
        Node(4, "EmptyHunyuanLatentVideo", SMOKE_LATENT),
        Node(5, "CacheDiT_Config", {"preset": "sglang-fast"}),  # the per-expert widgets at their defaults
        Node(6, "CacheDiT_SCMMask", {"steps": 20, "preset": "fast", "policy": "dynamic", "compute_bins": "",
                                     "cache_bins": ""}),
        sampler(7, {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent": (4, 0), "cache_config": (5, 0),
                    "scm_mask": (6, 0)}, steps=20, cfg=3.5, shift=0.0, switch=-1, **CPU),
        Node(8, "SaveLatent", {"filename_prefix": "latents/cachedit_smoke"}, {"samples": (7, 0)}),
    ]
    note = ("**Smoke test**: the tiny random model (2 layers, its output is noise) on CPU ranks, with the "
            "sglang-fast cache preset and an SCM mask. Needs no weights and no text encoder.")
    return Workflow("smoke", nodes, [note])


def smoke_i2v() -> Workflow:
    """Image to video without weights: the smoke conditioning adds a random start image of the latent's size."""
    nodes = [
        random_loader(1, "tiny-random-i2v", "Load Wan2.2 Dual Transformer (tiny-random-i2v: noise, smoke test)"),
        Node(2, "EmptyHunyuanLatentVideo", SMOKE_LATENT),
        smoke_conditioning(3, 1, 1, "positive + start image (smoke test)", latent_from=2),
        smoke_conditioning(4, 1, 2, "negative + start image (smoke test)", latent_from=2),
        sampler(5, {"model": (1, 0), "positive": (3, 0), "negative": (4, 0), "latent": (2, 0)},
                steps=20, cfg=3.5, shift=0.0, switch=-1, **CPU),
        Node(6, "SaveLatent", {"filename_prefix": "latents/cachedit_smoke_i2v"}, {"samples": (5, 0)}),
    ]
    note = ("**Smoke test, image to video**: the tiny random I2V model (36 input channels) on a CPU rank. The smoke "
            "conditioning gets the latent and puts a random start image on it, as WanImageToVideo would; shift and "
            "boundary are auto (I2V: 5 and 0.9). Needs no weights.")
    return Workflow("smoke_i2v", nodes, [note])


SMOKE_LORA = "cachedit_tiny_random_lora.safetensors"


def smoke_lora() -> Workflow:
    """The Lightning settings on the tiny model with a LoRA: needs the tiny LoRA file (README.md)."""
    nodes = [
        random_loader(1, "tiny-random", "Load Wan2.2 Dual Transformer (tiny-random: noise, smoke test)"),
        Node(2, "CacheDiT_WanDualLoraLoader", {"lora_name": SMOKE_LORA, "strength_high_noise": 1.0,
                                               "strength_low_noise": 0.5}, {"model": (1, 0)},
             title="Load LoRA (tiny random LoRA: make it first, see the note)"),
        smoke_conditioning(3, 1, 1, "positive (smoke test)"),
        smoke_conditioning(4, 1, 2, "negative (smoke test)"),
        Node(5, "EmptyHunyuanLatentVideo", SMOKE_LATENT),
        sampler(6, {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent": (5, 0)},
                steps=4, cfg=1.0, shift=5.0, switch=2, **CPU),
        Node(7, "SaveLatent", {"filename_prefix": "latents/cachedit_smoke_lora"}, {"samples": (6, 0)}),
    ]
    note = (f"**Smoke test with a LoRA**: the tiny random model with a tiny random LoRA, Lightning's settings (4 "
            f"steps split 2/2, cfg 1, shift 5) on a CPU rank. Create models/loras/{SMOKE_LORA} first with the "
            "one-line command in examples/workflows/README.md, then refresh the page.")
    return Workflow("smoke_lora", nodes, [note])


def wan22_t2v() -> Workflow:
    """Wan's own pipeline settings (40 steps, shift 12, boundary 0.875, cfg 4/3, flow UniPC) with the
    pack's accelerations: a cache preset, an SCM mask, FP8 and compile."""
    nodes = [
        Node(1, "CacheDiT_WanDualTransformerLoader", {
            "source": "single-file", "high_noise_model": "wan2.2_t2v_high_noise_14B_fp16.safetensors",
            "low_noise_model": "wan2.2_t2v_low_noise_14B_fp16.safetensors", "diffusers_model": "none",
            "dtype": "bf16", "fp8_scaled": "dequantize", "boundary": 0.875}),
        Node(2, "CLIPLoader", CLIP),
        Node(3, "CLIPTextEncode", {"text": T2V_PROMPT}, {"clip": (2, 0)}, title="positive prompt"),
        Node(4, "CLIPTextEncode", {"text": "blurry, low quality, static, watermark, text, deformed"},
             {"clip": (2, 0)}, title="negative prompt"),
        Node(5, "EmptyHunyuanLatentVideo", {"width": 1280, "height": 720, "length": 81, "batch_size": 1}),
        Node(6, "CacheDiT_Config", {"preset": "sglang-fast"}),  # the per-expert widgets at their defaults
        Node(7, "CacheDiT_SCMMask", {"steps": 40, "preset": "fast", "policy": "dynamic", "compute_bins": "",
                                     "cache_bins": ""}),
        Node(8, "CacheDiT_FP8Quantize", {"quant_type": "float8_per_row",
                                         "exclude_layers": "embedder, embed, modulation, mod"}),
        Node(9, "CacheDiT_UlyssesParallelSampler", {
            "seed": 0, "steps": 40, "cfg": 4.0, "cfg_low_noise": 3.0, "shift": 12.0, "sampler_name": "wan_flow_unipc",
            "scheduler": "simple", "expert_switch": "boundary", "switch_step": -1, "gpus": "auto",
            "ulysses_degree": 0, "cfg_parallel": False, "compile": True, "attention_backend": "auto"},
             {"model": (1, 0), "positive": (3, 0), "negative": (4, 0), "latent": (5, 0), "cache_config": (6, 0),
              "scm_mask": (7, 0), "quantization": (8, 0)}),
        Node(10, "VAELoader", VAE),
        *decode_and_save(11, 9, 10, "video/wan22_cachedit"),
    ]
    note = ("**Wan2.2 T2V A14B with Wan's own settings and every acceleration**: 40 steps, shift 12, the expert "
            "switch by Wan's boundary 0.875, cfg 4 / 3, Wan's flow UniPC solver; the sglang-fast cache preset, an "
            "SCM mask, FP8 and compile, on every GPU ComfyUI sees (1280x720x81).\n\nmodels/diffusion_models: "
            "wan2.2_t2v_high_noise_14B_fp16.safetensors, wan2.2_t2v_low_noise_14B_fp16.safetensors")
    return Workflow("wan22_t2v", nodes, [note])


EXAMPLES = (smoke, smoke_i2v, smoke_lora, wan22_t2v, lambda: t2v_template(False), lambda: t2v_template(True),
            lambda: i2v_template(False), lambda: i2v_template(True))


def render(text_of: Any) -> str:
    return json.dumps(text_of, indent=1, ensure_ascii=False) + "\n"


def renumbered(workflow: Workflow) -> Workflow:
    """Node ids 1, 2, ... in the order of the given ids (links follow)."""
    new = {node.id: index for index, node in enumerate(sorted(workflow.nodes, key=lambda n: n.id), start=1)}
    nodes = [Node(new[n.id], n.type, n.values, {k: (new[s], slot) for k, (s, slot) in n.links.items()}, n.title)
             for n in sorted(workflow.nodes, key=lambda n: n.id)]
    return Workflow(workflow.name, nodes, workflow.notes)


def build() -> dict[str, str]:
    """File name -> text of every example."""
    nodes = pack_nodes()
    files: dict[str, str] = {}
    for make in EXAMPLES:
        workflow = renumbered(make())
        files[f"{workflow.name}_api.json"] = render(api_format(workflow, nodes))
        files[f"{workflow.name}_ui.json"] = render(ui_format(workflow, nodes))
    return files


def main() -> None:
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
