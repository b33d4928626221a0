"""Host-safe: start worker processes that import this core by file path under a private module name.

ComfyUI imports a pack by its path (the module name is the path), so a child process cannot
import the pack by name; each worker loads ``accel/`` itself and never touches ComfyUI. The
workers may run in another Python than ComfyUI's (``CACHEDIT_WORKER_PYTHON``): they talk JSON and
safetensors only, so the pinned diffusers / cache-dit need not share ComfyUI's environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserInputError

CORE_DIR = Path(__file__).resolve().parents[1]
CORE_MODULE = "cachedit_parallel_core"
WORKER_PYTHON_ENV = "CACHEDIT_WORKER_PYTHON"

BOOTSTRAP = f"""
import importlib, importlib.util, sys
root = sys.argv[1]
spec = importlib.util.spec_from_file_location({CORE_MODULE!r}, root + "/__init__.py", submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[{CORE_MODULE!r}] = module
spec.loader.exec_module(module)
sys.exit(importlib.import_module({CORE_MODULE!r} + ".parallel.worker").main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_python(environ: Mapping[str, str] = os.environ) -> str:
    """The interpreter of the workers: ``CACHEDIT_WORKER_PYTHON`` if set, else this process's."""
    python = environ.get(WORKER_PYTHON_ENV, "").strip()
    if not python:
        return sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise UserInputError(f"{WORKER_PYTHON_ENV}={python!r} is not an executable Python interpreter")
    return python


def visible_devices(devices: tuple[int, ...], environ: Mapping[str, str] = os.environ) -> str:
    """This process's logical GPU indices as the entries of its own ``CUDA_VISIBLE_DEVICES``.

    A ComfyUI started with ``CUDA_VISIBLE_DEVICES=4,5`` (or ``--cuda-device 3``, which sets it)
    calls those GPUs 0 and 1; its workers must get ``4,5``, not ``0,1`` (other users' GPUs)."""
    parent = environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None:
        return ",".join(str(d) for d in devices)
    entries = [entry.strip() for entry in parent.split(",") if entry.strip()]
    missing = [d for d in devices if d >= len(entries)]
    if missing:
        raise UserInputError(f"GPU {missing} not found: CUDA_VISIBLE_DEVICES={parent!r} makes {len(entries)} "
                             "GPU(s) visible to this server")
    return ",".join(entries[d] for d in devices)


def start_worker(config: dict, key: bytes, devices: tuple[int, ...] | None, log_path: Path,
                 compile_cache: Path, python: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
    env["ACCEL_WORKER"] = json.dumps(config)
    if config["rank"] == 0:
        env["ACCEL_CHANNEL_KEY"] = key.hex()  # in the environment, not on the command line (ps shows that)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [python, "-c", BOOTSTRAP, str(CORE_DIR)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            start_new_session=True,  # its own process group: teardown kills compile helpers too
        )
