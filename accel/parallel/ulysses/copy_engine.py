"""Ulysses all-to-alls done by the GPUs' copy engines over NVLink, beside the computation.

An NCCL all-to-all is a kernel: it needs SMs, and the GEMMs it should overlap are persistent
kernels that hold every SM until they end, so on two H200s the "overlapped" all-to-alls of a
Ulysses 2 forward still had 39 ms of 470 ms running alone (bench/results/*-forward-ulysses.md).
Here each rank pushes its shards straight into the receiving ranks' memory with
``cudaMemcpyAsync`` on a side stream (copy engines, no SM), through PyTorch's symmetric memory
(peer-mapped buffers, no multicast), and a barrier kernel of one block marks them landed.

The copy engines also move strided rows (``cuMemcpy2DAsync``), so v leaves straight from its
projection, a head group's rows at a time, and the attention outputs land in the model's head
order, ``[B, S, H, D]``, ready for the output projection: the two layout copies per block that
the SMs did (v into the send layout, the received outputs back into head order) are gone.

One receive buffer per tensor kind and head chunk (v0, q0, k0, ...; one ``o`` for all output
chunks, each at its heads) is reused by every block: a peer can only push a kind again after a
chain of data it needs from this rank (all output chunks of the block, then the next block's
inputs), which this rank sends after it has consumed that buffer, so no extra barrier is needed
between blocks.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .head_major import Received

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
        _memcpy_2d_async()  # fails here, where the ranks can still fall back to NCCL together

    @property
    def buffer_bytes(self) -> int:
        """The receive buffers' size: symmetric memory, outside PyTorch's allocator statistics."""
        return sum(tensor.numel() * tensor.element_size() for tensor, _ in self.buffers.values())

    def _buffer(self, kind: str, numel: int, dtype: torch.dtype):
        held = self.buffers.get(kind)
        if held is None or held[0].numel() < numel or held[0].dtype != dtype:
            torch.cuda.synchronize(self.device)  # nothing may still read or write the old buffer
            tensor = self.symm_mem.empty(numel, dtype=dtype, device=self.device)
            held = (tensor, self.symm_mem.rendezvous(tensor, self.group))
            self.buffers[kind] = held
        return held

    def send(self, kind: str, x: torch.Tensor, finish) -> "Landed":
        """``x``: contiguous ``[P, ...]``, slice p for rank p. Returns what every rank sent to
        this one, ``[P, ...]`` (slice p from rank p), passed through ``finish`` on ``wait``."""
        part = x[0].numel()
        pieces = [Piece(peer, x[peer].view(1, part), self.rank * part, part) for peer in range(self.world)]
        return self.push(kind, tuple(x.shape), pieces, finish)

    def send_head_groups(self, kind: str, x: torch.Tensor, finish) -> "Landed":
        """``x``: [B, S, P, h, D], any strides with whole rows of h*D (a view of a projection's
        output): head group p to rank p. Received: [P (sender), B, S, h, D]."""
        batch, seq, world, heads, dim = x.shape
        return self.push(kind, (world, batch, seq, heads, dim), head_group_pieces(x, self.rank), finish)

    def send_sequence_parts(self, kind: str, out: torch.Tensor, first_head: int, heads: int) -> "Landed":
        """``out``: attention output [B, S*P, h, D] of heads ``first_head ..`` of ``heads``: rank
        p's tokens to rank p. Received: [B, S, heads, D], every rank's heads at their place."""
        batch, tokens, _, dim = out.shape
        pieces = sequence_part_pieces(out, self.rank, self.world, first_head, heads)
        return self.push(kind, (batch, tokens // self.world, heads, dim), pieces, lambda received: received)

    def push(self, kind: str, shape: tuple[int, ...], pieces: list["Piece"], finish) -> "Landed":
        """Each piece into its rank's receive buffer of ``kind`` (``shape``), on the side stream
        once the current stream has computed it; then a barrier: every rank's pushes landed."""
        numel = math.prod(shape)
        dtype = pieces[0].rows.dtype
        tensor, handle = self._buffer(kind, numel, dtype)
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            for piece in pieces:
                piece.rows.record_stream(self.stream)  # read on the side stream after the caller drops it
                copy_rows(handle.get_buffer(piece.peer, (numel,), dtype, 0), piece, self.stream)
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)  # every push into every rank landed
            done = torch.cuda.Event()
            done.record(self.stream)
        return Landed(tensor[:numel].view(shape), done, finish)


@dataclass(frozen=True)
class Piece:
    """Rows bound for one rank: ``rows`` [height, width] with unit column stride (any row stride),
    written into that rank's receive buffer from element ``offset`` on, ``pitch`` elements apart."""

    peer: int
    rows: torch.Tensor
    offset: int
    pitch: int


def head_group_pieces(x: torch.Tensor, rank: int) -> list[Piece]:
    """[B, S, P, h, D] -> for each rank p and batch element b: the rows of p's heads, into p's
    buffer [P (sender), B, S, h, D] at [rank, b]."""
    batch, seq, world, heads, dim = x.shape
    width = heads * dim
    return [Piece(peer, x[b, :, peer].flatten(1), (rank * batch + b) * seq * width, width)
            for peer in range(world) for b in range(batch)]


def sequence_part_pieces(out: torch.Tensor, rank: int, world: int, first_head: int, heads: int) -> list[Piece]:
    """Attention output [B, S*P, h, D] of heads ``first_head ..`` -> for each rank p and batch
    element b: p's tokens, into p's buffer [B, S, heads, D] at [b, :, first_head]."""
    batch, tokens, here, dim = out.shape
    seq = tokens // world
    if out.stride(3) != 1 or out.stride(2) != dim:  # rows of h*D elements needed
        out = out.contiguous()
    return [Piece(peer, out[b, peer * seq:(peer + 1) * seq].flatten(1), (b * seq * heads + first_head) * dim,
                  heads * dim) for peer in range(world) for b in range(batch)]


def copy_rows(buffer: torch.Tensor, piece: Piece, stream: torch.cuda.Stream) -> None:
    """``piece`` into the flat ``buffer`` by a copy engine: one ``cudaMemcpyAsync`` (torch's copy_)
    where rows are contiguous on both sides, else ``cuMemcpy2DAsync`` (torch's copy_ would run
    a kernel on the SMs for strided rows)."""
    rows = piece.rows
    height, width = rows.shape
    # The driver writes wherever it is told: check the rows fit the receiver's buffer first.
    end = piece.offset + (height - 1) * piece.pitch + width
    if piece.offset < 0 or piece.pitch < width or rows.stride(1) != 1 or rows.dtype != buffer.dtype \
            or end > buffer.numel():
        raise ValueError(f"rows {height}x{width} (pitch {piece.pitch}, from element {piece.offset}, {rows.dtype}) do "
                         f"not fit the {buffer.numel()}-element {buffer.dtype} receive buffer")
    if rows.is_contiguous() and (height == 1 or piece.pitch == width):
        buffer[piece.offset:piece.offset + height * width].view(height, width).copy_(rows)
        return
    size = rows.element_size()
    copy = _Memcpy2D(
        srcMemoryType=_MEMORY_DEVICE, srcDevice=rows.data_ptr(), srcPitch=rows.stride(0) * size,
        dstMemoryType=_MEMORY_DEVICE, dstDevice=buffer.data_ptr() + piece.offset * size, dstPitch=piece.pitch * size,
        WidthInBytes=width * size, Height=height,
    )
    status = _memcpy_2d_async()(ctypes.byref(copy), ctypes.c_void_p(stream.cuda_stream))
    if status != 0:
        raise RuntimeError(f"cuMemcpy2DAsync failed with CUresult {status}")


class _Memcpy2D(ctypes.Structure):
    """The CUDA driver's CUDA_MEMCPY2D (cuda.h)."""

    _fields_ = [
        ("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
        ("srcHost", ctypes.c_void_p), ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p),
        ("srcPitch", ctypes.c_size_t),
        ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int),
        ("dstHost", ctypes.c_void_p), ("dstDevice", ctypes.c_uint64), ("dstArray", ctypes.c_void_p),
        ("dstPitch", ctypes.c_size_t),
        ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t),
    ]


_MEMORY_DEVICE = 2  # CU_MEMORYTYPE_DEVICE


@functools.cache
def _memcpy_2d_async():
    """The driver's cuMemcpy2DAsync (torch exposes no pitched copy); loaded once per process."""
    function = ctypes.CDLL("libcuda.so.1").cuMemcpy2DAsync_v2
    function.argtypes = [ctypes.POINTER(_Memcpy2D), ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


class Landed(Received):
    def __init__(self, tensor: torch.Tensor, done: torch.cuda.Event, finish):
        super().__init__(tensor, finish)
        self.done = done

    def wait(self) -> torch.Tensor:
        torch.cuda.current_stream(self.tensor.device).wait_event(self.done)
        return self.finish(self.tensor)


def copy_engine_for(group: dist.ProcessGroup, device: torch.device, timeout: timedelta) -> CopyEngineExchange | None:
    """An exchange over ``group`` if every rank of it can map its peers' memory; otherwise (no P2P
    between these GPUs, no symmetric memory in this PyTorch) None: NCCL's all-to-all. The ranks
    decide together: one rank on copies and one on NCCL would wait for each other forever."""
    exchange, reason = None, None
    try:
        exchange = CopyEngineExchange(group, device, timeout)
        exchange._buffer("probe", dist.get_world_size(group), torch.float32)
    except (RuntimeError, ImportError, AttributeError, OSError) as failure:
        # Only the message is kept: the exception's traceback would hold this frame, and with it
        # the process group, in a reference cycle past destroy_process_group (gloo then aborts
        # the process at exit).
        exchange, reason = None, str(failure)
    usable = torch.tensor([int(reason is None)], device=device)
    dist.all_reduce(usable, op=dist.ReduceOp.MIN, group=group)
    if not usable.item():
        log.warning("Ulysses all-to-all through NCCL: copy engines unavailable (%s)", reason or "on another rank")
        return None
    return exchange
