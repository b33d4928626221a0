"""How one block's v, q, k and attention output cross the Ulysses group: one ``Transport``
protocol and its three implementations.

- ``CacheDitTransport``: cache-dit's own communicator, for what only it handles (uneven shards
  with padding, FP8 payloads);
- ``NcclHeadMajor``: NCCL all-to-alls in the head-major layout (head_major.py: three of
  cache-dit's five copies per block fused away); also inside compiled blocks, where only NCCL's
  functional collectives trace;
- ``CopyEngines``: the GPUs' copy engines push strided rows into the peers' memory
  (copy_engine.py): v leaves straight from its projection and the outputs land in head order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.distributed as dist

from .head_major import (
    all_tokens,
    assemble_heads,
    head_major,
    heads_to_sequence,
    sequence_to_heads,
)


@dataclass
class Exchanges:
    """``inputs``: (send(chunk, index), compute() -> the tensor as [C, ...] chunks) for v, q, k in
    launch order; ``send_out`` sends one chunk of the attention output; ``assemble`` waits for
    the sent outputs and returns this rank's [B, S, H, D]."""

    inputs: tuple[tuple[Callable, Callable[[], torch.Tensor]], ...]
    send_out: Callable[[torch.Tensor, int], object]
    assemble: Callable[[list], torch.Tensor]
    chunks: int


class Transport(Protocol):
    def exchanges(self, processor, attn, hidden_states: torch.Tensor, rotary_emb, chunks: int) -> Exchanges: ...


class CacheDitTransport:
    def __init__(self, cp_config):
        from cache_dit.distributed.core import _All2AllComm

        self.comm = _All2AllComm(cp_config)

    def exchanges(self, processor, attn, hidden_states, rotary_emb, chunks: int) -> Exchanges:
        comm = self.comm
        whole = lambda compute: lambda: compute().unsqueeze(0)  # noqa: E731 (one chunk: all heads)
        return Exchanges(
            inputs=((lambda x, _: comm.send_v(x), whole(lambda: processor.value(attn, hidden_states))),
                    (lambda x, _: comm.send_q(x), whole(lambda: processor.query(attn, hidden_states, rotary_emb))),
                    (lambda x, _: comm.send_k(x), whole(lambda: processor.key(attn, hidden_states, rotary_emb)))),
            send_out=lambda out, _: comm.send_o(out), assemble=lambda outs: outs[0].wait(), chunks=1)


class NcclHeadMajor:
    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.world = dist.get_world_size(group)

    def _head_major_qk(self, processor, attn, hidden_states, rotary_emb, chunks: int, kind: str, send):
        rope = functools.partial(processor.rope_head_major, world=self.world, chunks=chunks)
        compute = processor.query if kind == "q" else processor.key
        return send(kind), lambda: compute(attn, hidden_states, rotary_emb, rope)

    def _send(self, engine):
        def send(kind: str):  # ``kind`` + chunk index names the copy engine's receive buffer
            return lambda x, index: sequence_to_heads(x, self.group, f"{kind}{index}", engine)
        return send

    def exchanges(self, processor, attn, hidden_states, rotary_emb, chunks: int) -> Exchanges:
        send = self._send(None)
        value = (send("v"), lambda: head_major(processor.value(attn, hidden_states), self.world, chunks))
        return Exchanges(
            inputs=(value, *(self._head_major_qk(processor, attn, hidden_states, rotary_emb, chunks, kind, send)
                             for kind in ("q", "k"))),
            send_out=lambda out, index: heads_to_sequence(out, self.group),
            assemble=assemble_heads, chunks=chunks)


class CopyEngines(NcclHeadMajor):
    """q and k as NCCL's head-major layout, moved by copy engines; v and the output as strided rows."""

    def __init__(self, group: dist.ProcessGroup, engine):
        super().__init__(group)
        self.engine = engine
        self.rank = dist.get_rank(group)

    def exchanges(self, processor, attn, hidden_states, rotary_emb, chunks: int) -> Exchanges:
        engine, world = self.engine, self.world
        send = self._send(engine)
        first_head = self.rank * (attn.heads // world)
        value = (lambda x, index: engine.send_head_groups(f"v{index}", x, all_tokens),
                 lambda: processor.value(attn, hidden_states).unflatten(2, (world, chunks, -1)).unbind(3))
        return Exchanges(
            inputs=(value, *(self._head_major_qk(processor, attn, hidden_states, rotary_emb, chunks, kind, send)
                             for kind in ("q", "k"))),
            send_out=lambda out, index: engine.send_sequence_parts("o", out, first_head + index * out.shape[2],
                                                                   attn.heads),
            assemble=lambda outs: [landed.wait() for landed in outs][-1], chunks=chunks)
