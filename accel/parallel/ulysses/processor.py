"""Ulysses self-attention of a Wan block, each all-to-all launched as soon as its tensor is ready.

cache-dit's Wan processor sends q, k and v through the all-to-all one after the other once all
three are projected; its async Ulysses (which overlaps them with the projections) exists for
Flux and Qwen-Image but not for Wan. Here v is sent while q is projected, q while k is, and the
attention runs on each rank's heads with cache-dit's dispatcher (so the chosen attention
backend runs on each rank's heads). Heads may be attended and exchanged in chunks, so that one
chunk's all-to-all runs beside another's attention. What moves the tensors is a ``Transport``
(transports.py), chosen per call: cache-dit's for uneven shards and FP8 payloads, NCCL inside
compiled blocks, else the copy engines where the group has them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .transports import CacheDitTransport, CopyEngines, NcclHeadMajor, Transport


class UlyssesSelfAttention:
    def __init__(self, group: dist.ProcessGroup, head_chunks: int = 1, copy_engine=None):
        self.head_chunks = head_chunks
        self.nccl = NcclHeadMajor(group)
        self.copies = CopyEngines(group, copy_engine) if copy_engine is not None else None

    def transport(self, cp_config) -> Transport:
        if cp_config.ulysses_anything or cp_config.ulysses_float8:  # cache-dit's padding / FP8 kernels
            return CacheDitTransport(cp_config)
        if self.copies is None or torch.compiler.is_compiling():
            return self.nccl
        return self.copies

    def chunks(self, heads: int) -> int:
        here = heads // self.nccl.world
        return max(c for c in range(1, self.head_chunks + 1) if here % c == 0)

    def __call__(self, processor, attn, hidden_states, attention_mask, rotary_emb, cp_config) -> torch.Tensor:
        from cache_dit.attention import _dispatch_attention_fn

        plan = self.transport(cp_config).exchanges(processor, attn, hidden_states, rotary_emb,
                                                   self.chunks(attn.heads))
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
            out = processor.quantized(query, key, value, attention_mask)
            if out is None:
                out = _dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False, backend=processor._attention_backend, cp_config=None)
            outs.append(plan.send_out(out, index))
        return processor.project_out(attn, plan.assemble(outs), hidden_states)
