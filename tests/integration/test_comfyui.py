"""The pack inside a real ComfyUI server (CPU). Skipped unless COMFYUI_DIR names a ComfyUI checkout;
COMFYUI_PYTHON names the interpreter that has ComfyUI's requirements and this pack's installed.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python pytest tests/integration
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest
from comfy_server import ComfyServer, start_comfyui, stop_comfyui

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run these tests")

WORKFLOWS = ROOT / "examples" / "workflows"
SMOKE = json.loads((WORKFLOWS / "smoke_api.json").read_text())
PACK_NODES = {"CacheDiT_WanDualTransformerLoader", "CacheDiT_Config", "CacheDiT_SCMMask", "CacheDiT_FP8Quantize",
              "CacheDiT_UlyssesParallelSampler", "CacheDiT_WanSmokeConditioning", "CacheDiT_WanDualLoraLoader"}
SMOKE_LORA = "cachedit_tiny_random_lora.safetensors"  # smoke_lora_*.json's LoRA, made by the README's command
START_IMAGE = "example.png"  # the I2V examples' Load Image (ComfyUI ships input/example.png)


def write_png(path: Path, size: int = 16) -> None:
    """A gray RGB PNG (the I2V examples' start image), written without an image library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * (3 * size) for _ in range(size))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def readme_lora_command(target: Path) -> list[str]:
    """examples/workflows/README.md's command that writes the tiny LoRA, aimed at ``target`` (run from the pack's folder)."""
    block = (WORKFLOWS / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(block)
    assert argv[:4] == ["python", "-m", "accel", "make-smoke-lora"] and argv[-1].endswith("/cachedit_tiny_random_lora.safetensors")
    return [os.environ.get("COMFYUI_PYTHON", sys.executable), *argv[1:-1], str(target)]


SERVER: list[ComfyServer] = []  # the server under test (workers of another ComfyUI on this machine are not ours)


def worker_pids() -> list[int]:
    """Worker processes the server under test started."""
    return SERVER[-1].worker_pids()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    for folder in ("packs", "input", "models/loras"):
        (base / folder).mkdir(parents=True)
    (base / "packs" / "comfyui-cachedit-parallel").symlink_to(ROOT)
    write_png(base / "input" / START_IMAGE)
    made = subprocess.run(readme_lora_command(base / "models" / "loras" / SMOKE_LORA), cwd=ROOT, check=False, capture_output=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    # --disable-smart-memory: ComfyUI then calls unload_all_models after every prompt, which must not
    # release the warm worker group (only an explicit /free does)
    started = start_comfyui(COMFYUI_DIR, os.environ.get("COMFYUI_PYTHON", sys.executable), base,
                            f"pack_under_test:\n  base_path: {base}\n  custom_nodes: packs\n  loras: models/loras\n",
                            "--input-directory", str(base / "input"), "--disable-smart-memory")
    SERVER.append(started)
    yield started.url
    assert not stop_comfyui(started), "worker processes outlived the server"


async def run_prompt(url: str, workflow: dict, *, interrupt_after_steps: int | None = None,
                     timeout_s: float = 300.0, bystander: list | None = None) -> tuple[str, list[dict]]:
    """Queue the workflow as one browser tab and follow its events; ``bystander`` collects what a second
    connected tab receives meanwhile."""
    import aiohttp

    client_id = uuid.uuid4().hex
    events: list[dict] = []
    async with aiohttp.ClientSession() as session:
        other = await session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={uuid.uuid4().hex}")
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": workflow, "client_id": client_id}) as response:
                body = await response.json()
                assert response.status == 200, body
            prompt_id = body["prompt_id"]
            steps_seen = 0

            async def follow():
                nonlocal steps_seen
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(message.data)
                    events.append(event)
                    kind = event["type"]
                    if kind == "cachedit.step":
                        steps_seen += 1
                        if interrupt_after_steps is not None and steps_seen == interrupt_after_steps:
                            await session.post(f"{url}/interrupt")
                    if kind in ("execution_success", "execution_error", "execution_interrupted"):
                        return

            await asyncio.wait_for(follow(), timeout_s)
        await asyncio.sleep(0.5)  # anything sent to the other tab has arrived by now
        while bystander is not None:
            try:
                message = await other.receive(timeout=0.1)
            except asyncio.TimeoutError:
                break
            if message.type == aiohttp.WSMsgType.TEXT:
                bystander.append(json.loads(message.data))
        await other.close()
    return prompt_id, events


def kinds(events):
    return [e["type"] for e in events]


def test_the_nodes_are_node_api_nodes_with_tooltips(server):
    import requests

    info = requests.get(f"{server}/object_info", timeout=30).json()
    assert PACK_NODES <= set(info)
    assert not {"UlyssesParallelSampler", "SCMMask", "FP8Quantize", "CacheDiTConfig"} & set(info)  # the old ids
    for node_id in PACK_NODES:
        inputs = {**info[node_id]["input"]["required"], **info[node_id]["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert info[node_id]["experimental"] == (node_id == "CacheDiT_WanSmokeConditioning")
    loader = info["CacheDiT_WanDualTransformerLoader"]["input"]["required"]
    assert loader["diffusers_model"][0] == "COMBO" and "diffusers_path" not in loader


def test_smoke_workflow_runs_with_progress_events_and_routes(server):
    import requests

    bystander: list[dict] = []
    prompt_id, events = asyncio.run(run_prompt(server, SMOKE, bystander=bystander))
    assert "execution_success" in kinds(events), events[-3:]
    steps = [e for e in events if e["type"] == "cachedit.step"]
    assert len(steps) == 20 and all(e["data"]["prompt_id"] == prompt_id for e in steps)
    progress = [e["data"]["value"] for e in events if e["type"] == "progress" and e["data"].get("node") == "7"]
    assert progress[-1] == 20 and progress == sorted(progress)
    done = [e for e in events if e["type"] == "cachedit.done"]
    assert done and done[0]["data"]["summary"]["forwards"] == 40
    listing = requests.get(f"{server}/cachedit/traces", timeout=5).json()
    assert listing[0]["prompt_id"] == prompt_id
    record = requests.get(f"{server}/cachedit/traces/{prompt_id}", timeout=5).json()
    assert len(record["trace"]["records"]) == 40
    assert requests.get(f"{server}/api/cachedit/traces/{prompt_id}", timeout=5).ok  # mirrored under /api
    # the other tab saw none of this job's events (ComfyUI's own progress goes to the queuing tab only)
    assert not [e for e in bystander if e["type"].startswith("cachedit.")], kinds(bystander)
    mask_text = record_outputs(server, prompt_id)["6"]["text"][0]  # the SCM Mask's ui.PreviewText
    assert mask_text.startswith("1") and "of 20 steps" in mask_text
    assert "high/cond" in record_outputs(server, prompt_id)["7"]["text"][0]  # the sampler's decision table


def test_smoke_i2v_workflow_runs_through_the_server(server):
    """Image to video with no weights: the smoke conditioning's start image reaches the sampler as
    WanImageToVideo's keys would (the 36-channel tiny model refuses a text-only conditioning)."""
    prompt_id, events = asyncio.run(run_prompt(server, json.loads((WORKFLOWS / "smoke_i2v_api.json").read_text())))
    assert "execution_success" in kinds(events), [e for e in events if e["type"] == "execution_error"]
    assert sum(1 for e in events if e["type"] == "cachedit.step") == 20
    done = [e for e in events if e["type"] == "cachedit.done"]
    assert done and done[0]["data"]["summary"]["forwards"] == 40  # cfg 3.5: cond and uncond every step
    table = record_outputs(server, prompt_id)["5"]["text"][0]
    assert "low-noise expert from step 10 (switch_step)" in table  # switch_step -1: half the steps
    text_only = json.loads((WORKFLOWS / "smoke_i2v_api.json").read_text())
    for node_id in ("3", "4"):  # the smoke conditioning without the latent: no start image
        del text_only[node_id]["inputs"]["latent"]
    _, events = asyncio.run(run_prompt(server, text_only))
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert "needs the latent" in error["exception_message"]


def test_smoke_lora_workflow_runs_with_the_readmes_tiny_lora(server):
    import requests

    loras = requests.get(f"{server}/object_info/CacheDiT_WanDualLoraLoader", timeout=5).json()
    assert SMOKE_LORA in loras["CacheDiT_WanDualLoraLoader"]["input"]["required"]["lora_name"][1]["options"]
    _prompt_id, events = asyncio.run(run_prompt(server, json.loads((WORKFLOWS / "smoke_lora_api.json").read_text())))
    assert "execution_success" in kinds(events), [e for e in events if e["type"] == "execution_error"]
    done = [e for e in events if e["type"] == "cachedit.done"]
    assert done and done[0]["data"]["summary"]["forwards"] == 4  # 4 steps at cfg 1: one forward each
    bad = json.loads((WORKFLOWS / "smoke_lora_api.json").read_text())
    bad["2"]["inputs"]["lora_name"] = "/etc/hostname"
    response = requests.post(f"{server}/prompt", json={"prompt": bad}, timeout=10)
    assert response.status_code == 400
    details = json.dumps(response.json()["node_errors"]["2"])
    assert "not in ComfyUI's 'loras' list" in details and "hostname" not in details


# The examples' inputs that name model files (none of which this server has)
FILE_INPUTS = {"high_noise_model", "low_noise_model", "lora_name", "clip_name", "vae_name"}


def test_examples_with_real_weights_fail_validation_only_on_their_missing_files(server):
    """Every other input of the template workflows is accepted by ComfyUI's /prompt validation, the
    pack's nodes' and ComfyUI's own (Load Image's start image is on this server)."""
    import requests

    files = sorted(p for p in WORKFLOWS.glob("wan22_*_api.json"))
    assert len(files) == 5
    for path in files:
        prompt = json.loads(path.read_text())
        response = requests.post(f"{server}/prompt", json={"prompt": prompt}, timeout=30)
        assert response.status_code == 400, (path.name, response.text[:500])
        node_errors = response.json()["node_errors"]
        naming_files = {i for i, n in prompt.items() if FILE_INPUTS & set(n["inputs"])
                        and n["inputs"].get("source", "single-file") == "single-file"}
        assert set(node_errors) == naming_files, (path.name, {i: e["class_type"] for i, e in node_errors.items()})
        for node_id, entry in node_errors.items():
            for error in entry["errors"]:
                if error["type"] == "value_not_in_list":  # ComfyUI's own file lists (CLIPLoader, VAELoader)
                    assert error["extra_info"]["input_name"] in FILE_INPUTS, (path.name, node_id, error)
                else:  # the pack's nodes: the one text for a name that is not in the list
                    assert error["type"] == "custom_validation_failed", (path.name, node_id, error)
                    assert "list: pick an entry of the list" in error["details"], (path.name, node_id, error)
                    message = error["details"].split(" - ", 1)[1]
                    assert message.split(":", 1)[0] in FILE_INPUTS, (path.name, node_id, message)


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def widget_names(spec: dict) -> list[str]:
    """A node's widgets in the frontend's order (object_info's input_order: required, then optional)."""
    inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
    order = spec.get("input_order") or {k: list(spec["input"].get(k, {})) for k in ("required", "optional")}
    names = [*order.get("required", []), *order.get("optional", [])]
    return [n for n in names if (isinstance(inputs[n][0], list) or inputs[n][0] in WIDGET_TYPES)
            and not (len(inputs[n]) > 1 and inputs[n][1].get("forceInput"))]


def test_the_examples_builder_describes_comfyuis_nodes_as_this_server_does(server):
    """examples/workflows/build_examples.py's table of ComfyUI's nodes (sockets, widget order, outputs) is
    what /object_info says, so the UI-format examples load with each value in its widget."""
    import importlib.util

    import requests

    spec = importlib.util.spec_from_file_location("cachedit_build_examples", WORKFLOWS / "build_examples.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder
    spec.loader.exec_module(builder)
    info = requests.get(f"{server}/object_info", timeout=30).json()
    used = set()
    for path in WORKFLOWS.glob("*_api.json"):
        used |= {n["class_type"] for n in json.loads(path.read_text()).values()}
    assert used - PACK_NODES <= set(builder.CORE)
    for kind, core in builder.CORE.items():
        node_info = info[kind]
        assert widget_names(node_info) == core["widgets"], kind
        inputs = {**node_info["input"].get("required", {}), **node_info["input"].get("optional", {})}
        sockets = [(name, inputs[name][0], name in node_info["input"].get("optional", {})) for name in inputs
                   if name not in core["widgets"]]
        assert sockets == [tuple(s) for s in core["sockets"]], kind
        assert list(zip(node_info["output_name"], node_info["output"])) == [tuple(o) for o in core["outputs"]], kind
        upload = any(len(v) > 1 and v[1].get("image_upload") for v in inputs.values())
        assert bool(core.get("upload")) == upload, kind
        assert not any(len(v) > 1 and v[1].get("control_after_generate") for v in inputs.values()), kind


def record_outputs(server, prompt_id):
    import requests

    return requests.get(f"{server}/history/{prompt_id}", timeout=5).json()[prompt_id]["outputs"]


LOADER_ERROR = "not in ComfyUI's 'diffusion_models' list"


def test_a_loader_prompt_naming_a_server_path_is_refused_with_one_text(server):
    import requests

    texts = set()
    for name in ("/etc/hostname", "../../etc/passwd", "no_such_model.safetensors"):
        for source in ("single-file", "tiny-random"):
            bad = json.loads(json.dumps(SMOKE))
            bad["1"]["inputs"].update(source=source, high_noise_model=name, low_noise_model=name)
            response = requests.post(f"{server}/prompt", json={"prompt": bad}, timeout=10)
            assert response.status_code == 400, response.text
            details = json.dumps(response.json()["node_errors"]["1"])
            assert LOADER_ERROR in details and "hostname" not in details and "passwd" not in details, details
            texts.add(details.replace(name, "<name>"))
    assert len(texts) == 1  # whatever the name, whether that path exists, and the source
    bad = json.loads(json.dumps(SMOKE))
    bad["1"]["inputs"].update(source="diffusers", diffusers_model="/etc")
    response = requests.post(f"{server}/prompt", json={"prompt": bad}, timeout=10)
    assert response.status_code == 400 and "not in ComfyUI's 'diffusers' list" in response.text

def test_bad_input_is_a_node_error_and_the_server_keeps_running(server):
    import requests

    bad = json.loads(json.dumps(SMOKE))
    bad["6"]["inputs"].update(preset="custom bins", compute_bins="6,1", cache_bins="3")
    response = requests.post(f"{server}/prompt", json={"prompt": bad}, timeout=10)
    assert response.status_code == 400
    details = json.dumps(response.json()["node_errors"]["6"])
    assert "cover 10 steps but the sampler runs 20" in details
    wrong_steps = json.loads(json.dumps(SMOKE))
    wrong_steps["7"]["inputs"]["steps"] = 12
    _prompt_id, events = asyncio.run(run_prompt(server, wrong_steps))
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert "SCM mask has 20 steps but the sampler runs 12" in error["exception_message"]
    assert requests.get(f"{server}/object_info/CacheDiT_SCMMask", timeout=5).ok


def test_interrupt_stops_the_job_and_the_group_stays_usable(server):
    long = json.loads(json.dumps(SMOKE))
    long["6"]["inputs"]["steps"] = long["7"]["inputs"]["steps"] = 1000  # the widgets' max
    _, events = asyncio.run(run_prompt(server, long, interrupt_after_steps=3))
    assert "execution_interrupted" in kinds(events), kinds(events)[-4:]
    assert sum(1 for e in events if e["type"] == "cachedit.step") < 1000
    pids = worker_pids()
    assert pids
    _, events = asyncio.run(run_prompt(server, SMOKE))
    assert "execution_success" in kinds(events)
    assert worker_pids() == pids  # the same warm group served the next prompt


def test_prompts_keep_the_workers_and_free_releases_them(server):
    import requests

    again = json.loads(json.dumps(SMOKE))
    for seed in (101, 102):  # new seeds: ComfyUI would answer a repeated prompt from its cache
        again["7"]["inputs"]["seed"] = seed
        _, events = asyncio.run(run_prompt(server, again))
        assert "execution_success" in kinds(events)
        if seed == 101:
            pids = worker_pids()
    assert pids and worker_pids() == pids  # under --disable-smart-memory ComfyUI unloaded its models twice
    assert requests.post(f"{server}/free", json={"unload_models": True, "free_memory": True}, timeout=5).ok
    deadline = time.monotonic() + 20
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_pids()
    asyncio.run(run_prompt(server, SMOKE))
    assert worker_pids()
    assert requests.post(f"{server}/cachedit/release", timeout=30).json() == {"released": True}
    assert not worker_pids()


def test_queue_client_prints_the_decision_table(server, tmp_path):
    # A new seed: the earlier tests ran smoke_api.json as it is, and ComfyUI would answer it from its cache.
    fresh = json.loads(json.dumps(SMOKE))
    fresh["7"]["inputs"]["seed"] = 12345
    (tmp_path / "smoke_api.json").write_text(json.dumps(fresh))
    result = subprocess.run([sys.executable, "-m", "accel", "queue", str(tmp_path / "smoke_api.json"),
                             "--server", server], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "high/cond" in result.stdout and "forwards 40" in result.stdout
    bad = ROOT / "examples/workflows/wan22_t2v_api.json"  # its model files are not on this server
    result = subprocess.run([sys.executable, "-m", "accel", "queue", str(bad), "--server", server], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "node 1 (CacheDiT_WanDualTransformerLoader)" in result.stderr


def test_panel_in_a_browser(server):
    """The cache-dit panel and the SCM Mask text in ComfyUI's page (headless Chromium through
    playwright-core, found through NODE_PATH; skipped where either is missing)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    result = subprocess.run(["node", str(ROOT / "tests/integration/panel_screenshot.mjs"), server, "4242"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 77:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "panel OK" in result.stdout
