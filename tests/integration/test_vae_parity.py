"""The pack's Wan VAE Decode against ComfyUI's own VAELoader + VAEDecode, in a real ComfyUI server (CPU),
on the same random Wan2.1 VAE file and the same latent. Skipped unless COMFYUI_DIR names a ComfyUI
checkout; COMFYUI_PYTHON names the interpreter with ComfyUI's requirements and this pack's.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python pytest tests/integration/test_vae_parity.py

ComfyUI builds the Wan2.1 VAE at the released width only (96), so the file is a full-width random
VAE (bf16, as wan_2.1_vae.safetensors is stored); the latent is small (two videos of 5 frames, 32x32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch
from comfy_server import start_comfyui, stop_comfyui
from helpers import psnr

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run these tests")

VAE_NAME = "random_wan_2.1_vae.safetensors"
LATENT_NAME = "vae_parity.latent"
LATENT_SHAPE = (2, 16, 2, 4, 4)  # two videos: ComfyUI's VAEDecode puts their frames one after the other
MIN_PSNR_DB = 40.0

# A test-only node (written for this test) that saves an IMAGE tensor as it is, float and all:
# SaveImage would quantize to 8 bits.
PROBE = '''
import os
import folder_paths
from safetensors.torch import save_file


class VaeParityProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "name": ("STRING", {"default": "images"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, images, name):
        save_file({"images": images.contiguous().cpu()}, os.path.join(folder_paths.get_output_directory(),
                                                                      name + ".safetensors"))
        return {}


NODE_CLASS_MAPPINGS = {"VaeParityProbe": VaeParityProbe}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ComfyUI server with the pack, the probe node, the random VAE in models/vae and the latent in input/."""
    from safetensors.torch import save_file

    from accel.model.vae import save_random_vae

    base = tmp_path_factory.mktemp("comfy-vae")
    for folder in ("packs/vae_parity_probe", "input", "models/vae"):
        (base / folder).mkdir(parents=True)
    (base / "packs" / "comfyui-cachedit-parallel").symlink_to(ROOT)
    (base / "packs" / "vae_parity_probe" / "__init__.py").write_text(PROBE)
    save_random_vae(base / "models" / "vae" / VAE_NAME, seed=3, base_dim=96, dtype=torch.bfloat16)
    latent = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(11))
    # ComfyUI's LoadLatent reads the tensor as it is when the version key is present
    save_file({"latent_tensor": latent, "latent_format_version_0": torch.tensor([])}, str(base / "input" / LATENT_NAME))
    started = start_comfyui(COMFYUI_DIR, PYTHON, base,
                            f"vae_parity:\n  base_path: {base}\n  custom_nodes: packs\n  vae: models/vae\n",
                            "--input-directory", str(base / "input"), node="CacheDiT_WanVAEDecode")
    yield SimpleServer(started.url, base, latent, started.log)
    assert not stop_comfyui(started), "worker processes outlived the server"


class SimpleServer:
    def __init__(self, url: str, base: Path, latent: torch.Tensor, log_path: Path):
        self.url, self.base, self.latent, self.log_path = url, base, latent, log_path

    def run(self, workflow: dict, timeout_s: float = 900.0) -> dict:
        """Queue a prompt and wait for its history entry (status and outputs)."""
        import requests

        response = requests.post(f"{self.url}/prompt", json={"prompt": workflow, "client_id": uuid.uuid4().hex},
                                 timeout=30)
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = requests.get(f"{self.url}/history/{prompt_id}", timeout=10).json()
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]
            time.sleep(1.0)
        pytest.fail("the prompt did not finish: " + self.log_path.read_text()[-3000:])

    def saved(self, name: str) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.base / "output" / f"{name}.safetensors"))["images"]


def workflow(tiling: str = "auto") -> dict:
    return {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT_NAME}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "VaeParityProbe", "inputs": {"images": ["3", 0], "name": "native"}},
        # the group to decode in: the tiny random model's (no sampler ran, so none is warm)
        "5": {"class_type": "CacheDiT_WanDualTransformerLoader",
              "inputs": {"source": "tiny-random", "high_noise_model": "none", "low_noise_model": "none",
                         "diffusers_model": "none", "dtype": "fp32", "fp8_scaled": "dequantize", "boundary": 0.0}},
        "6": {"class_type": "CacheDiT_WanVAEDecode",
              "inputs": {"samples": ["1", 0], "vae_name": VAE_NAME, "tiling": tiling, "gpus": "cpu", "dtype": "auto",
                         "model": ["5", 0]}},
        "7": {"class_type": "VaeParityProbe", "inputs": {"images": ["6", 0], "name": "pack"}},
    }


def test_comfyuis_wan_vae_has_the_original_layouts_names():
    """The names the pack writes and reads (accel.model.vae.original_keys) are those of ComfyUI's WanVAE."""
    from accel.model.vae import original_keys

    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, ".")
        from comfy.cli_args import args
        args.cpu = True  # as --cpu: model_management looks for a GPU at import otherwise
        import comfy.ldm.wan.vae as wan
        model = wan.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0)
        print(json.dumps(sorted(model.state_dict())))
    """)
    result = subprocess.run([PYTHON, "-c", code], cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) == set(original_keys())


def test_the_packs_decode_matches_comfyuis_vaedecode(server):
    entry = server.run(workflow())
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    native, pack = server.saved("native"), server.saved("pack")
    frames = LATENT_SHAPE[0] * (1 + 4 * (LATENT_SHAPE[2] - 1))
    size = (LATENT_SHAPE[3] * 8, LATENT_SHAPE[4] * 8)
    assert native.shape == pack.shape == (frames, *size, 3)
    assert native.dtype == pack.dtype == torch.float32
    assert 0 <= pack.min() and pack.max() <= 1 and 0 <= native.min() and native.max() <= 1
    assert native.std() > 0.1  # a decode that says something, not a flat or clamped image
    log = server.log_path.read_text()
    assert "Missing VAE keys" not in log and "Leftover VAE keys" not in log
    dtype = [line for line in log.splitlines() if "VAE load device" in line]
    value = psnr(pack, native)
    print(f"\nthe pack's decode vs ComfyUI's VAEDecode: {value:.1f} dB PSNR, max |diff| "
          f"{(pack - native).abs().max():.2e} over {list(pack.shape)}; ComfyUI: {dtype[-1] if dtype else '?'}")
    assert value >= MIN_PSNR_DB
