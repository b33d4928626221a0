"""HTTP routes and the /free hook; the only module that registers anything with ComfyUI's server."""

from __future__ import annotations

import functools
import logging

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


def release_on_unload(model_management) -> None:
    """Wrap ComfyUI's ``unload_all_models`` so that /free ("Unload models") also shuts the worker
    group down and frees its GPUs. ComfyUI offers packs no hook for /free; its prompt worker calls
    this function after a /free request (and after an out-of-memory error), looking it up at call
    time, so this one wrapper is where the pack hears of it."""
    original = model_management.unload_all_models
    if getattr(original, "_releases_cachedit_workers", False):
        return

    @functools.wraps(original)
    def unload_all_models(*args, **kwargs):
        if REGISTRY.release():
            log.info("released the cache-dit worker group")
        return original(*args, **kwargs)

    unload_all_models._releases_cachedit_workers = True
    model_management.unload_all_models = unload_all_models


def register() -> None:
    if not comfy.IN_COMFYUI:
        return
    add_routes(comfy.PromptServer.instance.routes, STORE, REGISTRY.release)
    release_on_unload(comfy.model_management)
