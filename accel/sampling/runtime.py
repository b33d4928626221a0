"""A loaded model with its cache hooks: what a warm worker (or one process) keeps between jobs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..caching.contexts import ExpertCaches
from ..job.settings import EngineOptions, LoraChain, ModelSpec
from ..model.engine import (
    compile_block_ops,
    quantize_and_compile,
    set_attention_backend,
)
from ..model.engine_check import check_engine
from ..model.fused_block import fuse_block_ops
from ..model.loading import DualExperts, load_experts
from ..model.lora_patching import LoraPatcher
from .topology import LocalTopology, Topology


class Runtime:
    """The experts, where they run, how this process takes part in a step, and their cache state."""

    def __init__(self, experts: DualExperts, device: torch.device, engine: EngineOptions,
                 topology: Topology | None = None):
        self.experts = experts
        self.device = device
        self.engine = engine
        self.topology = topology or LocalTopology()
        self.caches = ExpertCaches(experts)
        self.loras = LoraPatcher(experts, experts.spec)
        self.engine_notes: list[str] = []  # what loading applied differently from the request

    @property
    def notes(self) -> list[str]:
        """For the decision table's header."""
        return [*self.engine_notes, *self.loras.notes]

    def apply_loras(self, chain: LoraChain) -> None:
        """Merge ``chain`` into the weights (a no-op when it is the merged one)."""
        self.loras.apply(chain, quantized=self.engine.quantize is not None)

    @classmethod
    def load(cls, spec: ModelSpec, device: torch.device | str = "cpu", engine: EngineOptions | None = None,
             parallelize: Callable[[DualExperts], None] | None = None,
             topology: Topology | None = None, loras: LoraChain = ()) -> "Runtime":
        """Load the experts, fuse their blocks' elementwise ops, attach cache hooks, merge the LoRA
        chain, then (in cache-dit's order) parallelism, attention backend, quantization and compile."""
        device = torch.device(device)
        engine = engine or EngineOptions()
        check_engine(engine, spec, device)
        experts = load_experts(spec, device)
        compiled = compile_block_ops(engine, device)
        for module in (experts.high, experts.low):  # before any hook wraps a block's forward
            fuse_block_ops(module, compiled=compiled)
        runtime = cls(experts, device, engine, topology)
        runtime.loras.apply(loras, quantized=False)  # before quantization: float8 layers get merged weights
        if parallelize is not None:
            parallelize(runtime.experts)
        set_attention_backend(runtime.experts, engine)
        runtime.engine_notes = quantize_and_compile(runtime.experts, engine)
        return runtime
