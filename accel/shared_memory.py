"""Host-safe: /dev/shm, where the host and its workers hand each other large tensors (the channel's
frames and latents) and where a group keeps its one host copy of the experts (model/host_mirrors.py).

Files are named ``cachedit-wan-<pid of the process that wrote them>-...``, mode 0600, so that a
group's host can remove what a dead worker left (``remove_shared_files``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SHARED_MEMORY = Path("/dev/shm")
SHARED_PREFIX = "cachedit-wan-"
SHARED_NAME = re.compile(re.escape(SHARED_PREFIX) + r"[0-9]+-[A-Za-z0-9_]+")


def shared_memory_free() -> int:
    """Free bytes of /dev/shm that this user may write (0 where there is none: macOS, Windows)."""
    try:
        stats = os.statvfs(SHARED_MEMORY)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return 0
    return stats.f_bavail * stats.f_frsize if os.access(SHARED_MEMORY, os.W_OK) else 0


def takes(size: int, free: int) -> bool:
    """Whether ``size`` more bytes fit in ``free`` bytes of /dev/shm with room to spare (a container's
    may be 64 MB: writing past a tmpfs's end would kill the writer with SIGBUS)."""
    return free >= 2 * size


def shared_room(size: int) -> bool:
    """``takes`` for /dev/shm as it is now; where not, the callers do without it."""
    return takes(size, shared_memory_free())


def remove_shared_files(pids: list[int]) -> None:
    """Files that processes of these pids left behind (a receiver that died before reading, a rank
    0 that died before unlinking the group's mirror chunks)."""
    for pid in pids:
        for path in SHARED_MEMORY.glob(f"{SHARED_PREFIX}{pid}-*"):
            path.unlink(missing_ok=True)
