"""bench/native.py end to end on the CPU with the tiny model: native ComfyUI's two-KSamplerAdvanced
chain in-process against the pack's run_job on the same files, conditioning, latent and seed, and
ComfyUI's VAELoader + VAEDecode against the pack's decode in a worker group (a random full-width
Wan2.1 VAE, the same latent).
Skipped unless COMFYUI_DIR names a ComfyUI checkout; COMFYUI_PYTHON names an interpreter with
ComfyUI's requirements and this pack's (default: this one).

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python pytest tests/test_bench_native.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run this test")


@pytest.mark.timeout(900)
def test_tiny_run_matches_native_and_writes_the_keys(tmp_path):
    out = tmp_path / "out"
    command = [os.environ.get("COMFYUI_PYTHON", sys.executable), str(ROOT / "bench" / "native.py"), "--tiny",
               "--comfyui", COMFYUI_DIR, "--out", str(out), "--scratch", str(tmp_path / "weights"),
               "--paths", "lightning,template", "--native-configs", "fp16,fp8_scaled",
               "--pack-configs", "bf16,fp8_stored", "--stand-ins", "force"]  # as on the GPU image: no av, torchsde
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [path] = out.glob("*-native.json")
    data = json.loads(path.read_text())
    for key in ("lightning_vs_native_best", "template_vs_native_fp8", "forward_32k_exact_s", "forward_32k_lowprec_s",
                "lowprec_attention_rel_error", "vae_decode_vs_native", "notes"):
        assert key in data
    assert data["lightning_vs_native_best"] > 0 and data["template_vs_native_fp8"] > 0
    assert data["vae_decode_vs_native"] > 0 and "vae_decode_vs_native" not in data["null_reasons"]
    vae = data["vae_decode"]["rows"]
    assert vae["native"]["frames"] == vae["pack"]["frames"] == [5, 64, 64, 3]  # [1, 16, 2, 8, 8] decoded
    assert vae["native"]["dtype"] == vae["pack"]["dtype"] == "torch.float32"  # both sides' choice on a CPU
    # ComfyUI's WanVAE and diffusers' AutoencoderKLWan in float32 (tests/integration/test_vae_parity.py
    # measures 78.9 dB); the pack's frames travel from the worker in fp16
    assert data["vae_decode_psnr_db"] == vae["pack"]["psnr_db_vs_native"] >= 40.0
    rows = data["rows"]
    for path_name in ("lightning", "template"):
        native, pack = rows[f"native fp16 | {path_name}"], rows[f"pack bf16 | {path_name}"]
        assert native["finite"] and pack["finite"]
        # ComfyUI computes the tiny model in fp32 on the CPU, and so does the pack's dry run: the
        # same chain (noise, sigmas, split, leftover-noise hand-over, CFG) up to float32 rounding.
        assert native["rel_err_vs_pack_bf16"] < 1e-4, (path_name, native["rel_err_vs_pack_bf16"])
        assert rows[f"native fp8_scaled | {path_name}"]["rel_err_vs_pack_bf16"] < 0.1
    assert rows["native fp8_scaled | lightning"]["label"].endswith("(dequantized per layer)")  # no fp8 compute on a CPU
    assert "pack fp8_stored" in data["first_job"]  # the fp8_scaled file loads as stored
    assert data["weights"]["fp8_tensors"] == 2 * 10 + 6  # every Linear of the 2 blocks, embeddings and head
    assert any("stand-in modules for ['av', 'torchsde']" in note for note in data["notes"])
    assert path.with_suffix(".md").read_text().startswith("# The pack against native ComfyUI")
