"""Self-attention processor of a Wan block: rotary embedding fused, Ulysses all-to-alls overlapped.

diffusers' processor applies the rotary embedding as eight fp32 element-wise kernels per tensor
(96 ms of a 1.06 s A14B forward at 14,040 tokens on an H200, bench/results/*-forward.md); here
the same function runs fused by torch.compile. Under Ulysses, cache-dit's Wan processor sends q,
k and v through the all-to-all one after the other once all three are projected; cache-dit's
async Ulysses (which overlaps them with the projections) exists for Flux and Qwen-Image but not
for Wan. This processor launches each all-to-all as soon as its tensor is ready, with cache-dit's
own communicator, and attends locally with cache-dit's dispatcher, as its Flux async processor
does. Cross-attention, I2V and fused projections keep the library's processor.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


def rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb (nested in WanAttnProcessor.__call__), unchanged."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanSelfAttnProcessor(WanAttnProcessor):
    def __init__(self, rope: Callable[..., torch.Tensor]):
        super().__init__()
        self.rope = rope

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or rotary_emb is None or attn.add_k_proj is not None \
                or getattr(attn, "fused_projections", False):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        cp_config = getattr(self, "_cp_config", None)
        if cp_config is None:
            return self._local(attn, hidden_states, attention_mask, rotary_emb)
        return self._ulysses(attn, hidden_states, attention_mask, rotary_emb, cp_config)

    def _heads(self, attn, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (attn.heads, -1))

    def _query(self, attn, hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
        return self.rope(self._heads(attn, attn.norm_q(attn.to_q(hidden_states))), *rotary_emb)

    def _key(self, attn, hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
        return self.rope(self._heads(attn, attn.norm_k(attn.to_k(hidden_states))), *rotary_emb)

    def _value(self, attn, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._heads(attn, attn.to_v(hidden_states))

    def _project_out(self, attn, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``like``: a tensor in the dtype the projections run in (never an FP8 all-to-all output)."""
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(like)))

    def _local(self, attn, hidden_states, attention_mask, rotary_emb) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        query = self._query(attn, hidden_states, rotary_emb)
        key = self._key(attn, hidden_states, rotary_emb)
        value = self._value(attn, hidden_states)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=None)
        return self._project_out(attn, out, query)

    def _ulysses(self, attn, hidden_states, attention_mask, rotary_emb, cp_config) -> torch.Tensor:
        from cache_dit.attention import _dispatch_attention_fn
        from cache_dit.distributed.core import _All2AllComm

        comm = _All2AllComm(cp_config)
        # v first (no norm, no rotary), then q, then k: each all-to-all runs while the next tensor
        # is projected. With overlap off each one is waited for before the next is computed.
        sends = ((comm.send_v, lambda: self._value(attn, hidden_states)),
                 (comm.send_q, lambda: self._query(attn, hidden_states, rotary_emb)),
                 (comm.send_k, lambda: self._key(attn, hidden_states, rotary_emb)))
        handles = []
        for send, compute in sends:
            handle = send(compute())
            handles.append(handle if cp_config.ulysses_async else handle.wait())
        value, query, key = (h.wait() if cp_config.ulysses_async else h for h in handles)
        out = _dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, cp_config=None)
        return self._project_out(attn, comm.send_o(out).wait(), hidden_states)
