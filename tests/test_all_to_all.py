"""The Ulysses exchange layouts, simulated for P ranks in one process: every rank attends exactly its
heads over all tokens, chunk by chunk, and gets back its own tokens with every head in order."""

from __future__ import annotations

import types

import pytest
import torch

import accel.all_to_all as all_to_all


class SimulatedExchange:
    """Stands in for the transport of all ranks at once: what rank r sends for ``kind`` is kept,
    and what rank r receives is slice r of every rank's send, in rank order."""

    def __init__(self, world: int):
        self.world, self.sent, self.receiver = world, {}, 0

    def send(self, kind, x, finish):
        self.sent.setdefault(kind, []).append(x)
        return types.SimpleNamespace(kind=kind, finish=finish)

    def receive(self, handle, rank: int) -> torch.Tensor:
        return handle.finish(torch.stack([sent[rank] for sent in self.sent[handle.kind]]))


@pytest.mark.parametrize("world,chunks", [(2, 1), (2, 2), (4, 2), (2, 3)])
def test_chunked_exchange_gives_each_rank_its_heads_and_returns_its_tokens(monkeypatch, world, chunks):
    batch, seq, heads, dim = 1, 3, world * chunks * 2, 4
    monkeypatch.setattr(all_to_all.dist, "get_world_size", lambda group: world)
    full = torch.randn(batch, world * seq, heads, dim)
    shards = full.chunk(world, dim=1)
    exchange = SimulatedExchange(world)
    sent = [[all_to_all.sequence_to_heads(all_to_all.head_major(shard, world, chunks)[c], None, f"q{c}", exchange)
             for c in range(chunks)] for shard in shards]
    per_rank = heads // world
    width = per_rank // chunks
    outs = []
    for rank in range(world):
        rank_outs = []
        for c in range(chunks):
            received = exchange.receive(sent[rank][c], rank)  # [B, all tokens, this chunk's heads, D]
            first = rank * per_rank + c * width
            assert torch.equal(received, full[:, :, first:first + width])
            rank_outs.append(all_to_all.heads_to_sequence(received, None, f"o{c}", exchange))  # identity attention
        outs.append(rank_outs)
    for rank in range(world):
        landed = [types.SimpleNamespace(wait=lambda h=h, r=rank: exchange.receive(h, r)) for h in outs[rank]]
        assert torch.equal(all_to_all.assemble_heads(landed), shards[rank])
