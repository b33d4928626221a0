"""Host <-> rank 0 messages: loopback TCP, HMAC-authenticated with a random key per group.

A message is a JSON header and, optionally, tensors serialised with safetensors. Nothing is
ever unpickled (``Connection.recv_bytes`` only, never ``recv``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors


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


def send(conn: Connection, message: Message) -> None:
    header = {"kind": message.kind, "payload": message.payload, "tensors": bool(message.tensors)}
    conn.send_bytes(json.dumps(header).encode())
    if message.tensors:
        conn.send_bytes(save_tensors({k: v.detach().contiguous().cpu() for k, v in message.tensors.items()}))


def receive(conn: Connection) -> Message:
    header = json.loads(conn.recv_bytes())
    tensors = load_tensors(conn.recv_bytes()) if header["tensors"] else {}
    return Message(kind=header["kind"], payload=header["payload"], tensors=tensors)
