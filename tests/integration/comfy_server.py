"""A real ComfyUI server (CPU) for the integration tests: started from COMFYUI_DIR with the pack's
folders named in an extra_model_paths.yaml, stopped with a check that the pack's workers died with it."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from pathlib import Path

import pytest

WORKER_MARK = "cachedit_parallel_core"  # the workers' bootstrap module, on their command line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workers_of(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of the pack's worker processes ``parent`` started."""
    # -ww: without a terminal ps may cut the command line to 80 columns, before the module name
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(maxsplit=2) for line in out.splitlines()]
    return [(int(pid), rest[0]) for pid, ppid, *rest in rows if rest and int(ppid) == parent and WORKER_MARK in rest[0]]


def alive(pids: list[int]) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True, check=True).stdout.split()
    return [pid for pid in pids if str(pid) in out]


@dataclasses.dataclass
class ComfyServer:
    url: str
    proc: subprocess.Popen
    home: Path  # user/, output/, server.log
    log: Path

    def worker_pids(self) -> list[int]:
        return [pid for pid, _ in workers_of(self.proc.pid)]


def start_comfyui(comfyui_dir: str, python: str, home: Path, extra_model_paths: str, *args: str,
                  env: dict[str, str] | None = None, node: str = "CacheDiT_UlyssesParallelSampler") -> ComfyServer:
    """``python main.py --cpu`` in ``comfyui_dir`` with ``extra_model_paths`` (YAML text) and ``args``;
    returns once ``node`` is in its object_info (the pack loaded)."""
    import requests

    for folder in ("user", "output"):  # ComfyUI refuses a --user-directory that does not exist
        (home / folder).mkdir(parents=True, exist_ok=True)
    extra = home / "extra_model_paths.yaml"
    extra.write_text(extra_model_paths)
    port = free_port()
    log = home / "server.log"
    proc = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--extra-model-paths-config",
         str(extra), "--output-directory", str(home / "output"), "--user-directory", str(home / "user"), *args],
        cwd=comfyui_dir, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )
    server = ComfyServer(f"http://127.0.0.1:{port}", proc, home, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{server.url}/object_info/{node}", timeout=2).json():
                return server
        except (requests.ConnectionError, ValueError):
            pass
        if proc.poll() is not None:
            pytest.fail("ComfyUI exited while starting: " + log.read_text()[-3000:])
        time.sleep(0.3)
    stop_comfyui(server)
    pytest.fail(f"ComfyUI did not start with {node}: " + log.read_text()[-3000:])


def stop_comfyui(server: ComfyServer) -> list[int]:
    """Terminate the server; returns the pack's workers still alive 10 s later (a worker exits within a
    second of its host's death)."""
    workers = server.worker_pids()
    server.proc.terminate()
    server.proc.wait(30)
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(workers)
