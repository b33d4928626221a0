"""Ulysses all-to-alls done by the GPUs' copy engines over NVLink, beside the computation.

An NCCL all-to-all is a kernel: it needs SMs, and the GEMMs it should overlap are persistent
kernels that hold every SM until they end, so on two H200s the "overlapped" all-to-alls of a
Ulysses 2 forward still had 39 ms of 470 ms running alone (bench/results/*-forward-ulysses.md).
Here each rank pushes its shards straight into the receiving ranks' memory with
``cudaMemcpyAsync`` on a side stream (copy engines, no SM), through PyTorch's symmetric memory
(peer-mapped buffers, no multicast), and a barrier kernel of one block marks them landed.

One receive buffer per tensor kind and head chunk (v0, q0, k0, o0, ...) is reused by every block:
a peer can only push a kind again after a chain of data it needs from this rank (all output
chunks of the block, then the next block's inputs), which this rank sends after it has consumed
that buffer, so no extra barrier is needed between blocks.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch
import torch.distributed as dist

from .all_to_all import Received

log = logging.getLogger(__name__)


class CopyEngineExchange:
    def __init__(self, group: dist.ProcessGroup, device: torch.device, timeout: timedelta):
        from torch.distributed import _symmetric_memory as symm_mem

        self.symm_mem = symm_mem
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.device = device
        self.timeout_ms = int(timeout.total_seconds() * 1000)
        self.stream = torch.cuda.Stream(device)
        self.buffers: dict[str, tuple[torch.Tensor, object]] = {}
        symm_mem.enable_symm_mem_for_group(group.group_name)

    def _buffer(self, kind: str, numel: int, dtype: torch.dtype):
        held = self.buffers.get(kind)
        if held is None or held[0].numel() < numel or held[0].dtype != dtype:
            torch.cuda.synchronize(self.device)  # nothing may still read or write the old buffer
            tensor = self.symm_mem.empty(numel, dtype=dtype, device=self.device)
            held = (tensor, self.symm_mem.rendezvous(tensor, self.group))
            self.buffers[kind] = held
        return held

    def send(self, kind: str, x: torch.Tensor, finish) -> Received:
        """``x``: contiguous ``[P, ...]``, slice p for rank p. Returns what every rank sent to
        this one, ``[P, ...]`` (slice p from rank p), passed through ``finish`` on ``wait``."""
        tensor, handle = self._buffer(kind, x.numel(), x.dtype)
        chunk = x.numel() // self.world
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        x.record_stream(self.stream)  # x is read on the side stream after the caller drops it
        with torch.cuda.stream(self.stream):
            for step in range(self.world):
                peer = (self.rank + step) % self.world
                remote = handle.get_buffer(peer, (chunk,), x.dtype, self.rank * chunk)
                remote.copy_(x[peer].reshape(-1))
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)  # every push into every rank landed
            done = torch.cuda.Event()
            done.record(self.stream)
        received = tensor[: x.numel()].view(x.shape)
        return Landed(received, done, finish)


class Landed(Received):
    def __init__(self, tensor: torch.Tensor, done: torch.cuda.Event, finish):
        super().__init__(tensor, finish)
        self.done = done

    def wait(self) -> torch.Tensor:
        torch.cuda.current_stream(self.tensor.device).wait_event(self.done)
        return self.finish(self.tensor)


def attach_copy_engine(modules, group: dist.ProcessGroup, device: torch.device,
                       timeout: timedelta) -> CopyEngineExchange | None:
    """Give the pack's self-attention processors of ``modules`` one shared exchange, if every
    rank of ``group`` can map its peers' memory; otherwise (no P2P between these GPUs, no
    symmetric memory in this PyTorch) they keep NCCL's all-to-all. The ranks decide together:
    one rank on copies and one on NCCL would wait for each other forever."""
    from .attention import self_attention_processors

    exchange, error = None, None
    try:
        exchange = CopyEngineExchange(group, device, timeout)
        exchange._buffer("probe", dist.get_world_size(group), torch.float32)
    except (RuntimeError, ImportError, AttributeError) as failure:
        error = failure
    usable = torch.tensor([int(error is None)], device=device)
    dist.all_reduce(usable, op=dist.ReduceOp.MIN, group=group)
    if not usable.item():
        log.warning("Ulysses all-to-all through NCCL: copy engines unavailable (%s)", error or "on another rank")
        return None
    for processor in self_attention_processors(modules):
        processor.copy_engine = exchange
    return exchange
