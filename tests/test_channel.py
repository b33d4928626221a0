"""The host <-> rank 0 channel: every dtype the pack sends arrives bit for bit with its shape (raw
bytes after a JSON header, never unpickled), and a header naming another dtype is refused."""

from __future__ import annotations

import json
import threading

import pytest
import torch

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
