"""Self-attention processor of a Wan block: rotary embedding fused, Ulysses all-to-alls overlapped.

diffusers' processor applies the rotary embedding as eight fp32 element-wise kernels per tensor
(96 ms of a 1.06 s A14B forward at 14,040 tokens on an H200, bench/results/*-forward.md); here
the same function runs fused by torch.compile. Under Ulysses, cache-dit's Wan processor sends q,
k and v through the all-to-all one after the other once all three are projected; cache-dit's
async Ulysses (which overlaps them with the projections) exists for Flux and Qwen-Image but not
for Wan. This processor launches each all-to-all as soon as its tensor is ready, with cache-dit's
own communicator, and attends locally with cache-dit's dispatcher, as its Flux async processor
does; with even shards and bf16 payloads the all-to-alls are those of accel/all_to_all.py (the
same exchange with three of cache-dit's five copies per block fused away), moved by the GPUs'
copy engines when ``copy_engine`` is set (accel/copy_engine.py), else by NCCL. Cross-attention,
I2V and fused projections keep the library's processor.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .all_to_all import head_major, heads_to_sequence, sequence_to_heads


def rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb (nested in WanAttnProcessor.__call__), unchanged."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rotary_head_major(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor, world: int) -> torch.Tensor:
    """The rotary embedding written straight into the all-to-all's send layout (one kernel compiled)."""
    return head_major(rotary(x, freqs_cos, freqs_sin), world)


class WanSelfAttnProcessor(WanAttnProcessor):
    def __init__(self, rope: Callable[..., torch.Tensor], rope_head_major: Callable[..., torch.Tensor]):
        super().__init__()
        self.rope = rope
        self.rope_head_major = rope_head_major
        self.copy_engine = None  # a CopyEngineExchange (accel/copy_engine.py) on NVLinked GPUs

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

    def _query(self, attn, hidden_states: torch.Tensor, rotary_emb, rope=None) -> torch.Tensor:
        return (rope or self.rope)(self._heads(attn, attn.norm_q(attn.to_q(hidden_states))), *rotary_emb)

    def _key(self, attn, hidden_states: torch.Tensor, rotary_emb, rope=None) -> torch.Tensor:
        return (rope or self.rope)(self._heads(attn, attn.norm_k(attn.to_k(hidden_states))), *rotary_emb)

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

    def _exchanges(self, attn, hidden_states, rotary_emb, cp_config):
        """The (send, compute) pairs of v, q and k in launch order, and the output's send."""
        if cp_config.ulysses_anything or cp_config.ulysses_float8:  # cache-dit's padding / FP8 kernels
            return self._cache_dit_exchanges(attn, hidden_states, rotary_emb, cp_config)
        return self._head_major_exchanges(attn, hidden_states, rotary_emb, cp_config)

    def _cache_dit_exchanges(self, attn, hidden_states, rotary_emb, cp_config):
        from cache_dit.distributed.core import _All2AllComm

        comm = _All2AllComm(cp_config)
        return ((comm.send_v, lambda: self._value(attn, hidden_states)),
                (comm.send_q, lambda: self._query(attn, hidden_states, rotary_emb)),
                (comm.send_k, lambda: self._key(attn, hidden_states, rotary_emb))), comm.send_o

    def _head_major_exchanges(self, attn, hidden_states, rotary_emb, cp_config):
        group = cp_config._ulysses_mesh.get_group()
        world = torch.distributed.get_world_size(group)
        rope = functools.partial(self.rope_head_major, world=world)
        # Inside a compiled block only NCCL's functional collectives trace.
        engine = None if torch.compiler.is_compiling() else self.copy_engine
        send = functools.partial(sequence_to_heads, group=group, copy_engine=engine)
        return ((functools.partial(send, kind="v"), lambda: head_major(self._value(attn, hidden_states), world)),
                (functools.partial(send, kind="q"), lambda: self._query(attn, hidden_states, rotary_emb, rope)),
                (functools.partial(send, kind="k"), lambda: self._key(attn, hidden_states, rotary_emb, rope))), \
            functools.partial(heads_to_sequence, group=group, copy_engine=engine)

    def _ulysses(self, attn, hidden_states, attention_mask, rotary_emb, cp_config) -> torch.Tensor:
        from cache_dit.attention import _dispatch_attention_fn

        sends, send_o = self._exchanges(attn, hidden_states, rotary_emb, cp_config)
        # v first (no norm, no rotary), then q, then k: each all-to-all runs while the next tensor
        # is projected. With overlap off each one is waited for before the next is computed.
        handles = []
        for send, compute in sends:
            handle = send(compute())
            handles.append(handle if cp_config.ulysses_async else handle.wait())
        value, query, key = (h.wait() if cp_config.ulysses_async else h for h in handles)
        out = _dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, cp_config=None)
        return self._project_out(attn, send_o(out).wait(), hidden_states)
