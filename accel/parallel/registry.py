"""The one warm worker group of this process (the pack's only global mutable state).

GPUs are shared by every prompt, so at most one group is alive: a job with the same model and
layout reuses it (weights stay loaded), a different one replaces it. It is shut down at exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from ..job import memory
from ..job.settings import EngineOptions, LoraChain, ModelSpec
from ..model.files import model_config_for
from ..shared_memory import shared_memory_free
from .group import WorkerGroup, group_key
from .layout import ParallelLayout

log = logging.getLogger(__name__)


def resolve_residency(spec: ModelSpec, layout: ParallelLayout, engine: EngineOptions,
                      latent_shape: Sequence[int] | None, budgets: dict[str, int],
                      host_available: int | None = None) -> EngineOptions:
    """The plan for "auto" (the fastest whose estimated peak fits the smallest GPU budget and whose
    host mirrors, one set per worker, fit ``host_available``), or the forced one; a prompt that fits
    no plan is a UserInputError here, before any weights move."""
    if engine.residency != "auto" and not budgets:
        return engine
    config = model_config_for(spec)
    tokens = memory.job_tokens(latent_shape, config["patch_size"]) if latent_shape is not None else 0
    host = memory.HostBudget(host_available, layout.world, shared_memory_free()) \
        if host_available is not None and budgets else None
    return memory.resolve_plan(engine, spec, config, tokens, layout.ulysses,
                               engine.ulysses_copy_engine and layout.devices is not None, budgets, host)


class WorkerGroupRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._group: WorkerGroup | None = None
        self._budgets: dict[str, int] = {}  # usable GPU memory measured before the warm group started
        self._host_available: int | None = None  # host memory available then (its mirrors are not a lack)

    def _budgets_for(self, layout: ParallelLayout) -> dict[str, int]:
        """Usable memory of the layout's GPUs: as measured before the warm group started on a GPU
        it holds (its own weights are not a lack of memory), else measured now."""
        if layout.devices is None:
            return {}
        fresh = [d for d in layout.devices if f"GPU {d}" not in self._budgets or self._group is None]
        measured = memory.usable_bytes(fresh) if fresh else {}
        return {f"GPU {d}": measured.get(f"GPU {d}", self._budgets.get(f"GPU {d}")) for d in layout.devices}

    def acquire(self, spec: ModelSpec, layout: ParallelLayout, engine: EngineOptions | None = None,
                loras: LoraChain = (), compile_cache_dir: Path | None = None,
                latent_shape: Sequence[int] | None = None) -> WorkerGroup:
        """``latent_shape``: the job's latent, for the residency plan's memory estimate ("auto")."""
        engine = engine or EngineOptions()
        with self._lock:
            group = self._group
            budgets = self._budgets_for(layout)
            host = memory.host_available_bytes() if group is None or not group.alive else self._host_available
            engine = resolve_residency(spec, layout, engine, latent_shape, budgets, host)
            if group is not None and group.key == group_key(spec, layout, engine, loras) and group.alive:
                return group
            replacement = WorkerGroup(spec, layout, engine, loras=loras, compile_cache_dir=compile_cache_dir)
            replacement.check()  # a request that cannot run leaves the warm group alone
            if group is not None:
                group.close()
            self._group = None
            self._budgets, self._host_available = budgets, host
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
