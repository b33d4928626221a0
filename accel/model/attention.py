"""Self-attention processor of a Wan block: diffusers' math with the rotary embedding fused.

One process attends locally with diffusers' dispatcher. Under Ulysses (cache-dit's context
parallelism sets the processor's ``_cp_config``) the attention is handed to ``ulysses``, the
sequence-parallel attention that ``accel/parallel/ulysses/enable.py`` installs. Cross-attention,
I2V image branches and fused projections keep the library's processor.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .quantized_attention import quantized_attention


class SequenceParallelAttention(Protocol):
    def __call__(self, processor: "WanSelfAttnProcessor", attn, hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None, rotary_emb, cp_config) -> torch.Tensor: ...


def self_attention_processors(modules) -> list["WanSelfAttnProcessor"]:
    """The pack's self-attention processors of the blocks of ``modules`` (experts)."""
    return [block.attn1.processor for module in modules for block in module.blocks
            if isinstance(block.attn1.processor, WanSelfAttnProcessor)]


class WanSelfAttnProcessor(WanAttnProcessor):
    def __init__(self, rope: Callable[..., torch.Tensor], rope_head_major: Callable[..., torch.Tensor]):
        super().__init__()
        self.rope = rope
        self.rope_head_major = rope_head_major  # rotary written into the Ulysses send layout
        self.ulysses: SequenceParallelAttention | None = None
        self.quantized_pv: str | None = None  # set where attention_backend is int8 / int8_fp8 and it runs

    def quantized(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The quantized kernel's output where it is on, else None (the dispatcher's backend runs)."""
        if self.quantized_pv is None or attention_mask is not None:
            return None
        return quantized_attention(query, key, value, self.quantized_pv)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or rotary_emb is None or attn.add_k_proj is not None \
                or getattr(attn, "fused_projections", False):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        cp_config = getattr(self, "_cp_config", None)
        if cp_config is None:
            return self._local(attn, hidden_states, attention_mask, rotary_emb)
        return self.ulysses(self, attn, hidden_states, attention_mask, rotary_emb, cp_config)

    def heads(self, attn, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (attn.heads, -1))

    def query(self, attn, hidden_states: torch.Tensor, rotary_emb, rope=None) -> torch.Tensor:
        return (rope or self.rope)(self.heads(attn, attn.norm_q(attn.to_q(hidden_states))), *rotary_emb)

    def key(self, attn, hidden_states: torch.Tensor, rotary_emb, rope=None) -> torch.Tensor:
        return (rope or self.rope)(self.heads(attn, attn.norm_k(attn.to_k(hidden_states))), *rotary_emb)

    def value(self, attn, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.heads(attn, attn.to_v(hidden_states))

    def project_out(self, attn, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``like``: a tensor in the dtype the projections run in (never an FP8 all-to-all output)."""
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(like)))

    def _local(self, attn, hidden_states, attention_mask, rotary_emb) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        query = self.query(attn, hidden_states, rotary_emb)
        key = self.key(attn, hidden_states, rotary_emb)
        value = self.value(attn, hidden_states)
        out = self.quantized(query, key, value, attention_mask)
        if out is None:
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend, parallel_config=None)
        return self.project_out(attn, out, query)
