"""Worker side: where each expert's weights live, per EngineOptions.residency (see job/memory.py).

- resident: both experts stay where loading put them (on the device). Nothing moves.
- swap: every parameter and buffer of both experts has a pinned host mirror, made once when the
  group starts and kept for its life (one copy for all the group's workers where /dev/shm has
  room: host_mirrors.py). Offloading an expert is re-pointing its tensors at their
  mirrors (free: the device copies go back to the caching allocator); onloading is one
  host-to-device copy per tensor on a side stream, into device memory allocated on the compute
  stream (so it reuses what the offloaded expert just freed), which the compute stream waits for
  before the expert's first forward (the host never blocks). A job starts by making its first
  expert resident (free if it already is; else offloading the other when the GPU cannot hold
  both, then one copy); when the GPU can also hold the second expert and the job's activations,
  that expert is copied in at once, under the first expert's steps (a prefetch); otherwise at the
  switch. At the end the last expert stays resident: the next job brings the high-noise expert
  back at its start, only if it runs.
- stream: as swap for everything outside the blocks' Linear layers; those (the bulk of the
  weights) are streamed from the same pinned mirrors ahead of use by cache-dit's layerwise offload
  (``cache_dit.offload.layerwise``, async copy streams, a prefetch window of
  memory.STREAM_PREFETCH_BLOCKS blocks). Targets are the Linear layers, not the blocks: cache-dit
  moves a target's *direct* parameters only, and the fused block reads its modulation table and
  cross-attention norm without calling a module, so those stay resident with the rest. FP8
  weights (torchao Float8Tensor) move by their inner tensors there too (model/layerwise_float8.py).

LoRA: the patcher writes merged weights into ``param.data``, wherever that is (the device copy
of a resident expert, the mirror of an offloaded one); ``sync_mirrors`` then copies every
changed weight whose live tensor is not its mirror back into the mirror, so both places agree.
torchao Float8Tensor weights move by their inner tensors (qdata, scale: ``__tensor_flatten__``),
as any traceable tensor subclass. On the CPU (tests) the "device" is the CPU and the mirrors are
separate copies: the same code paths, with copies that are exact.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..job import memory
from ..job.settings import EXPERTS
from . import layerwise_float8
from .host_mirrors import PinnedArena, SharedArena
from .layerwise_float8 import is_tensor_subclass
from .loading import DualExperts

log = logging.getLogger(__name__)

PREFETCH_MARGIN_BYTES = memory.GIB  # kept free beyond the estimated activations when prefetching
STREAM_TRANSFER_BUCKETS = 2  # cache-dit's copy streams per direction


# Tensors and tensor subclasses (torchao Float8Tensor: qdata + scale)


def rebuild(tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``tensor`` with each plain tensor inside it replaced by ``fn`` of it (a subclass rebuilt)."""
    if is_tensor_subclass(tensor):
        names, context = tensor.__tensor_flatten__()
        inner = {name: rebuild(getattr(tensor, name), fn) for name in names}
        return type(tensor).__tensor_unflatten__(inner, context, tensor.size(), tensor.stride())
    return fn(tensor)


def plain_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    if is_tensor_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return [part for name in names for part in plain_parts(getattr(tensor, name))]
    return [tensor]


def nbytes(tensor: torch.Tensor) -> int:
    return sum(part.numel() * part.element_size() for part in plain_parts(tensor))


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(x.data_ptr() == y.data_ptr() and x.device == y.device for x, y in zip(plain_parts(a), plain_parts(b)))


def copy_parts(dst: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> None:
    for d, s in zip(plain_parts(dst), plain_parts(src)):
        d.copy_(s, non_blocking=non_blocking)


def _empty_like(part: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    return torch.empty_strided(part.size(), part.stride(), dtype=part.dtype, device=device, pin_memory=pin)


@dataclass
class Slot:
    """One parameter or buffer of an expert and its host mirror."""

    module: torch.nn.Module
    kind: str  # "parameter" | "buffer"
    attr: str
    name: str  # within the expert, as named_parameters() names it
    mirror: torch.Tensor
    moved: bool = True  # moved by this class (False: streamed by cache-dit)

    def get(self) -> torch.Tensor:
        if self.kind == "buffer":
            return self.module._buffers[self.attr]
        param = self.module._parameters[self.attr]
        return param if is_tensor_subclass(param) else param.data

    def set(self, tensor: torch.Tensor) -> None:
        if self.kind == "buffer":
            self.module._buffers[self.attr] = tensor
        elif is_tensor_subclass(tensor) or self.module._parameters[self.attr].is_meta:
            # ``param.data = x`` does not take for a wrapper subclass (the parameter keeps its own
            # inner tensors: torchao Float8Tensor's qdata and scale), nor for an empty (meta)
            # parameter of a worker that maps rank 0's host copy. A new Parameter does.
            self.module._parameters[self.attr] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            self.module._parameters[self.attr].data = tensor


def _slots(module: torch.nn.Module, streamed: Callable[[str, torch.nn.Module], bool] | None) -> list[Slot]:
    slots = []
    for module_name, sub in module.named_modules():
        moved = streamed is None or not streamed(module_name, sub)
        entries = [("parameter", attr, p) for attr, p in sub._parameters.items() if p is not None]
        entries += [("buffer", attr, b) for attr, b in sub._buffers.items() if b is not None]
        for kind, attr, _ in entries:
            name = f"{module_name}.{attr}" if module_name else attr
            slots.append(Slot(sub, kind, attr, name, mirror=None, moved=moved))  # type: ignore[arg-type]
    return slots


def host_copy(experts: DualExperts, arena: PinnedArena,
              streamed: Callable[[str, torch.nn.Module], bool] | None = None) -> dict[str, list[Slot]]:
    """Every parameter and buffer of both experts moved into ``arena``'s chunks (filled where this
    process writes them: a shared arena's first rank) and made the weight at once, slot by slot:
    host RAM holds one loaded tensor beside the arena at a time. Returns each expert's slots."""
    slots = {expert: _slots(experts.expert(expert), streamed) for expert in EXPERTS}
    places = iter([arena.place(nbytes(part)) for expert in EXPERTS for slot in slots[expert]
                   for part in plain_parts(slot.get()) if part.is_contiguous()])
    arena.open()

    def host(part: torch.Tensor) -> torch.Tensor:
        if not part.is_contiguous():
            return part.cpu().pin_memory() if arena.pin else part.clone()  # keeps its strides (none in Wan)
        mirror = arena.view(next(places), part)
        if arena.writes:
            mirror.copy_(part)
        return mirror

    for slot in (slot for expert in EXPERTS for slot in slots[expert]):
        slot.mirror = rebuild(slot.get().detach(), host)
        slot.set(slot.mirror)
    arena.filled()
    return slots


@dataclass
class ExpertState:
    slots: list[Slot]
    device_bytes: int  # on the device when resident (what this class moves)
    where: str = "host"  # "host" | "loading" | "device"
    event: object = None  # the copy's end (CUDA event) while loading


@dataclass
class Onload:
    expert: str
    at: str  # "load", "start", "prefetch", "switch"
    nbytes: int
    start: object = None
    end: object = None
    ms: float | None = None


class Residency:
    """resident: nothing moves."""

    plan = "resident"

    def __init__(self) -> None:
        self.onloads: list[Onload] = []
        self.host_mirror_bytes = 0

    @property
    def notes(self) -> list[str]:
        return []

    def settle(self) -> None:
        """Finish any copy in flight (before the host writes weights: LoRA)."""

    def begin_job(self, experts_of_step: Sequence[str], tokens: int) -> None:
        """Make the job's first expert resident; prefetch the next one if the GPU holds it."""

    def switch_to(self, expert: str) -> None:
        """The loop reached the first step of ``expert``."""

    def end_job(self) -> dict:
        """What this job paid, for trace.info["residency"]."""
        return {"plan": self.plan}

    def sync_mirrors(self, names: dict[str, set[str]]) -> None:
        """Weights ``names`` (per expert) were written in place: make their mirrors agree."""


class SwapResidency(Residency):
    """Only the running expert on the device; the other in its pinned host mirror."""

    plan = "swap"

    def __init__(self, experts: DualExperts, device: torch.device, *, dtype: str = "bf16", sp_degree: int = 1,
                 streamed: Callable[[str, torch.nn.Module], bool] | None = None, arena: PinnedArena | None = None):
        """``arena``: where the mirrors live (host_mirrors.py: a SharedArena for a group's workers);
        default: this worker's own pinned chunks."""
        super().__init__()
        self.experts = experts
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.side = torch.cuda.Stream(self.device) if self.cuda else None
        self.dtype, self.sp_degree = dtype, sp_degree
        self.quantized = layerwise_float8.has_subclass_weights(experts.high.modules())  # FP8: larger activations
        self.arena = arena or PinnedArena(pin=self.cuda)
        self.budget: int | None = None  # tests: a pretend device size (bytes); None: the real free memory
        self.running: str | None = None
        self.states: dict[str, ExpertState] = {}
        self.by_name: dict[str, dict[str, Slot]] = {}
        slots = host_copy(experts, self.arena, streamed)
        for expert in EXPERTS:
            self.states[expert] = ExpertState(slots[expert], sum(nbytes(s.mirror) for s in slots[expert] if s.moved))
            self.by_name[expert] = {slot.name: slot for slot in slots[expert]}
            self.host_mirror_bytes += sum(nbytes(s.mirror) for s in slots[expert])
        self.host_mirror_bytes = max(self.host_mirror_bytes, self.arena.reserved_bytes)  # with the chunks' tails
        self.onload("high", "load")
        self._ready("high")
        log.info("residency %s: host mirrors %.1f GiB (both experts), %s; the high-noise expert on %s", self.plan,
                 self.host_mirror_bytes / memory.GIB, self._mirrors_held(), self.device)

    def _mirrors_held(self) -> str:
        pinned = "pinned" if self.cuda else "in host memory"
        if self.arena.shared_by > 1:
            return f"{pinned}, one copy shared by the group's {self.arena.shared_by} workers"
        return f"{pinned} per worker"

    @property
    def notes(self) -> list[str]:
        return [(f"residency {self.plan}: host mirrors {self.host_mirror_bytes / memory.GIB:.2f} GiB "
                 f"{self._mirrors_held()}; one expert ({self.states['high'].device_bytes / memory.GIB:.2f} GiB "
                 "moved per swap) on the GPU at a time")]

    # setup

    # moving

    def _free_bytes(self) -> int:
        if self.budget is not None or not self.cuda:
            if self.budget is None:
                return 1 << 62  # the CPU: no device to run out of
            return self.budget - sum(s.device_bytes for s in self.states.values() if s.where != "host")
        free, total = torch.cuda.mem_get_info(self.device)
        reserved = torch.cuda.memory_reserved(self.device)
        cached = reserved - torch.cuda.memory_allocated(self.device)
        fraction = memory.memory_fraction()
        if fraction is not None:
            free = min(free, max(0, int(fraction * total) - reserved))
        return free + cached

    def _fits(self, expert: str, headroom: int = 0) -> bool:
        return self._free_bytes() - headroom >= self.states[expert].device_bytes

    def onload(self, expert: str, at: str) -> None:
        """Start copying ``expert`` from its mirrors onto the device (no host wait)."""
        state = self.states[expert]
        if state.where != "host":
            return
        slots = [slot for slot in state.slots if slot.moved]
        # Allocated on the compute stream: reuses what an offloaded expert just freed there.
        targets = [rebuild(slot.mirror, lambda part: _empty_like(part, self.device)) for slot in slots]
        record = Onload(expert, at, state.device_bytes)
        if self.cuda:
            self.side.wait_stream(torch.cuda.current_stream(self.device))  # that memory's last readers
            record.start, record.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.side):
                record.start.record()
                for target, slot in zip(targets, slots):
                    copy_parts(target, slot.mirror, non_blocking=True)
                record.end.record()
            state.event = record.end
        else:
            begin = time.perf_counter()
            for target, slot in zip(targets, slots):
                copy_parts(target, slot.mirror)
            record.ms = (time.perf_counter() - begin) * 1e3
        for target, slot in zip(targets, slots):
            slot.set(target)
        state.where = "loading"
        self.onloads.append(record)

    def _ready(self, expert: str) -> None:
        """The compute stream waits for ``expert``'s copy (the host does not)."""
        state = self.states[expert]
        if state.where == "host":
            raise RuntimeError(f"the {expert}-noise expert is not on {self.device}")
        if state.where == "loading":
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(state.event)
            state.where, state.event = "device", None

    def offload(self, expert: str) -> None:
        """Point ``expert`` back at its mirrors (free: they are kept current)."""
        state = self.states[expert]
        if state.where == "host":
            return
        if state.where == "loading":
            self._ready(expert)  # its device memory is freed below: only once the copy into it is done
        for slot in state.slots:
            if slot.moved:
                slot.set(slot.mirror)
        state.where = "host"

    def settle(self) -> None:
        for state in self.states.values():
            if state.where == "loading":
                if self.cuda:
                    state.event.synchronize()
                state.where, state.event = "device", None

    # the job

    def _activations(self, tokens: int) -> int:
        per_rank = -(-tokens // self.sp_degree)
        return memory.activation_bytes(dict(self.experts.config), self.dtype, per_rank,
                                       self.quantized) + PREFETCH_MARGIN_BYTES

    def begin_job(self, experts_of_step: Sequence[str], tokens: int) -> None:
        self.onloads = []
        order = list(dict.fromkeys(experts_of_step))
        if not order:
            return
        first, later = order[0], order[1:]
        activations = self._activations(tokens)
        if self.states[first].where == "host":
            if not self._fits(first, activations):  # room for the job's activations too
                for other in EXPERTS:
                    if other != first:
                        self.offload(other)
            self.onload(first, "start")
        self._ready(first)
        self.running = first
        for expert in later:  # under the first expert's steps, if the GPU holds both and the activations
            if self.states[expert].where == "host" and self._fits(expert, activations):
                self.onload(expert, "prefetch")

    def switch_to(self, expert: str) -> None:
        previous, self.running = self.running, expert
        if previous is not None and previous != expert:
            self.offload(previous)  # before the copy: the copy reuses its memory
        self.onload(expert, "switch")
        self._ready(expert)

    def end_job(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        for record in self.onloads:
            if record.ms is None and record.end is not None:
                record.ms = record.start.elapsed_time(record.end)
        return {
            "plan": self.plan,
            "host_mirror_gb": self.host_mirror_bytes / memory.GIB,
            "onloads": [{"expert": r.expert, "at": r.at, "gb": r.nbytes / memory.GIB, "ms": r.ms} for r in self.onloads],
            "on_device": [e for e in EXPERTS if self.states[e].where != "host"],
        }

    def sync_mirrors(self, names: dict[str, set[str]]) -> None:
        self.settle()
        copied = 0
        for expert, changed in names.items():
            for name in changed:
                slot = self.by_name[expert][name]
                live = slot.get()
                if not same_storage(live, slot.mirror):
                    copy_parts(slot.mirror, live)
                    copied += 1
        if copied:
            log.info("residency %s: %d changed weights copied into their host mirrors", self.plan, copied)


def _is_streamed(module_name: str, module: torch.nn.Module) -> bool:
    return module_name.startswith("blocks.") and isinstance(module, torch.nn.Linear)


@contextlib.contextmanager
def _mirrors_are_pinned() -> Iterator[None]:
    """cache-dit pins a CPU target tensor it finds unpinned. Ours are pinned already (on CUDA), or
    cannot be (the CPU); a Float8Tensor wrapper reports unpinned whatever its qdata: its mirror is
    ours either way, shared, never a second copy."""
    own = "is_pinned" in vars(torch.Tensor)
    original = torch.Tensor.is_pinned
    torch.Tensor.is_pinned = lambda self, *args, **kwargs: True
    try:
        yield
    finally:
        if own:
            torch.Tensor.is_pinned = original
        else:
            del torch.Tensor.is_pinned


class StreamResidency(SwapResidency):
    """The running expert's block Linear layers streamed by cache-dit; the rest as in swap."""

    plan = "stream"

    def __init__(self, experts: DualExperts, device: torch.device, **kwargs):
        super().__init__(experts, device, streamed=_is_streamed, **kwargs)
        from cache_dit.offload.layerwise import layerwise_cpu_offload

        self.handles = {}
        for expert in EXPERTS:
            module = experts.expert(expert)
            names = [name for name, sub in module.named_modules() if _is_streamed(name, sub)]
            block = [n for n in names if n.startswith("blocks.0.")]
            # cache-dit counts a target's bytes as numel x element size of the wrapper (2 for FP8's bf16)
            block_bytes = sum(sum(t.numel() * t.element_size() for t in module.get_submodule(n).parameters(False))
                              for n in block)
            targets = [module.get_submodule(n) for n in names]
            if layerwise_float8.has_subclass_weights(targets):  # FP8 weights (torchao Float8Tensor)
                layerwise_float8.install()
            with _mirrors_are_pinned():
                self.handles[expert] = layerwise_cpu_offload(
                    module, module_names=names, onload_device=self.device, async_transfer=self.cuda,
                    transfer_buckets=STREAM_TRANSFER_BUCKETS, eager_offload=True, persistent_buckets=0,
                    max_inflight_prefetch_bytes=memory.STREAM_PREFETCH_BLOCKS * block_bytes if self.cuda else None,
                )
        self.streamed_bytes = sum(nbytes(s.mirror) for s in self.states["high"].slots if not s.moved)

    @property
    def notes(self) -> list[str]:
        return [(f"residency stream: host mirrors {self.host_mirror_bytes / memory.GIB:.2f} GiB {self._mirrors_held()}; "
                 f"the running expert's block Linear layers ({self.streamed_bytes / memory.GIB:.2f} GiB) streamed "
                 f"per forward by cache-dit's layerwise offload ({memory.STREAM_PREFETCH_BLOCKS} blocks ahead), "
                 f"{self.states['high'].device_bytes / memory.GIB:.2f} GiB resident")]


class ShardResidency(Residency):
    """shard: nothing moves either; each rank holds its tensor-parallel share of both experts
    (accel/parallel/tensor_parallel.py)."""

    plan = "shard"

    def __init__(self, sp_degree: int, float8_layers: int) -> None:
        super().__init__()
        self.sp_degree = sp_degree
        self.float8_layers = float8_layers

    @property
    def notes(self) -> list[str]:
        weights = f"({self.float8_layers} FP8 layers per expert, split with their scales)" if self.float8_layers else "(bf16)"
        return [f"residency shard: both experts on the GPUs, the blocks' Linear weights {weights} split over "
                f"{self.sp_degree} ranks by cache-dit's tensor-parallel plan for Wan (no host copy kept)"]


def make_residency(plan: str, experts: DualExperts, device: torch.device, *, dtype: str, sp_degree: int,
                   shared_group=None) -> Residency:
    """``shared_group``: the gloo group of every worker, whose swap / stream mirrors are one shared
    copy (host_mirrors.share_decision said so); None: this worker's own. Shard keeps no mirrors."""
    if plan == "resident":
        return Residency()
    if plan == "shard":
        from .engine import float8_linears

        return ShardResidency(sp_degree, float8_linears(experts.high))
    arena = SharedArena(shared_group, register=device.type == "cuda") if shared_group is not None else None
    kind = {"swap": SwapResidency, "stream": StreamResidency}[plan]
    return kind(experts, device, dtype=dtype, sp_degree=sp_degree, arena=arena)
