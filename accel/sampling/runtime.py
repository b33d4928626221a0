"""A loaded model with its cache hooks: what a warm worker (or one process) keeps between jobs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..caching.contexts import ExpertCaches
from ..job import memory
from ..job.settings import EXPERTS, RANDOM_SOURCES, EngineOptions, LoraChain, ModelSpec
from ..model.engine import (
    compile_block_ops,
    compile_experts,
    quantize_experts,
    set_attention_backend,
)
from ..model.engine_check import check_engine, check_shard
from ..model.files import model_config_for
from ..model.fused_block import fuse_block_ops
from ..model.host_mirrors import SharedArena, share_decision
from ..model.loading import DualExperts, load_experts
from ..model.lora_patching import LoraPatcher
from ..model.residency import Residency, host_copy, make_residency
from .topology import LocalTopology, Topology

log = logging.getLogger(__name__)

# Measured on an H200 (bench/results/2026-12-01-NVIDIA-H200-memory.md): dynamo cannot trace
# torchao's __torch_function__ on the Float8Tensor weights that cache-dit's offload hooks move
# inside the compiled blocks, so such a job would fail in its first forward.
STREAM_FP8_COMPILE_NOTE = ("compile is off under the 'stream' plan with FP8 weights (torch.compile cannot trace the "
                           "streamed float8 weights yet): the blocks run eager, measured 0.99x resident FP8 eager")
SHARED_NOTE = ("host RAM: one copy of both experts for the whole group (rank 0 reads the files; the other workers "
               "build their experts empty and map its copy)")
SHARD_SHARED_NOTE = ("host RAM while loading: one copy of both experts for the whole group (rank 0 reads the files; "
                     "every worker takes its share from that copy to its GPU, and the copy is freed)")
SHARED_QUANTIZED_NOTE = ("host RAM: one copy of both experts for the whole group (every worker reads and quantizes "
                         "its weights, then keeps only rank 0's copy)")


def apply_memory_fraction(device: torch.device) -> None:
    """Diagnostic: ACCEL_GPU_MEMORY_FRACTION caps this process's GPU memory (the caching
    allocator's), e.g. 24 GiB of an H200 for a 24 GB card's budget; the host's plan choice reads
    the same variable (job/memory.py)."""
    fraction = memory.memory_fraction()
    if fraction is not None and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        log.info("GPU memory capped at %.3f of %s (%s)", fraction, device, memory.MEMORY_FRACTION_ENV)


def resolve_in_process(engine: EngineOptions, spec: ModelSpec, device: torch.device, ulysses: int,
                       tokens: int) -> EngineOptions:
    """"auto" here, when no host chose (one process, or a group started without it): from this
    device's free memory and ``tokens`` (0: weights only)."""
    if engine.residency != "auto":
        return engine
    cuda = device.type == "cuda"
    budgets = memory.usable_bytes([device.index or 0]) if cuda else {}
    return memory.resolve_plan(engine, spec, model_config_for(spec), tokens, ulysses,
                               engine.ulysses_copy_engine and cuda, budgets)


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
        self.residency: Residency = Residency()  # where the weights live (model/residency.py)

    @property
    def notes(self) -> list[str]:
        """For the decision table's header."""
        chosen = [self.engine.residency_reason] if self.engine.residency_reason else []
        plan = [*chosen, *(self.residency.notes or [f"residency {self.residency.plan}"])]
        return [*self.engine_notes, *self.loras.notes, *plan]

    def apply_loras(self, chain: LoraChain) -> None:
        """Merge ``chain`` into the weights (a no-op when it is the merged one). Under swap and
        stream a changed weight is written where it lives now, then copied into its host mirror."""
        if chain == self.loras.chain:
            return
        self.residency.settle()  # no copy from a mirror in flight while the patcher writes
        before = {expert: set(names) for expert, names in self.loras.patched.items()}
        self.loras.apply(chain, quantized=self.engine.quantize is not None)
        self.residency.sync_mirrors({e: before[e] | self.loras.patched[e] for e in EXPERTS})

    @classmethod
    def load(cls, spec: ModelSpec, device: torch.device | str = "cpu", engine: EngineOptions | None = None,
             parallelize: Callable[[DualExperts], None] | None = None,
             topology: Topology | None = None, loras: LoraChain = (), tokens: int = 0) -> "Runtime":
        """Load the experts, fuse their blocks' elementwise ops, attach cache hooks, merge the LoRA
        chain, then (in cache-dit's order) parallelism, attention backend, quantization and compile
        (shard: quantization before the split); last, place the weights by the residency plan.
        Under swap, stream and shard the experts load into host memory and everything up to
        quantization runs there (cache-dit's torchao quantization takes CPU modules when CUDA is
        present); then swap / stream give both pinned host mirrors and the high-noise expert goes to
        the device, shard moves each rank's share there. ``tokens``: the job size, only for an "auto" plan
        that no host resolved."""
        device = torch.device(device)
        engine = engine or EngineOptions()
        check_engine(engine, spec, device)
        topology = topology or LocalTopology()
        ulysses = _sp_degree(topology)
        engine = resolve_in_process(engine, spec, device, ulysses, tokens)
        plan = engine.residency
        quantized = memory.weights_quantized(engine, spec)
        notes = []
        if plan == "shard":
            check_shard(engine, spec, ulysses if parallelize is not None else 1)
        if engine.compile and plan == "stream" and quantized:
            engine = dataclasses.replace(engine, compile=False)
            notes.append(STREAM_FP8_COMPILE_NOTE)
            log.warning("%s", STREAM_FP8_COMPILE_NOTE)
        # shard: the experts whole in host RAM only while each worker takes its share of them; with the
        # FP8 Quantize node every worker quantizes its own (all of it, before the split) anyway
        shareable = plan in ("swap", "stream") or (plan == "shard" and engine.quantize is None)
        shared = shareable and share_decision(
            topology.control, memory.mirror_bytes(model_config_for(spec), spec.dtype, quantized))
        # an fp8_scaled file's float8 weights come as stored: empty ones take rank 0's as well;
        # the FP8 Quantize node's are computed from each worker's own bf16 weights first
        empty = shared and dist.get_rank(topology.control) != 0 and engine.quantize is None
        if shared:
            notes.append(SHARD_SHARED_NOTE if plan == "shard" else
                         SHARED_NOTE if engine.quantize is None else SHARED_QUANTIZED_NOTE)
        experts = load_experts(spec, torch.device("meta")) if empty else _load_for(plan, spec, device)
        compiled = compile_block_ops(engine, device)
        for module in (experts.high, experts.low):  # before any hook wraps a block's forward
            fuse_block_ops(module, compiled=compiled)
        runtime = cls(experts, device, engine, topology)
        # before quantization: float8 layers get merged weights; empty experts: rank 0 merges the shared copy
        runtime.loras.apply(loras, quantized=False, write=not empty)
        # shard quantizes the whole weights, then splits them with their scales: each rank holds
        # its part of what resident computes with (per-part scales would differ)
        if plan == "shard":
            notes += quantize_experts(runtime.experts, engine)
            if shared:  # empty experts take rank 0's weights, and each worker its share of them
                host_copy(runtime.experts, SharedArena(topology.control, register=False))
        if parallelize is not None:
            parallelize(runtime.experts)
        notes += set_attention_backend(runtime.experts, engine, device)
        if plan != "shard":
            notes += quantize_experts(runtime.experts, engine)
        compile_experts(runtime.experts, engine)
        runtime.engine_notes = notes
        apply_memory_fraction(device)  # here: a random preset is built on the device before (see _load_for)
        runtime.residency = make_residency(plan, runtime.experts, device, dtype=spec.dtype, sp_degree=ulysses,
                                           shared_group=topology.control if shared else None)
        log.info("residency plan %s on %s", plan, device)
        return runtime


def _load_for(plan: str, spec: ModelSpec, device: torch.device) -> DualExperts:
    """Resident: onto the device. Swap / stream / shard: into host memory (shard: the tensor-parallel
    split then moves each rank's share to the device), except the random presets,
    whose weights come from the device's generator (CPU and CUDA draw different numbers): built
    there one expert at a time and moved to the host, so that every plan computes with the very
    weights resident does (the device must hold one expert while it is built)."""
    if plan == "resident":
        return load_experts(spec, device)
    if spec.source not in RANDOM_SOURCES or device.type == "cpu":
        return load_experts(spec, torch.device("cpu"))
    from ..model.files import RANDOM_CONFIGS
    from ..model.loading import TORCH_DTYPES, _random_expert

    config, dtype = RANDOM_CONFIGS[spec.source], TORCH_DTYPES[spec.dtype]
    high, low = (_random_expert(config, seed, dtype, device).to("cpu") for seed in (spec.seed, spec.seed + 1))
    torch.cuda.empty_cache()
    return DualExperts(high=high.eval().requires_grad_(False), low=low.eval().requires_grad_(False), spec=spec)


def _sp_degree(topology: Topology) -> int:
    group = getattr(topology, "sp_group", None)
    if group is None:
        return 1
    return dist.get_world_size(group)
