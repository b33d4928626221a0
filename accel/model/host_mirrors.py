"""Host memory for the swap / stream plans' mirrors and shard's loading copy (residency.py),
handed out in slices of chunks.

- ``PinnedArena``: one worker's own chunks. PyTorch's pinned allocator rounds each allocation up
  to a power of two (up to 2x the host RAM for per-tensor mirrors); chunks of a power-of-two size
  lose nothing but the last chunk's unused tail.
- ``SharedArena``: the chunks are /dev/shm files that every worker of the group maps, so a group
  holds one host copy of the experts instead of one per worker (4 GPUs, bf16 A14B: 57 GB
  instead of 228 GB). The group's first rank fills the mirrors; on GPUs every rank registers the
  mapping with CUDA (page-locked, as the pinned allocator's chunks). The files are unlinked once
  every rank has mapped them: nothing is left behind, whatever becomes of the group. Where
  /dev/shm has no room (a container's 64 MB), every rank keeps its own pinned chunks
  (``share_decision``, taken before the experts load: with a shared copy the other ranks load
  their experts empty and read no weights at all).

Both lay the mirrors out in two passes: ``place`` every tensor, ``open`` the chunks, ``view`` each
tensor in the same order; so every rank computes the same layout without a message.
"""

from __future__ import annotations

import logging
import os
import secrets

import torch
import torch.distributed as dist

from ..job import memory
from ..shared_memory import SHARED_MEMORY, SHARED_PREFIX, shared_room

log = logging.getLogger(__name__)


class PinnedArena:
    CHUNK_BYTES = memory.GIB
    ALIGN = 512

    def __init__(self, pin: bool) -> None:
        self.pin = pin  # page-locked (on GPUs); on the CPU plain host memory
        self.used: list[int] = []  # bytes placed per chunk
        self.capacity: list[int] = []
        self.chunks: list[torch.Tensor] = []
        self.shared_by = 1  # workers mapping these chunks

    @property
    def writes(self) -> bool:
        """Whether this process fills the mirrors (every rank its own; one rank for a shared arena)."""
        return True

    @property
    def reserved_bytes(self) -> int:
        return sum(chunk.numel() for chunk in self.chunks)

    def place(self, nbytes: int) -> tuple[int, int]:
        """Where a tensor of ``nbytes`` will be: (chunk, offset)."""
        if not self.used or self.used[-1] + nbytes > self.capacity[-1]:
            self.capacity.append(max(self.CHUNK_BYTES, 1 << max(nbytes - 1, 0).bit_length()))
            self.used.append(0)
        where = (len(self.used) - 1, self.used[-1])
        self.used[-1] += -(-nbytes // self.ALIGN) * self.ALIGN
        return where

    def open(self) -> None:
        """Allocate the placed chunks (the last one only as large as the power of two it needs)."""
        sizes = self.capacity[:-1] + [min(self.capacity[-1], 1 << max(self.used[-1] - 1, 0).bit_length())] \
            if self.used else []
        self.chunks = [torch.empty(size, dtype=torch.uint8, pin_memory=self.pin) for size in sizes]

    def view(self, where: tuple[int, int], part: torch.Tensor) -> torch.Tensor:
        """The placed slice as a contiguous tensor shaped like ``part`` (not filled)."""
        size = part.numel() * part.element_size()
        if not size:
            return torch.empty_like(part, device="cpu")
        chunk, offset = where
        return self.chunks[chunk][offset:offset + size].view(part.dtype).view(part.shape)

    def filled(self) -> None:
        """Every mirror written: from here on any rank may read them."""


def share_decision(group, nbytes: int) -> bool:
    """Whether a group's workers keep one shared copy of ``nbytes`` of mirrors: two workers or more
    and room in /dev/shm on every rank (decided alike on all ranks, before anything is loaded)."""
    if group is None or dist.get_world_size(group) < 2:
        return False
    room = torch.tensor([int(shared_room(nbytes))])
    dist.all_reduce(room, op=dist.ReduceOp.MIN, group=group)
    if not room.item():
        log.warning("residency: /dev/shm has no room for %.1f GiB of shared host mirrors: each worker pins its own",
                    nbytes / memory.GIB)
    return bool(room.item())


class SharedArena(PinnedArena):
    """One set of chunks for the whole group (``group``: a gloo group of all its ranks), made where
    ``share_decision`` said so. Ranks other than the first may hold their experts empty (meta):
    they never read their own weights, only the first rank's copy."""

    def __init__(self, group, register: bool) -> None:
        super().__init__(pin=register)
        self.group = group
        self.rank = dist.get_rank(group)
        self.register = register
        self.shared_by = dist.get_world_size(group)

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def open(self) -> None:
        sizes = list(self.used)  # exact: a file has no allocator to round for
        layout = torch.tensor([len(sizes), sum(sizes)], dtype=torch.int64)
        low, high = layout.clone(), layout.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(low, high):  # every rank must read the chunks as rank 0 wrote them
            raise RuntimeError(f"the group's workers laid out their host mirrors differently (chunks, bytes from "
                               f"{low.tolist()} to {high.tolist()})")
        # named after rank 0's pid: the host removes what a dead rank 0 left (shared_memory.remove_shared_files)
        stem = [f"{SHARED_PREFIX}{os.getpid()}-mirror{secrets.token_hex(8)}" if self.rank == 0 else None]
        dist.broadcast_object_list(stem, src=dist.get_global_rank(self.group, 0), group=self.group)
        paths = [SHARED_MEMORY / f"{stem[0]}_{index}" for index in range(len(sizes))]
        if self.rank == 0:
            for path, size in zip(paths, sizes):
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                try:
                    os.ftruncate(fd, size)
                finally:
                    os.close(fd)
        dist.barrier(group=self.group)
        self.chunks = [torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
                       for path, size in zip(paths, sizes)]
        dist.barrier(group=self.group)
        if self.rank == 0:
            for path in paths:
                path.unlink()  # the mappings stay
        if self.register:
            for chunk in self.chunks:
                _page_lock(chunk)

    def filled(self) -> None:
        dist.barrier(group=self.group)  # rank 0's copies are done before any rank reads


def _page_lock(chunk: torch.Tensor) -> None:
    """Register a mapped chunk with CUDA, so that copies from it are DMA (as from pinned memory)."""
    error = torch.cuda.cudart().cudaHostRegister(chunk.data_ptr(), chunk.numel(), 0)
    if int(error) != 0:
        log.warning("residency: cudaHostRegister of a %.1f GiB shared mirror chunk failed (%s): copies from it "
                    "run unpinned", chunk.numel() / memory.GIB, error)
