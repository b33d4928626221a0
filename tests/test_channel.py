"""The host <-> rank 0 channel: every dtype the pack sends arrives bit for bit with its shape (raw
bytes after a JSON header, never unpickled), and a header naming another dtype is refused."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from accel import shared_memory
from accel.parallel.channel import DTYPES, Message, connect, listen, receive, send


def round_trip(message: Message, raw_header: bytes | None = None) -> Message:
    listener, key = listen()
    received: dict = {}

    def serve() -> None:
        conn = listener.accept()
        try:
            received["message"] = receive(conn)
        except ValueError as error:
            received["error"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    conn = connect(listener.address, key)
    if raw_header is None:
        send(conn, message)
    else:
        conn.send_bytes(raw_header)
    thread.join(timeout=30)
    listener.close()
    if "error" in received:
        raise received["error"]
    return received["message"]


def test_every_dtype_and_shape_arrives_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    tensors = {name: (torch.randn(3, 5, generator=generator) * 4).to(dtype) for name, dtype in DTYPES.items()}
    tensors.update(empty=torch.empty(0, 7), scalar=torch.tensor(2.5, dtype=torch.bfloat16),
                   transposed=torch.randn(4, 6, generator=generator).t())
    got = round_trip(Message("frames", {"seconds": 1.5, "tiles": [2, 3]}, tensors))
    assert got.kind == "frames" and got.payload == {"seconds": 1.5, "tiles": [2, 3]}
    assert list(got.tensors) == list(tensors)
    for name, sent in tensors.items():
        arrived = got.tensors[name]
        assert arrived.dtype == sent.dtype and arrived.shape == sent.shape, name
        assert torch.equal(arrived.reshape(-1).view(torch.uint8), sent.contiguous().reshape(-1).view(torch.uint8)), name


def test_a_header_with_another_dtype_is_refused():
    header = {"kind": "x", "payload": {}, "tensors": [{"name": "t", "dtype": "complex64", "shape": [2]}]}
    with pytest.raises(ValueError, match="unknown dtype 'complex64'"):
        round_trip(Message("x"), raw_header=json.dumps(header).encode())


def test_large_tensors_pass_through_shared_memory_and_leave_no_file(monkeypatch):
    from accel.parallel import channel

    if not shared_memory.shared_room(64 << 20):
        pytest.skip("no room in /dev/shm here")
    monkeypatch.setattr(channel, "SHARED_MIN_BYTES", 1 << 20)
    frames = torch.rand(12, 64, 96, 3, generator=torch.Generator().manual_seed(1)).half()  # 442 KB: socket
    latent = torch.randn(1, 16, 9, 64, 64, generator=torch.Generator().manual_seed(2))  # 2.4 MB: shared
    before = set(shared_memory.SHARED_MEMORY.glob(f"{shared_memory.SHARED_PREFIX}*"))
    got = round_trip(Message("frames", {}, {"frames": frames, "latent": latent}))
    assert torch.equal(got.tensors["frames"], frames) and torch.equal(got.tensors["latent"], latent)
    assert set(shared_memory.SHARED_MEMORY.glob(f"{shared_memory.SHARED_PREFIX}*")) == before
    got.tensors["latent"].add_(1)  # the mapping is the receiver's own (copy on write)


def test_a_shared_file_name_outside_the_channels_own_is_refused(tmp_path):
    header = {"kind": "x", "payload": {}, "tensors": [
        {"name": "t", "dtype": "float32", "shape": [2], "shared": "../../etc/passwd"}]}
    with pytest.raises(ValueError, match="not a file name this channel writes"):
        round_trip(Message("x"), raw_header=json.dumps(header).encode())


def test_files_a_dead_sender_left_are_removed():
    from accel.parallel import channel

    if not shared_memory.shared_room(1 << 20):
        pytest.skip("no room in /dev/shm here")
    name = channel._write_shared(torch.ones(4))
    assert (shared_memory.SHARED_MEMORY / name).exists()
    shared_memory.remove_shared_files([os.getpid()])
    assert not (shared_memory.SHARED_MEMORY / name).exists()


def test_without_shared_memory_everything_goes_through_the_socket(monkeypatch):
    from accel.parallel import channel

    monkeypatch.delattr(channel.os, "statvfs", raising=False)  # as on Windows
    assert shared_memory.shared_memory_free() == 0 and not shared_memory.shared_room(1)
    monkeypatch.setattr(channel, "SHARED_MIN_BYTES", 16)
    latent = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    got = round_trip(Message("done", {}, {"latent": latent}))
    assert torch.equal(got.tensors["latent"], latent)
