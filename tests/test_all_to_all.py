"""The Ulysses exchange layouts, simulated for P ranks in one process: every rank attends exactly its
heads over all tokens, chunk by chunk, and gets back its own tokens with every head in order."""

from __future__ import annotations

import collections
import types

import pytest
import torch

import accel.parallel.ulysses.head_major as all_to_all


class SimulatedExchange:
    """Stands in for the transport of all ranks at once. ``sender`` is the rank whose sends
    follow; a rank's n-th send of a kind meets every other rank's n-th, and what rank r receives
    is slice r of each of them, in rank order."""

    def __init__(self):
        self.sent: dict[tuple, dict[int, torch.Tensor]] = {}
        self.count: collections.Counter = collections.Counter()
        self.sender = 0

    def send(self, kind, x, finish):
        key = (kind, self.count[(kind, self.sender)])
        self.count[(kind, self.sender)] += 1
        self.sent.setdefault(key, {})[self.sender] = x
        return types.SimpleNamespace(key=key, finish=finish)

    def receive(self, handle, rank: int) -> torch.Tensor:
        sent = self.sent[handle.key]
        return handle.finish(torch.stack([sent[sender][rank] for sender in sorted(sent)]))


@pytest.mark.parametrize("world,chunks", [(2, 1), (2, 2), (4, 2), (2, 3)])
def test_chunked_exchange_gives_each_rank_its_heads_and_returns_its_tokens(monkeypatch, world, chunks):
    batch, seq, heads, dim = 1, 3, world * chunks * 2, 4
    monkeypatch.setattr(all_to_all.dist, "get_world_size", lambda group: world)
    exchange = SimulatedExchange()
    monkeypatch.setattr(all_to_all, "_exchange", lambda x, group, finish, engine, kind: exchange.send(kind, x, finish))
    full = torch.randn(batch, world * seq, heads, dim)
    shards = full.chunk(world, dim=1)
    sent = []
    for rank, shard in enumerate(shards):
        exchange.sender = rank
        sent.append([all_to_all.sequence_to_heads(all_to_all.head_major(shard, world, chunks)[c], None, f"q{c}")
                     for c in range(chunks)])
    per_rank = heads // world
    width = per_rank // chunks
    outs = []
    for rank in range(world):
        exchange.sender = rank
        rank_outs = []
        for c in range(chunks):
            received = exchange.receive(sent[rank][c], rank)  # [B, all tokens, this chunk's heads, D]
            first = rank * per_rank + c * width
            assert torch.equal(received, full[:, :, first:first + width])
            rank_outs.append(all_to_all.heads_to_sequence(received, None))  # identity attention
        outs.append(rank_outs)
    for rank in range(world):
        landed = [types.SimpleNamespace(wait=lambda h=h, r=rank: exchange.receive(h, r)) for h in outs[rank]]
        assert torch.equal(all_to_all.assemble_heads(landed), shards[rank])


def land(buffers: list[torch.Tensor], pieces) -> None:
    """What the copy engines do with a rank's pieces (accel/copy_engine.copy_rows), on CPU."""
    for piece in pieces:
        height, width = piece.rows.shape
        buffers[piece.peer].as_strided((height, width), (piece.pitch, 1), piece.offset).copy_(piece.rows)


@pytest.mark.parametrize("world,chunks,batch", [(2, 1, 1), (2, 2, 1), (4, 2, 1), (2, 1, 2)])
def test_copy_engine_rows_give_each_rank_its_heads_and_land_outputs_in_head_order(world, chunks, batch):
    """v leaves as strided rows of its projection, the outputs land in [B, S, H, D]: no layout copies."""
    from accel.parallel.ulysses.copy_engine import (
        head_group_pieces,
        sequence_part_pieces,
    )

    seq, heads, dim = 3, world * chunks * 2, 4
    full = torch.randn(batch, world * seq, heads, dim)
    shards = full.chunk(world, dim=1)
    per_rank, width = heads // world, heads // world // chunks
    outputs = [torch.full((batch * seq * heads * dim,), float("nan")) for _ in range(world)]
    for c in range(chunks):
        values = [torch.full((world * batch * seq * width * dim,), float("nan")) for _ in range(world)]
        for rank, shard in enumerate(shards):
            land(values, head_group_pieces(shard.unflatten(2, (world, chunks, -1)).unbind(3)[c], rank))
        for rank in range(world):
            received = all_to_all.all_tokens(values[rank].view(world, batch, seq, width, dim))
            first = rank * per_rank + c * width
            assert torch.equal(received, full[:, :, first:first + width])
            land(outputs, sequence_part_pieces(received, rank, world, first, heads))  # identity attention
    for rank in range(world):
        assert torch.equal(outputs[rank].view(batch, seq, heads, dim), shards[rank])
