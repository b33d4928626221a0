"""Start worker processes that import this core by file path under a private module name.

ComfyUI imports a pack by its path (the module name is the path), so a child process cannot
import the pack by name; each worker loads ``accel/`` itself and never touches ComfyUI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

CORE_DIR = Path(__file__).resolve().parents[1]
CORE_MODULE = "cachedit_parallel_core"

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


def start_worker(config: dict, key: bytes, devices: tuple[int, ...] | None, log_path: Path,
                 compile_cache: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
    env["ACCEL_WORKER"] = json.dumps(config)
    if config["rank"] == 0:
        env["ACCEL_CHANNEL_KEY"] = key.hex()  # in the environment, not on the command line (ps shows that)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(CORE_DIR)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            start_new_session=True,  # its own process group: teardown kills compile helpers too
        )
