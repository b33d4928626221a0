"""The fused block forward: same output as diffusers' WanTransformerBlock.forward, bound per
instance (the library class and other models in the process keep diffusers' forward)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from helpers import TINY

from accel.errors import UserInputError
from accel.job.settings import EngineOptions
from accel.model import engine_check
from accel.model.engine import compile_block_ops
from accel.model.engine_check import check_engine
from accel.model.fused_block import fuse_block_ops
from accel.model.loading import load_experts
from accel.sampling.runtime import Runtime


def _inputs(model: torch.nn.Module, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 3, 8, 8, generator=generator).to(dtype)
    text = torch.randn(1, 16, 32, generator=generator).to(dtype)
    return dict(hidden_states=latent, timestep=torch.tensor([700.0]), encoder_hidden_states=text, return_dict=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_forward_equals_diffusers_forward_bit_for_bit(dtype):
    stock = load_experts(TINY).high.to(dtype)
    fused = copy.deepcopy(stock)
    fuse_block_ops(fused, compiled=False)
    # Non-trivial modulation, so a swapped shift/scale/gate would show.
    with torch.no_grad():
        for block in (*stock.blocks, *fused.blocks):
            block.scale_shift_table.copy_(torch.linspace(-1, 1, block.scale_shift_table.numel()).view_as(
                block.scale_shift_table))
    inputs = _inputs(stock, dtype)
    with torch.no_grad():
        expected = stock(**inputs)[0]
        got = fused(**inputs)[0]
    assert torch.equal(got, expected)


def test_compiled_helpers_match_diffusers_forward():
    stock = load_experts(TINY).high
    fused = copy.deepcopy(stock)
    fuse_block_ops(fused, compiled=True)
    inputs = _inputs(stock, torch.float32)
    with torch.no_grad():
        expected = stock(**inputs)[0]
        got = fused(**inputs)[0]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fusing_touches_only_the_loaded_runtime_not_diffusers():
    runtime = Runtime.load(TINY)
    assert all(block.forward.__func__ is not WanTransformerBlock.forward for block in runtime.experts.high.blocks)
    other = load_experts(TINY).high
    assert all(block.forward.__func__ is WanTransformerBlock.forward for block in other.blocks)


def test_without_triton_gpu_blocks_run_unfused_and_compile_is_refused(monkeypatch, caplog):
    cuda = torch.device("cuda")
    monkeypatch.setattr(engine_check, "triton_available", lambda: False)
    assert not compile_block_ops(EngineOptions(), cuda)
    assert "Triton not found" in caplog.text and "triton-windows" in caplog.text
    with pytest.raises(UserInputError, match="torch.compile on a GPU needs Triton"):
        check_engine(EngineOptions(compile=True), TINY, cuda)
    monkeypatch.setattr(engine_check, "triton_available", lambda: True)
    assert compile_block_ops(EngineOptions(), cuda)
    assert not compile_block_ops(EngineOptions(compile=True), cuda)  # whole-block compile fuses them
    assert not compile_block_ops(EngineOptions(), torch.device("cpu"))
