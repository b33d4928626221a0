"""ComfyUI's process imports the node package, builds the nodes' schemas and validates prompts, but
never runs a model: none of that may import diffusers, torchao or cache-dit (they are the workers'),
which cost seconds at import and slowed ComfyUI's own forwards in a process that had them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "torchao", "cache_dit")

IMPORT_AS_COMFYUI = f"""
import importlib.util, json, sys, time
start = time.perf_counter()
import torch  # ComfyUI has it loaded before any pack
torch_loaded = time.perf_counter()
name = {str(ROOT)!r}
spec = importlib.util.spec_from_file_location(name, name + "/__init__.py", submodule_search_locations=[name])
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
imported = time.perf_counter()
"""

REPORT = f"""
print(json.dumps({{"torch_s": torch_loaded - start, "pack_s": imported - torch_loaded,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})}}))
"""


def run_in_fresh_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def heavy_roots(report: dict) -> set[str]:
    return {m.split(".")[0] for m in report["heavy"]}


def test_the_node_package_imports_without_the_worker_libraries():
    report = run_in_fresh_python(IMPORT_AS_COMFYUI + REPORT)
    print(f"\nimport torch: {report['torch_s']:.2f} s; the pack after torch: {report['pack_s']:.2f} s")
    assert not heavy_roots(report), (
        f"the host side imported {sorted(heavy_roots(report))}; find the chain with "
        f"`python -X importtime -c 'import accel.parallel.registry' 2>&1 | grep -B30 diffusers`"
    )


def test_building_schemas_and_validating_prompts_imports_nothing_heavy():
    """What ComfyUI's process does with the nodes before any run: /object_info, prompt validation."""
    calls = textwrap.dedent("""
        import asyncio
        nodes = {c.define_schema().node_id: c for c in asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())}
        import tempfile, torch
        from safetensors.torch import save_file
        lora = tempfile.mkdtemp() + "/tiny_lora.safetensors"  # outside ComfyUI a LoRA name is its path
        save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(24, 4),
                   "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 24)}, lora)
        checks = {  # by name, as ComfyUI calls validate_inputs
            "CacheDiT_WanDualTransformerLoader": dict(source="tiny-random-i2v", high_noise_model="none",
                                                      low_noise_model="none", diffusers_model="none", dtype="bf16",
                                                      fp8_scaled="dequantize"),
            "CacheDiT_WanDualLoraLoader": dict(lora_name=lora),
            "CacheDiT_Config": dict(preset="sglang-fast"),
            "CacheDiT_SCMMask": dict(steps=20, preset="fast", policy="dynamic", compute_bins="", cache_bins=""),
            "CacheDiT_FP8Quantize": dict(quant_type="float8_per_row"),
            "CacheDiT_UlyssesParallelSampler": dict(gpus="cpu", ulysses_degree=0, cfg_parallel=False,
                                                    sampler_name="euler", scheduler=None, expert_switch="step",
                                                    attention_backend="auto"),
        }
        for node_id, args in checks.items():
            assert nodes[node_id].validate_inputs(**args) is True, (node_id, nodes[node_id].validate_inputs(**args))
        assert "only .safetensors" in nodes["CacheDiT_WanDualLoraLoader"].validate_inputs(lora_name="x.pt")
    """)
    report = run_in_fresh_python(IMPORT_AS_COMFYUI + calls + REPORT)
    assert not heavy_roots(report), f"validation in the host process imported {sorted(heavy_roots(report))}"
