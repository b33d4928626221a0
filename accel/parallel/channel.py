"""Host <-> rank 0 messages: loopback TCP, HMAC-authenticated with a random key per group.

A message is a JSON header (kind, payload, and each tensor's name, dtype and shape), then each
tensor's raw bytes as a message of its own, received straight into a tensor of that dtype and
shape. Nothing is ever unpickled (``Connection.recv_bytes*`` only, never ``recv``), and a dtype
is taken only from ``DTYPES``. The raw bytes skip a serialisation: decoded frames (81 x 480 x
832 x 3 in fp16, 194 MB) arrive in 0.33 s instead of 0.56 s through safetensors on a 2-core
host (bench/channel.py).

Tensors of ``SHARED_MIN_BYTES`` or more skip the socket too where /dev/shm has room: the sender
copies them (from the GPU or host memory) into a file there that only this user can read, the
header names the file, and the receiver maps it and unlinks it (bench/channel.py: the 194 MB
frames in 0.05 s instead of 0.31 s on the H200 host). Host and rank 0 always share a machine.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import torch

from ..shared_memory import SHARED_MEMORY, SHARED_NAME, SHARED_PREFIX, shared_room

DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
)}


SHARED_MIN_BYTES = 8 << 20


@dataclass
class Message:
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def listen() -> tuple[Listener, bytes]:
    key = secrets.token_bytes(32)
    return Listener(("127.0.0.1", 0), authkey=key), key


def connect(address: tuple[str, int], key: bytes) -> Connection:
    return Client(address, authkey=key)


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, as a flat uint8 view (a 1-byte dtype's view of itself)."""
    return tensor.reshape(-1).view(torch.uint8)


def _write_shared(tensor: torch.Tensor) -> str:
    """The tensor's bytes in a new /dev/shm file (mode 0600), copied straight from its device."""
    fd, path = tempfile.mkstemp(prefix=f"{SHARED_PREFIX}{os.getpid()}-", dir=SHARED_MEMORY)
    try:
        os.ftruncate(fd, tensor.nbytes)
    finally:
        os.close(fd)
    try:
        torch.from_file(path, shared=True, size=tensor.nbytes, dtype=torch.uint8).copy_(_raw(tensor))
    except BaseException:
        os.unlink(path)
        raise
    return os.path.basename(path)


def _read_shared(name: str, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The sender's file mapped (copy on write) and unlinked: its memory goes with the tensor."""
    if not SHARED_NAME.fullmatch(name):
        raise ValueError(f"channel: {name!r} is not a file name this channel writes")
    path = SHARED_MEMORY / name
    try:
        count = math.prod(shape)
        expected = count * torch.empty(0, dtype=dtype).element_size()
        if path.stat().st_size != expected:
            raise ValueError(f"channel: {name}: {path.stat().st_size} bytes, {expected} expected")
        return torch.from_file(str(path), shared=False, size=count, dtype=dtype).view(shape)
    finally:
        path.unlink(missing_ok=True)


def send(conn: Connection, message: Message) -> None:
    tensors = {name: t.detach().contiguous() for name, t in message.tensors.items()}
    layout = []
    for name, tensor in tensors.items():
        entry = {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
        if tensor.nbytes >= SHARED_MIN_BYTES and shared_room(tensor.nbytes):
            entry["shared"] = _write_shared(tensor)
        layout.append(entry)
    conn.send_bytes(json.dumps({"kind": message.kind, "payload": message.payload, "tensors": layout}).encode())
    for entry, tensor in zip(layout, tensors.values()):
        if "shared" not in entry:
            conn.send_bytes(_raw(tensor.cpu()).numpy())


def receive(conn: Connection) -> Message:
    header = json.loads(conn.recv_bytes())
    tensors = {}
    for entry in header["tensors"]:
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"channel: tensor {entry['name']!r} has an unknown dtype {entry['dtype']!r}")
        if "shared" in entry:
            tensors[entry["name"]] = _read_shared(entry["shared"], DTYPES[entry["dtype"]], entry["shape"])
            continue
        tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        expected = math.prod(entry["shape"]) * tensor.element_size()
        size = conn.recv_bytes_into(_raw(tensor).numpy())
        if size != expected:
            raise ValueError(f"channel: tensor {entry['name']!r}: {size} bytes received, {expected} expected")
        tensors[entry["name"]] = tensor
    return Message(kind=header["kind"], payload=header["payload"], tensors=tensors)
