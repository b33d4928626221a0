"""The quantized self-attention (attention_backend int8 / int8_fp8): close to exact attention on the
GPU, on Wan-like inputs and ragged lengths; where it cannot run, exact attention with the reason in
the decision table, never a crash."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, relative_error, tiny_job

from accel.job.settings import EngineOptions, JobSettings, SamplerSettings
from accel.model.attention import self_attention_processors
from accel.model.loading import save_random_experts
from accel.model.quantized_attention import quantized_attention, unavailable_reason
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available() or unavailable_reason(torch.device("cuda")) is not None,
                          reason="needs a CUDA GPU with FP8 tensor cores and Triton")
# relative L2 against exact attention: INT8 q k^T (SageAttention's bound), FP8 p v adds e4m3 rounding
BOUNDS = {"16bit": 0.05, "fp8": 0.08}


def wan_like(tokens: int, heads: int, dim: int, device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q and k RMS-normed over all heads' channels with a learned-looking weight and a shared
    channel bias (Wan's norm_q / norm_k), v plain; [B, S, H, D] bf16."""
    generator = torch.Generator(device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    def normed(offset: float):
        x = randn(1, tokens, heads * dim) * randn(heads * dim).mul(0.5).exp() + randn(heads * dim) * offset
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * randn(heads * dim).mul(0.25).exp() * 1.5
        return x.view(1, tokens, heads, dim).bfloat16()

    return normed(0.3), normed(1.0), randn(1, tokens, heads, dim).bfloat16()


def exact(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)


def test_on_the_cpu_exact_attention_runs_and_the_decision_table_says_why():
    runtime = Runtime.load(TINY, "cpu", EngineOptions(attention_backend="int8_fp8"))
    assert not any(p.quantized_pv for p in self_attention_processors((runtime.experts.high, runtime.experts.low)))
    assert any("int8_fp8" in note and "exact attention runs instead" in note for note in runtime.engine_notes)
    plain = run_job(Runtime.load(TINY, "cpu"), tiny_job(JobSettings(sampler=SamplerSettings(steps=4))))
    fallback = run_job(runtime, tiny_job(JobSettings(sampler=SamplerSettings(steps=4))))
    assert torch.equal(plain.latent, fallback.latent)


def test_unavailable_reasons_name_what_is_missing():
    assert "CUDA GPU" in unavailable_reason(torch.device("cpu"))
    if torch.cuda.is_available() and unavailable_reason(torch.device("cuda")) is None:
        assert "head sizes" in unavailable_reason(torch.device("cuda"), head_dim=96)


def triton_interpreter_version() -> tuple[int, ...]:
    if importlib.util.find_spec("triton") is None:
        return ()
    return tuple(int(part) for part in importlib.metadata.version("triton").split(".")[:2])


# Triton's interpreter before 3.9 cannot take a loop bound from a kernel argument under numpy 2
@pytest.mark.skipif(triton_interpreter_version() < (3, 9), reason="needs Triton 3.9+ (its CPU interpreter)")
def test_the_kernels_compute_attention_in_tritons_interpreter(tmp_path):
    """The kernels' indexing (padding, the masked last block, strided inputs) on the CPU through
    Triton's interpreter; its float8 rounding is not the GPU's, so only the 16-bit p v path is
    held to the error bound here (both are on the GPU below)."""
    script = tmp_path / "interpret.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
        "from accel.model.quantized_attention import Tiles, quantized_attention\n"
        "from helpers import relative_error\n"
        "from test_quantized_attention import exact, wan_like\n"
        "q, k, v = (t.float() for t in wan_like(200, 2, 64, 'cpu'))\n"
        "v = v.transpose(1, 2).contiguous().transpose(1, 2)  # strided values\n"
        "out = quantized_attention(q, k, v, pv='16bit', tiles=Tiles(64, 64, 4, 1))\n"
        "print(relative_error(out, exact(q, k, v)), tuple(out.shape))\n")
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    error, shape = done.stdout.split(" ", 1)
    assert float(error) < BOUNDS["16bit"] and shape.strip() == "(1, 200, 2, 64)"


@CUDA
@pytest.mark.parametrize("pv", ["16bit", "fp8"])
@pytest.mark.parametrize("tokens", [1000, 4096])
def test_close_to_exact_attention_on_wan_like_inputs(pv, tokens):
    q, k, v = wan_like(tokens, 4, 128, "cuda")
    out = quantized_attention(q, k, v, pv=pv)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert relative_error(out, exact(q, k, v)) < BOUNDS[pv]
    assert torch.equal(out, quantized_attention(q, k, v, pv=pv))  # deterministic: ranks decide alike


@CUDA
def test_the_processors_use_it_and_the_job_stays_close(tmp_path):
    spec = dataclasses.replace(save_random_experts(tmp_path, attention_head_dim=64, ffn_dim=64), dtype="bf16")
    settings = JobSettings(sampler=SamplerSettings(steps=2))
    exact_run = run_job(Runtime.load(spec, "cuda"), tiny_job(settings, latent_hw=(16, 16), frames=5))
    runtime = Runtime.load(spec, "cuda", EngineOptions(attention_backend="int8"))
    assert all(p.quantized_pv == "16bit"
               for p in self_attention_processors((runtime.experts.high, runtime.experts.low)))
    assert any("low precision" in note and "relative error" in note for note in runtime.engine_notes)
    quantized = run_job(runtime, tiny_job(settings, latent_hw=(16, 16), frames=5))
    error = relative_error(quantized.latent, exact_run.latent)
    assert 0 < error < 0.05 and math.isfinite(error)
