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
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .all_to_all import all_tokens, assemble_heads, head_major, heads_to_sequence, sequence_to_heads


def rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb (nested in WanAttnProcessor.__call__), unchanged."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rotary_head_major(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor, world: int,
                      chunks: int = 1) -> torch.Tensor:
    """The rotary embedding written straight into the all-to-all's send layout (one kernel compiled)."""
    return head_major(rotary(x, freqs_cos, freqs_sin), world, chunks)


@dataclass
class Exchanges:
    """How one block's v, q, k and attention output cross the Ulysses group, in head chunks.
    ``inputs``: (send(chunk, index), compute() -> the tensor as [C, ...] chunks), in launch order."""

    inputs: tuple[tuple[Callable, Callable[[], torch.Tensor]], ...]
    send_out: Callable[[torch.Tensor, int], object]
    assemble: Callable[[list], torch.Tensor]
    chunks: int


def self_attention_processors(modules) -> Iterator["WanSelfAttnProcessor"]:
    """The pack's self-attention processors of the blocks of ``modules`` (experts)."""
    for module in modules:
        for block in module.blocks:
            if isinstance(block.attn1.processor, WanSelfAttnProcessor):
                yield block.attn1.processor


class WanSelfAttnProcessor(WanAttnProcessor):
    def __init__(self, rope: Callable[..., torch.Tensor], rope_head_major: Callable[..., torch.Tensor]):
        super().__init__()
        self.rope = rope
        self.rope_head_major = rope_head_major
        self.copy_engine = None  # a CopyEngineExchange (accel/copy_engine.py) on NVLinked GPUs
        self.head_chunks = 1  # Ulysses: attend and exchange a rank's heads in this many chunks (at most)

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

    def _exchanges(self, attn, hidden_states, rotary_emb, cp_config) -> Exchanges:
        if cp_config.ulysses_anything or cp_config.ulysses_float8:  # cache-dit's padding / FP8 kernels
            return self._cache_dit_exchanges(attn, hidden_states, rotary_emb, cp_config)
        return self._head_major_exchanges(attn, hidden_states, rotary_emb, cp_config)

    def _cache_dit_exchanges(self, attn, hidden_states, rotary_emb, cp_config) -> Exchanges:
        from cache_dit.distributed.core import _All2AllComm

        comm = _All2AllComm(cp_config)
        whole = lambda compute: lambda: compute().unsqueeze(0)  # noqa: E731 (one chunk: all heads)
        return Exchanges(
            inputs=((lambda x, _: comm.send_v(x), whole(lambda: self._value(attn, hidden_states))),
                    (lambda x, _: comm.send_q(x), whole(lambda: self._query(attn, hidden_states, rotary_emb))),
                    (lambda x, _: comm.send_k(x), whole(lambda: self._key(attn, hidden_states, rotary_emb)))),
            send_out=lambda out, _: comm.send_o(out), assemble=lambda outs: outs[0].wait(), chunks=1)

    def _head_major_exchanges(self, attn, hidden_states, rotary_emb, cp_config) -> Exchanges:
        group = cp_config._ulysses_mesh.get_group()
        world = torch.distributed.get_world_size(group)
        here = attn.heads // world
        chunks = max(c for c in range(1, self.head_chunks + 1) if here % c == 0)
        rope = functools.partial(self.rope_head_major, world=world, chunks=chunks)
        # Inside a compiled block only NCCL's functional collectives trace.
        engine = None if torch.compiler.is_compiling() else self.copy_engine

        def send(name: str):  # ``name`` + chunk index names the copy engine's receive buffer
            return lambda x, index: sequence_to_heads(x, group, f"{name}{index}", engine)

        queries = (send("q"), lambda: self._query(attn, hidden_states, rotary_emb, rope))
        keys = (send("k"), lambda: self._key(attn, hidden_states, rotary_emb, rope))
        if engine is None:
            return Exchanges(
                inputs=((send("v"), lambda: head_major(self._value(attn, hidden_states), world, chunks)), queries, keys),
                send_out=lambda out, index: heads_to_sequence(out, group),
                assemble=assemble_heads, chunks=chunks)
        # Copy engines move strided rows: v leaves straight from its projection and the outputs
        # land in head order, with no layout copy on the SMs (accel/copy_engine.py).
        first_head = torch.distributed.get_rank(group) * here
        return Exchanges(
            inputs=((lambda x, index: engine.send_head_groups(f"v{index}", x, all_tokens),
                     lambda: self._value(attn, hidden_states).unflatten(2, (world, chunks, -1)).unbind(3)),
                    queries, keys),
            send_out=lambda out, index: engine.send_sequence_parts("o", out, first_head + index * out.shape[2],
                                                                   attn.heads),
            assemble=lambda outs: [landed.wait() for landed in outs][-1], chunks=chunks)

    def _ulysses(self, attn, hidden_states, attention_mask, rotary_emb, cp_config) -> torch.Tensor:
        from cache_dit.attention import _dispatch_attention_fn

        plan = self._exchanges(attn, hidden_states, rotary_emb, cp_config)
        # v first (no norm, no rotary), then q, then k: each all-to-all runs while the next tensor
        # is projected. With overlap off each one is waited for before the next is computed.
        overlap = cp_config.ulysses_async
        pending = []
        for send, compute in plan.inputs:
            stacked = compute()
            handles = [send(stacked[index], index) for index in range(plan.chunks)]
            pending.append(handles if overlap else [handle.wait() for handle in handles])
        outs = []
        for index in range(plan.chunks):  # chunk i+1 lands, chunk i-1's output leaves, while chunk i is attended
            value, query, key = (handles[index].wait() if overlap else handles[index] for handles in pending)
            out = _dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                         backend=self._attention_backend, cp_config=None)
            outs.append(plan.send_out(out, index))
        return self._project_out(attn, plan.assemble(outs), hidden_states)
