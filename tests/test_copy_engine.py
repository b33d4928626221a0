"""The copy-engine all-to-all is chosen by all ranks together (CPU, 2 gloo ranks).

Its transfers need CUDA peer memory (checked on GPUs by bench/parallel_check.py and
bench/forward_profile.py); what must hold everywhere is the decision: one rank on copies and one
on NCCL would wait for each other forever, so a rank that cannot map peer memory sends every
rank to NCCL. On a GPU, the pitched copies are checked against torch's strided copy.
"""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import gloo_rank

from accel.parallel.launch import free_port


class FakeExchange:
    """Stands in for a rank whose peer memory maps (no CUDA here)."""

    def __init__(self, group, device, timeout):
        self.group = group

    def _buffer(self, kind, numel, dtype):
        return None


def _choose(rank: int, mappable: list[bool]) -> tuple[int, bool, bool]:
    import accel.parallel.ulysses.copy_engine as copy_engine
    from accel.parallel.ulysses.processor import UlyssesSelfAttention

    if mappable[rank]:
        copy_engine.CopyEngineExchange = FakeExchange
    exchange = copy_engine.copy_engine_for(dist.group.WORLD, torch.device("cpu"), timedelta(seconds=30))
    attention = UlyssesSelfAttention(dist.group.WORLD, copy_engine=exchange)
    return rank, exchange is not None, attention.copies is not None


@pytest.mark.parametrize("mappable, expected", [
    ([False, True], False),  # one rank cannot map: both use NCCL
    ([True, True], True),
    ([False, False], False),
], ids=["one-rank-fails", "both-map", "neither-maps"])
def test_ranks_choose_the_transport_together(mappable, expected):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(gloo_rank, args=(free_port(), _choose, queue, mappable), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    assert results == [(0, expected, expected), (1, expected, expected)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy engines' pitched copies need a CUDA GPU")
@pytest.mark.parametrize("strided_source", [True, False], ids=["strided-rows-to-contiguous", "rows-to-pitched"])
def test_rows_land_where_a_strided_copy_would_put_them(strided_source):
    from accel.parallel.ulysses.copy_engine import Piece, copy_rows

    rows = torch.randn(7, 40, device="cuda", dtype=torch.bfloat16)
    rows = rows[:, 8:24] if strided_source else rows[:, :16].contiguous()
    piece = Piece(0, rows, offset=5, pitch=16 if strided_source else 30)
    buffer = torch.zeros(300, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        copy_rows(buffer, piece, stream)
    torch.cuda.synchronize()
    expected = torch.zeros_like(buffer)
    expected.as_strided(tuple(rows.shape), (piece.pitch, 1), piece.offset).copy_(rows)
    assert torch.equal(buffer, expected)


@pytest.mark.parametrize("offset, pitch, size, dtype", [
    (5, 16, 100, torch.float32),  # the last row would end past the buffer
    (-1, 16, 300, torch.float32),  # before its start
    (0, 8, 300, torch.float32),  # rows overlapping each other
    (0, 16, 300, torch.bfloat16),  # another dtype than the buffer's
], ids=["past-the-end", "negative-offset", "pitch-below-width", "dtype"])
def test_rows_that_do_not_fit_the_receive_buffer_are_refused_before_any_copy(offset, pitch, size, dtype):
    from accel.parallel.ulysses.copy_engine import Piece, copy_rows

    rows = torch.randn(7, 16).to(dtype)
    buffer = torch.zeros(size)
    with pytest.raises(ValueError, match="do not fit"):
        copy_rows(buffer, Piece(0, rows, offset=offset, pitch=pitch), stream=None)
    assert torch.equal(buffer, torch.zeros(size))


def test_receive_buffers_are_counted_for_the_peak_memory_figures(monkeypatch):
    import accel.parallel.ulysses.copy_engine as copy_engine
    from accel.parallel.ulysses import enable
    from accel.parallel.ulysses.processor import UlyssesSelfAttention

    exchange = copy_engine.CopyEngineExchange.__new__(copy_engine.CopyEngineExchange)
    exchange.buffers = {"q0": (torch.zeros(100, dtype=torch.bfloat16), None), "o": (torch.zeros(10), None)}
    assert exchange.buffer_bytes == 100 * 2 + 10 * 4
    attention = UlyssesSelfAttention.__new__(UlyssesSelfAttention)
    attention.copies = types.SimpleNamespace(engine=exchange)
    processors = [types.SimpleNamespace(ulysses=attention)] * 3  # one exchange shared by every block
    monkeypatch.setattr(enable, "self_attention_processors", lambda modules: processors)
    experts = types.SimpleNamespace(high=None, low=None)
    assert enable.outside_allocator_bytes(experts) == 240  # counted once
