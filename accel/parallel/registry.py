"""The one warm worker group of this process (the pack's only global mutable state).

GPUs are shared by every prompt, so at most one group is alive: a job with the same model and
layout reuses it (weights stay loaded), a different one replaces it. It is shut down at exit.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from ..job.settings import EngineOptions, LoraChain, ModelSpec
from .group import WorkerGroup, group_key
from .layout import ParallelLayout


class WorkerGroupRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._group: WorkerGroup | None = None

    def acquire(self, spec: ModelSpec, layout: ParallelLayout, engine: EngineOptions | None = None,
                loras: LoraChain = (), compile_cache_dir: Path | None = None) -> WorkerGroup:
        engine = engine or EngineOptions()
        with self._lock:
            group = self._group
            if group is not None and group.key == group_key(spec, layout, engine, loras) and group.alive:
                return group
            replacement = WorkerGroup(spec, layout, engine, loras=loras, compile_cache_dir=compile_cache_dir)
            replacement.check()  # a request that cannot run leaves the warm group alone
            if group is not None:
                group.close()
            self._group = None
            self._group = replacement.start()
            return self._group

    @property
    def current(self) -> WorkerGroup | None:
        return self._group

    def release(self) -> bool:
        """Shut the warm group down (ComfyUI's /free, the pack's release route, exit)."""
        with self._lock:
            group, self._group = self._group, None
        if group is None:
            return False
        group.close()
        return True


REGISTRY = WorkerGroupRegistry()
atexit.register(REGISTRY.release)
