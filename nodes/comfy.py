"""The only place nodes touch ComfyUI's Python API; without ComfyUI (tests, CLI) it degrades to no-ops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

try:  # inside a ComfyUI server
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
    from server import PromptServer
except ImportError:  # tests and scripts
    model_management = comfy_utils = folder_paths = PromptServer = None

IN_COMFYUI = folder_paths is not None


def diffusion_model_files() -> list[str]:
    return folder_paths.get_filename_list("diffusion_models") if IN_COMFYUI else []


def diffusion_model_path(name: str) -> str:
    """ComfyUI's file list name to a path; outside ComfyUI the name is the path."""
    if not IN_COMFYUI:
        return name
    path = folder_paths.get_full_path("diffusion_models", name)
    return path if path is not None else name


def data_dir() -> Path:
    """Where the pack keeps traces and compile caches: ComfyUI's user directory, or ~/.cache."""
    if IN_COMFYUI:
        return Path(folder_paths.get_user_directory()) / "cachedit-parallel"
    return Path.home() / ".cache" / "comfyui-cachedit-parallel"


class Progress:
    """ComfyUI's progress bar for one node; its update also checks for /interrupt."""

    def __init__(self, total: int, node_id: str | None):
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id) if IN_COMFYUI else None

    def step(self) -> None:
        # An update while an interrupt is pending would raise inside the worker group's message
        # loop; the sampler turns the interrupt into a cancel of the job instead.
        if self.bar is not None and not interrupted():
            self.bar.update(1)


def interrupted() -> bool:
    return bool(IN_COMFYUI and model_management.processing_interrupted())


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception (and clear the flag) after a cancelled job."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()


def send_event(event: str, data: dict[str, Any]) -> None:
    if IN_COMFYUI and PromptServer.instance is not None:
        PromptServer.instance.send_sync(event, data)


def executing() -> tuple[str | None, str | None]:
    """(prompt id, node id) of the node being executed."""
    if not IN_COMFYUI:
        return None, None
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            return context.prompt_id, context.node_id
    except ImportError:
        pass
    return getattr(PromptServer.instance, "last_prompt_id", None), getattr(PromptServer.instance, "last_node_id", None)
