"""Where a GPU's time went over a stretch of work: computing, communicating, copying, or waiting.

Used by bench/forward_profile.py for one forward, and by every worker for every job when
ACCEL_PROFILE_DIR is set (a diagnostic: the profiler slows the job down). The gaps name the
kernels on either side of each idle stretch, which says what the GPU was waiting for.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

Span = tuple[float, float]


def merge(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def overlap(a: list[Span], b: list[Span]) -> float:
    """Length of the intersection of two merged span lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _length(spans: list[Span]) -> float:
    return sum(end - begin for begin, end in spans)


def _kind(name: str) -> str:
    name = name.lower()
    return "comm" if "nccl" in name else "copy" if name.startswith("memcpy") else "compute"


@dataclass
class Gap:
    at_ms: float  # from the first kernel
    ms: float
    before: str  # the kernel that ended last before the gap
    after: str  # the kernel that started it again


@dataclass
class GpuTimeline:
    """Milliseconds on one GPU's clock. ``*_exposed``: with no compute kernel running beside it
    (an NCCL kernel's time includes its wait for the peer); copies are copy-engine transfers."""

    span_ms: float
    compute_ms: float
    idle_ms: float
    comm_ms: float
    comm_exposed_ms: float
    copy_ms: float
    copy_exposed_ms: float
    gaps: list[Gap]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def timeline_of(kernels: Iterable[tuple[float, float, str]], top_gaps: int = 10) -> GpuTimeline:
    """``kernels``: (start µs, end µs, name) of every GPU activity of one device."""
    kernels = sorted(kernels)
    if not kernels:
        return GpuTimeline(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, [])
    spans: dict[str, list[Span]] = {"comm": [], "copy": [], "compute": []}
    for begin, end, name in kernels:
        spans[_kind(name)].append((begin, end))
    merged = {kind: merge(found) for kind, found in spans.items()}
    origin = kernels[0][0]
    gaps, last_end, last_name = [], kernels[0][1], kernels[0][2]
    for begin, end, name in kernels[1:]:
        if begin > last_end:
            gaps.append(Gap(round((last_end - origin) / 1e3, 3), round((begin - last_end) / 1e3, 3), last_name, name))
        if end > last_end:
            last_end, last_name = end, name
    span = last_end - origin
    busy = _length(merge(s for found in spans.values() for s in found))
    ms = lambda us: round(us / 1e3, 2)  # noqa: E731
    return GpuTimeline(
        span_ms=ms(span), compute_ms=ms(_length(merged["compute"])), idle_ms=ms(span - busy),
        comm_ms=ms(_length(merged["comm"])),
        comm_exposed_ms=ms(_length(merged["comm"]) - overlap(merged["comm"], merged["compute"])),
        copy_ms=ms(_length(merged["copy"])),
        copy_exposed_ms=ms(_length(merged["copy"]) - overlap(merged["copy"], merged["compute"])),
        gaps=sorted(gaps, key=lambda gap: -gap.ms)[:top_gaps],
    )


def device_kernels(events) -> list[tuple[float, float, str]]:
    """The GPU activities among torch.profiler's events."""
    return [(e.time_range.start, e.time_range.end, e.name) for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA]


@contextlib.contextmanager
def cpu_waits_recorded() -> Iterator[collections.Counter]:
    """Count the operations that made the CPU wait for the GPU, by the Python line that called
    them (torch's sync debug mode). Each such wait drains the queue: the GPU idles while the
    CPU issues the next kernels."""
    counts: collections.Counter = collections.Counter()
    if not torch.cuda.is_available():
        yield counts
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        if "synchroniz" in str(w.message):
            counts[f"{Path(w.filename).name}:{w.lineno}"] += 1
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """Write the GPU timeline of the enclosed work to ``path`` as JSON, with the CPU's waits for
    the GPU (nothing when None)."""
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof, \
            cpu_waits_recorded() as waits:
        yield
        if cuda:
            torch.cuda.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    timeline = timeline_of(device_kernels(prof.events())).to_dict()
    path.write_text(json.dumps({**timeline, "cpu_waits": dict(waits.most_common())}, indent=1))
