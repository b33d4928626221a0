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
    exchange = SimulatedExchange(world)
    monkeypatch.setattr(all_to_all, "_exchange", lambda x, group, finish, engine, kind: exchange.send(kind, x, finish))
    full = torch.randn(batch, world * seq, heads, dim)
    shards = full.chunk(world, dim=1)
    sent = [[all_to_all.sequence_to_heads(all_to_all.head_major(shard, world, chunks)[c], None, f"q{c}")
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
            rank_outs.append(all_to_all.heads_to_sequence(received, None, f"o{c}"))  # identity attention
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
    from accel.copy_engine import head_group_pieces, sequence_part_pieces

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
