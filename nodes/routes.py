"""HTTP routes and the /free hook; the only module that registers anything with ComfyUI's server.

ComfyUI's node API (comfy_api.latest) has neither routes nor a /free or exit hook, so these use the
server object directly (``PromptServer.instance.routes`` and its prompt queue), at import time:
ComfyUI v0.3.64 never calls ``ComfyExtension.on_load``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aiohttp import web

from ..accel.parallel.registry import REGISTRY
from . import comfy
from .traces import TraceStore

log = logging.getLogger(__name__)

STORE = TraceStore(comfy.data_dir() / "traces")


def add_routes(routes: web.RouteTableDef, store: TraceStore, release) -> None:
    @routes.get("/cachedit/traces")
    async def list_traces(request: web.Request) -> web.Response:
        return web.json_response(store.list())

    @routes.get("/cachedit/traces/{prompt_id}")
    async def get_trace(request: web.Request) -> web.Response:
        record = store.get(request.match_info["prompt_id"])
        if record is None:
            return web.json_response({"error": "no trace for this prompt"}, status=404)
        return web.json_response(record)

    @routes.post("/cachedit/release")
    async def release_workers(request: web.Request) -> web.Response:
        return web.json_response({"released": release()})


def release_on_free(queue, release: Callable[[], bool]) -> None:
    """Release the worker group when the prompt worker acts on an explicit /free ("Unload models").

    ComfyUI has no hook for /free: POST /free only sets the queue's ``unload_models`` /
    ``free_memory`` flags, and the prompt worker reads them with ``get_flags()`` between prompts and
    then calls ``unload_all_models``. That function is also called after any out-of-memory error and
    after every prompt under --disable-smart-memory (and by other packs), so the pack listens to the
    flags instead: this wraps the queue's ``get_flags``, in the prompt worker's thread, where no job
    runs. It applies ComfyUI's own rule (``free_memory`` implies ``unload_models``)."""
    original = queue.get_flags
    if getattr(original, "_releases_cachedit_workers", False):
        return

    @functools.wraps(original)
    def get_flags(reset: bool = True):
        flags = original(reset)
        if reset and flags.get("unload_models", flags.get("free_memory", False)):
            try:
                if release():
                    log.info("/free: released the cache-dit worker group")
            except Exception:  # never break ComfyUI's prompt worker loop
                log.exception("/free: releasing the cache-dit worker group failed")
        return flags

    get_flags._releases_cachedit_workers = True
    queue.get_flags = get_flags


def register(server=None) -> None:
    """The routes and the /free hook, on ComfyUI's server (nothing outside ComfyUI). The workers are
    also released by POST /cachedit/release and at exit (accel.parallel.registry's atexit)."""
    server = server if server is not None else (comfy.PromptServer.instance if comfy.PromptServer else None)
    if server is None:
        return
    add_routes(server.routes, STORE, REGISTRY.release)
    release_on_free(server.prompt_queue, REGISTRY.release)
