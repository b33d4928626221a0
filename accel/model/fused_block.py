"""Wan transformer block with its fp32 norm / modulation / gated-residual lines fused.

diffusers' ``WanTransformerBlock.forward`` writes each of those lines as a chain of fp32 ops
(``x.float()``, layer norm, ``* (1 + scale)``, ``+ shift``, ``type_as``; ``x.float() + out * gate``,
``type_as``): about 20 full passes over the [tokens, 5120] activation per block in eager mode,
the eager gap to ComfyUI's WanModel (see bench/results/*-findings.md). The replacement below
runs the same math in the same order through three helpers that torch.compile turns into one
kernel each on CUDA; the self-attention gets the processor of attention.py (rotary
embedding fused the same way). Both are bound per block instance (the library's classes are
untouched: the benchmark's plain diffusers baseline and anything else in the process keep
diffusers' code).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..parallel.ulysses.head_major import rotary_head_major
from .attention import WanSelfAttnProcessor
from .rotary import rotary


def modulated_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    return (F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * (1 + scale) + shift).type_as(x)


def affine_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps).type_as(x)


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return (x.float() + out.float() * gate).type_as(x)


@dataclass(frozen=True)
class BlockOps:
    modulated_norm: Callable[..., torch.Tensor]
    affine_norm: Callable[..., torch.Tensor]
    gated_residual: Callable[..., torch.Tensor]
    rotary: Callable[..., torch.Tensor]
    rotary_head_major: Callable[..., torch.Tensor]

    @classmethod
    def build(cls, compiled: bool) -> "BlockOps":
        ops = (modulated_norm, affine_norm, gated_residual, rotary, rotary_head_major)
        return cls(*(torch.compile(op) if compiled else op for op in ops))


def _fused_forward(ops: BlockOps):
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rotary_emb: torch.Tensor) -> torch.Tensor:
        if temb.ndim != 3:  # Wan2.2 TI2V's per-token modulation: diffusers' own forward
            return type(self).forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb)
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        x = hidden_states
        attn = self.attn1(ops.modulated_norm(x, scale, shift, self.norm1.eps), None, None, rotary_emb)
        x = ops.gated_residual(x, attn, gate)
        normed = ops.affine_norm(x, self.norm2.weight, self.norm2.bias, self.norm2.eps) \
            if isinstance(self.norm2, torch.nn.LayerNorm) else x
        x = x + self.attn2(normed, encoder_hidden_states, None, None)
        out = self.ffn(ops.modulated_norm(x, c_scale, c_shift, self.norm3.eps))
        return ops.gated_residual(x, out, c_gate)

    return forward


def fuse_block_ops(model: torch.nn.Module, compiled: bool) -> None:
    """Bind the fused forward and self-attention processor to every block of a
    WanTransformer3DModel. ``compiled``: fuse with torch.compile (CUDA eager runs); without it the
    helpers run op by op, exactly as diffusers does (CPU, and whole-block compile, which fuses
    them itself)."""
    ops = BlockOps.build(compiled)
    forward = _fused_forward(ops)
    for block in model.blocks:
        block.forward = types.MethodType(forward, block)
        block.attn1.set_processor(WanSelfAttnProcessor(ops.rotary, ops.rotary_head_major))
