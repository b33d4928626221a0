"""The GPU timeline diagnostic: what it computes from kernel spans, and that workers write it."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, tiny_job

from accel.diagnostics.profiling import cpu_waits_recorded, timeline_of
from accel.parallel.group import WorkerGroup
from accel.parallel.layout import ParallelLayout


def test_timeline_splits_compute_communication_copies_and_idle():
    kernels = [  # (start µs, end µs, name)
        (0, 10_000, "nvjet_gemm"),
        (5_000, 20_000, "ncclDevKernel_SendRecv"),  # 5 ms beside the GEMM, 10 ms alone
        (30_000, 40_000, "flash_fwd_kernel"),  # after 10 ms of nothing
        (32_000, 34_000, "Memcpy PtoP (Device -> Device)"),  # beside the attention
        (41_000, 43_000, "Memcpy DtoD (Device -> Device)"),  # alone, after 1 ms of nothing
    ]
    timeline = timeline_of(kernels)
    assert timeline.span_ms == 43.0 and timeline.compute_ms == 20.0
    assert (timeline.comm_ms, timeline.comm_exposed_ms) == (15.0, 10.0)
    assert (timeline.copy_ms, timeline.copy_exposed_ms) == (4.0, 2.0)
    assert timeline.idle_ms == 11.0
    first = timeline.gaps[0]
    assert (first.at_ms, first.ms, first.before, first.after) == (20.0, 10.0, "ncclDevKernel_SendRecv", "flash_fwd_kernel")
    assert [gap.ms for gap in timeline.gaps] == [10.0, 1.0]


def test_workers_write_each_jobs_timeline_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_PROFILE_DIR", str(tmp_path))
    with WorkerGroup(TINY, ParallelLayout(ulysses=2)) as group:
        assert group.run(tiny_job()).trace.records
    for rank in (0, 1):
        written = json.loads((tmp_path / f"rank{rank}-job1.json").read_text())
        assert {"span_ms", "idle_ms", "comm_exposed_ms", "copy_exposed_ms", "gaps", "cpu_waits"} <= set(written)


def test_cpu_waits_are_counted_by_calling_line(monkeypatch):
    """On CUDA torch warns at each op that waits for the GPU; the recorder counts them per line."""
    import warnings

    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with pytest.warns(UserWarning, match="something else"), cpu_waits_recorded() as waits:  # others pass through
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    line = next(iter(waits))
    assert line.startswith("test_profiling.py:") and waits[line] == 3 and len(waits) == 1
    assert modes == ["warn", 0]  # the previous mode is restored
