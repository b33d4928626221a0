"""Ulysses all-to-alls of Wan's self-attention in the layout that needs the fewest copies.

cache-dit's even-heads all-to-all (``_all_to_all_single_qkv_async`` / ``_o_async``) copies every
tensor into a send layout before the collective and q, k, v and o again after it: five copies of
a [tokens, 5120] activation per block, 21 ms of a 482 ms Ulysses 2 forward at 14,040 tokens on an
H200 (bench/results/*-forward.md). Here a shard is sent head group first, ``[P, B, S, H/P, D]``:
q and k arrive in that layout from the fused rotary kernel (``rotary_head_major``), what is
received is already ``[B, S*P, H/P, D]`` for batch 1, and the attention output is sent as a view.
What remains is one copy of v before and one of the output after (none with copy engines, which
move strided rows: accel/copy_engine.py). Same collectives, same values;
uneven shards and FP8 payloads keep cache-dit's communicator.

Split into head chunks (``chunks`` > 1), attention on the first chunk starts once that chunk has
landed while the next one is still in flight, and the first chunk's output is sent while the next
is attended: only the first chunk of the last input and the last chunk of the output are left
with nothing beside them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc

from ...model.rotary import rotary


def rotary_head_major(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor, world: int,
                      chunks: int = 1) -> torch.Tensor:
    """The rotary embedding written straight into the all-to-all's send layout (one kernel compiled)."""
    return head_major(rotary(x, freqs_cos, freqs_sin), world, chunks)


def head_major(x: torch.Tensor, world: int, chunks: int = 1) -> torch.Tensor:
    """[B, S, H, D] -> contiguous [C, P, B, S, H/(P*C), D]: head group p goes to rank p, split into
    C chunks sent one after the other (rank p's heads stay ``p*H/P .. (p+1)*H/P``)."""
    batch, seq, heads, dim = x.shape
    return x.view(batch, seq, world, chunks, heads // (world * chunks), dim).permute(3, 2, 0, 1, 4, 5).contiguous()


class Received:
    """An all-to-all in flight; ``wait`` makes the current stream wait for it, not the CPU."""

    def __init__(self, tensor: torch.Tensor, finish):
        self.tensor, self.finish = tensor, finish

    def wait(self) -> torch.Tensor:
        return self.finish(fc.wait_tensor(self.tensor))


def _exchange(x: torch.Tensor, group: dist.ProcessGroup, finish, copy_engine, kind: str) -> Received:
    """NCCL's all-to-all, or (``copy_engine``, accel/copy_engine.py) copies beside the computation."""
    if copy_engine is not None:
        return copy_engine.send(kind, x, finish)
    shape = x.shape
    return Received(fc.all_to_all_single(x.flatten(), None, None, group), lambda received: finish(received.view(shape)))


def all_tokens(received: torch.Tensor) -> torch.Tensor:
    """What a rank received of one head chunk, [P (sequence part), B, S, h, D] -> [B, S*P, h, D]:
    every token, this rank's heads of the chunk (a view for batch 1)."""
    world, batch, seq, heads, dim = received.shape
    return received.transpose(0, 1).reshape(batch, world * seq, heads, dim)


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup, kind: str, copy_engine=None) -> Received:
    """Head-major shard of one head chunk [P, B, S, h, D] -> [B, S*P, h, D]: all tokens, this
    rank's heads of the chunk. ``kind`` (q0, k1, ...) names the copy engine's receive buffer."""
    return _exchange(x, group, all_tokens, copy_engine, kind)


def heads_to_sequence(out: torch.Tensor, group: dist.ProcessGroup) -> Received:
    """By NCCL (copy engines land the outputs in head order themselves, accel/copy_engine.py):
    attention output of one head chunk [B, S*P, h, D] -> [P (head group), B, S, h, D], this
    rank's tokens; ``assemble_heads`` puts the chunks back in the model's head order."""
    world = dist.get_world_size(group)
    batch, seq, heads, dim = out.shape
    send = out.reshape(batch, world, seq // world, heads, dim).transpose(0, 1).contiguous()  # a view for batch 1
    return _exchange(send, group, lambda received: received, None, "o")


def assemble_heads(chunks: list[Received]) -> torch.Tensor:
    """Received head chunks, each [P, B, S, h, D] -> [B, S, H, D] with head ``(p, c, j)`` at
    ``p*H/P + c*h + j``; one copy, chunk by chunk as each lands."""
    first = chunks[0].wait()
    world, batch, seq, heads, dim = first.shape
    out = first.new_empty(batch, seq, world, len(chunks), heads, dim)
    for index, chunk in enumerate(chunks):
        out[:, :, :, index].copy_((first if index == 0 else chunk.wait()).permute(1, 2, 0, 3, 4))
    return out.view(batch, seq, world * len(chunks) * heads, dim)
