"""A stand-in for the few names of ComfyUI's node API (``comfy_api.latest``) that the nodes use.

Used only where ComfyUI is not installed (the unit tests, scripts): ``nodes/comfy.py`` imports the
real ``ComfyExtension``, ``io`` and ``ui`` when it can, and these otherwise. Written for this pack,
not taken from ComfyUI: it has the same class names and keyword arguments as the real API, holds a
node's schema and calls nothing by itself. What the real server does with a schema (its widget
checks, the node list, the frontend) is tested against real ComfyUI in tests/integration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any


class _Input:
    """Any input: the id, the common keywords, and the widget's own keywords as attributes."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 **widget: Any):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.default = widget.pop("default", None)
        self.options = widget.pop("options", None)
        self.min = widget.pop("min", None)
        self.max = widget.pop("max", None)
        self.__dict__.update(widget)

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class _ComboInput(_Input):
    def __init__(self, id: str, options: list | None = None, display_name: str | None = None, **widget: Any):
        super().__init__(id, display_name, options=list(options or []), **widget)


class _Output:
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


def Custom(io_type: str) -> type:
    """A type with ``Input`` and ``Output``, like ``io.Custom``; ``io_type`` is the wire name."""
    input_cls = _ComboInput if io_type == "COMBO" else _Input
    attrs = {"io_type": io_type, "Input": type("Input", (input_cls,), {}), "Output": type("Output", (_Output,), {})}
    kind = type(io_type.title(), (), attrs)
    kind.Input.Parent = kind.Output.Parent = kind
    return kind


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list | None = None
    outputs: list | None = None
    hidden: list | None = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False


class ComfyNode(ABC):
    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema: ...

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs): ...

    @classmethod
    def validate_inputs(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None, block_execution: str | None = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args or None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class PreviewText:
    def __init__(self, value: str, **kwargs: Any):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list[type[ComfyNode]]: ...


io = SimpleNamespace(
    ComfyNode=ComfyNode, Schema=Schema, NodeOutput=NodeOutput, Custom=Custom,
    Int=Custom("INT"), Float=Custom("FLOAT"), String=Custom("STRING"), Boolean=Custom("BOOLEAN"),
    Combo=Custom("COMBO"), Latent=Custom("LATENT"), Conditioning=Custom("CONDITIONING"), Image=Custom("IMAGE"),
)
ui = SimpleNamespace(PreviewText=PreviewText)
