"""A loaded model with its cache hooks: what a warm worker (or one process) keeps between jobs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..caching.contexts import ExpertCaches
from ..job.settings import EngineOptions, ModelSpec
from ..model.engine import (
    compile_block_ops,
    quantize_and_compile,
    set_attention_backend,
)
from ..model.engine_check import check_engine
from ..model.fused_block import fuse_block_ops
from ..model.loading import DualExperts, load_experts
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

    @classmethod
    def load(cls, spec: ModelSpec, device: torch.device | str = "cpu", engine: EngineOptions | None = None,
             parallelize: Callable[[DualExperts], None] | None = None,
             topology: Topology | None = None) -> "Runtime":
        """Load the experts, fuse their blocks' elementwise ops, attach cache hooks, then (in
        cache-dit's order) parallelism, attention backend, quantization and compile."""
        device = torch.device(device)
        engine = engine or EngineOptions()
        check_engine(engine, spec, device)
        experts = load_experts(spec, device)
        compiled = compile_block_ops(engine, device)
        for module in (experts.high, experts.low):  # before any hook wraps a block's forward
            fuse_block_ops(module, compiled=compiled)
        runtime = cls(experts, device, engine, topology)
        if parallelize is not None:
            parallelize(runtime.experts)
        set_attention_backend(runtime.experts, engine)
        quantize_and_compile(runtime.experts, engine)
        return runtime
