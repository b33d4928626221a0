"""The only place nodes touch ComfyUI's Python API; without ComfyUI (tests, CLI) it degrades to no-ops.

Each helper looks its ComfyUI module up when it is called, so a test can put a fake in its place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..accel.errors import UserInputError

log = logging.getLogger(__name__)

try:  # inside a ComfyUI server
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
    from server import PromptServer
except ImportError:  # tests and scripts
    model_management = comfy_utils = folder_paths = PromptServer = None

try:  # ComfyUI's current node API
    from comfy_api.latest import ComfyExtension, io, ui

    NODE_API = "comfy_api.latest"
except ImportError:  # the same names for tests and scripts (see api_standin.py)
    from .api_standin import ComfyExtension, io, ui

    NODE_API = "stand-in"
    if folder_paths is not None:  # a ComfyUI older than its node API: it would not load the nodes
        log.warning("this ComfyUI has no comfy_api.latest (its node API); the cache-dit nodes need a newer "
                    "ComfyUI (tested: v0.3.64)")


def in_comfyui() -> bool:
    return folder_paths is not None


__all__ = [
    "NODE_API",
    "ComfyExtension",
    "Executing",
    "Progress",
    "data_dir",
    "executing",
    "in_comfyui",
    "interrupted",
    "io",
    "model_dir_names",
    "model_dir_path",
    "model_file_names",
    "model_file_path",
    "raise_interrupt",
    "send_event",
    "ui",
]


# --- files a prompt may name: only entries of ComfyUI's model lists --------------------------------

def not_listed(folder: str) -> UserInputError:
    """The one answer for a name that is not in the list: it does not depend on what the name is or
    whether such a path exists, so a client learns nothing about the server's files from it."""
    return UserInputError(f"not in ComfyUI's '{folder}' list: pick an entry of the list "
                          "(after adding a model, refresh the page)")


def model_file_names(folder: str) -> list[str]:
    """ComfyUI's list of one model folder ('diffusion_models', 'loras', 'vae', ...); empty outside ComfyUI."""
    return folder_paths.get_filename_list(folder) if folder_paths is not None else []


def model_file_path(folder: str, name: str) -> str:
    """The path of an entry of ComfyUI's ``folder`` list; any other name is refused with one text.
    Outside ComfyUI (tests, CLI) the name is the path."""
    if folder_paths is None:
        return name
    if name in folder_paths.get_filename_list(folder):
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    raise not_listed(folder)


def model_dir_names(folder: str, holding: tuple[str, ...], depth: int = 3) -> list[str]:
    """Directories under ComfyUI's ``folder`` paths (e.g. 'diffusers') that hold all the ``holding``
    subdirectories, as paths relative to their root ('/'-separated), like ComfyUI's DiffusersLoader."""
    if folder_paths is None:
        return []
    names: set[str] = set()
    for root in folder_paths.get_folder_paths(folder):
        for path, dirs, _ in os.walk(root, followlinks=True):
            relative = os.path.relpath(path, root)
            if relative != "." and all(d in dirs for d in holding):
                names.add(Path(relative).as_posix())
                dirs.clear()  # a model directory's subdirectories are its parts
            elif relative.count(os.sep) + 1 >= depth:
                dirs.clear()
    return sorted(names)


def model_dir_path(folder: str, name: str, holding: tuple[str, ...]) -> str:
    """The path of an entry of :func:`model_dir_names`; any other name is refused with one text.
    Outside ComfyUI the name is the path."""
    if folder_paths is None:
        return name
    if name in model_dir_names(folder, holding):
        for root in folder_paths.get_folder_paths(folder):
            path = os.path.join(root, name)
            if all(os.path.isdir(os.path.join(path, d)) for d in holding):
                return path
    raise not_listed(folder)


def without_paths(text: str, names: dict[str | None, str]) -> str:
    """In ComfyUI a message names a file by its list entry, not by where the server keeps it."""
    if not in_comfyui():
        return text
    for path, name in names.items():
        if path is not None and path != name:
            text = text.replace(path, name)
    return text


def checked_model_file(input_name: str, folder: str, name: str, check: Callable[[str], object]) -> str:
    """The path of an entry of ComfyUI's ``folder`` list, its file checked by ``check`` (headers
    only); every error names the input and the list entry, never where the server keeps it."""
    try:
        path = model_file_path(folder, name)
    except UserInputError as error:
        raise UserInputError(f"{input_name}: {error}") from None
    try:
        check(path)
    except UserInputError as error:
        raise UserInputError(f"{input_name}: {without_paths(str(error), {path: name})}") from None
    return path


def data_dir() -> Path:
    """Where the pack keeps traces and compile caches: ComfyUI's user directory, or ~/.cache."""
    if folder_paths is not None:
        return Path(folder_paths.get_user_directory()) / "cachedit-parallel"
    return Path.home() / ".cache" / "comfyui-cachedit-parallel"


# --- execution: progress, interrupt, the prompt being run, events ---------------------------------

class Progress:
    """ComfyUI's progress bar for one node; its update also checks for /interrupt."""

    def __init__(self, total: int, node_id: str | None):
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id) if comfy_utils is not None else None

    def step(self) -> None:
        # An update while an interrupt is pending would raise inside the worker group's message
        # loop; the sampler turns the interrupt into a cancel of the job instead.
        if self.bar is not None and not interrupted():
            self.bar.update(1)


def interrupted() -> bool:
    return bool(model_management is not None and model_management.processing_interrupted())


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception (and clear the flag) after a cancelled job."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


class Executing(NamedTuple):
    prompt_id: str | None
    node_id: str | None
    client_id: str | None  # the browser tab (websocket) that queued the prompt; None for API calls without one


def executing() -> Executing:
    """The prompt and node being executed, and who queued it. Call it in the node's execute (the
    prompt worker's thread): the node id lives in a context variable of that thread, and ComfyUI
    sets ``PromptServer.instance.client_id`` at the start of each prompt."""
    server = PromptServer.instance if PromptServer is not None else None
    if server is None:
        return Executing(None, None, None)
    prompt_id, node_id = getattr(server, "last_prompt_id", None), getattr(server, "last_node_id", None)
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        pass
    else:
        context = get_executing_context()
        if context is not None:
            prompt_id, node_id = context.prompt_id, context.node_id
    return Executing(prompt_id, node_id, getattr(server, "client_id", None))


def send_event(event: str, data: dict[str, Any], sid: str | None) -> None:
    """An event for the client that queued the prompt only, as ComfyUI sends "executing"/"executed":
    with no client id (an API prompt that gave none) nobody gets it (``send_sync`` with no sid would
    reach every connected browser). Finished traces stay available from the /cachedit routes."""
    server = PromptServer.instance if PromptServer is not None else None
    if server is not None and sid is not None:
        server.send_sync(event, data, sid)
