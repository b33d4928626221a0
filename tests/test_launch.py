"""How workers are started: which GPUs they see and which Python runs them (read from the
environment a started worker really gets)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from helpers import TINY

from accel.errors import UserInputError, WorkerGroupError
from accel.parallel.group import WorkerGroup
from accel.parallel.launch import WORKER_PYTHON_ENV, start_worker
from accel.parallel.layout import ParallelLayout


def env_dumping_python(folder: Path) -> Path:
    """A stand-in interpreter that writes the environment it was started with, then fails."""
    script = folder / "python"
    script.write_text('#!/bin/sh\nenv > "$PWD/worker.env"\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def worker_environment(tmp_path: Path, devices: tuple[int, ...]) -> dict[str, str]:
    proc = start_worker({"rank": 0}, b"key", devices, tmp_path / "rank0.log", tmp_path / "compile",
                        str(env_dumping_python(tmp_path)))
    proc.wait()
    lines = (tmp_path / "worker.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.parametrize("server_visible, devices, expected", [
    ("4,5", (0, 1), "4,5"),  # ComfyUI started with CUDA_VISIBLE_DEVICES=4,5
    ("3", (0,), "3"),  # --cuda-device 3 sets CUDA_VISIBLE_DEVICES=3
    ("2,7,5", (2, 0), "5,2"),
    ("GPU-8a1f,GPU-77c2", (1,), "GPU-77c2"),
    (None, (0, 1), "0,1"),
])
def test_workers_get_the_servers_gpus_not_its_logical_indices(tmp_path, monkeypatch, server_visible, devices,
                                                               expected):
    if server_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", server_visible)
    assert worker_environment(tmp_path, devices)["CUDA_VISIBLE_DEVICES"] == expected


def test_a_gpu_the_server_cannot_see_is_refused_before_any_worker_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    group = WorkerGroup(TINY, ParallelLayout(ulysses=2, devices=(0, 1)))
    with pytest.raises(UserInputError, match=r"GPU \[1\] not found: CUDA_VISIBLE_DEVICES='3'"):
        group.check()
    assert group.procs == []


def test_workers_run_in_the_python_named_by_the_setting(tmp_path, monkeypatch):
    python = env_dumping_python(tmp_path)
    monkeypatch.setenv(WORKER_PYTHON_ENV, str(python))
    group = WorkerGroup(TINY, ParallelLayout())
    group.log_dir = tmp_path
    with pytest.raises(WorkerGroupError, match="worker rank 0 exited with code 1"):
        group.start()
    assert (tmp_path / "worker.env").is_file()  # the named interpreter ran
    assert all(proc.poll() is not None for proc in group.procs)


def test_a_worker_python_that_is_not_an_interpreter_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(WORKER_PYTHON_ENV, str(tmp_path / "missing" / "python"))
    with pytest.raises(UserInputError, match=f"{WORKER_PYTHON_ENV}=.* is not an executable Python"):
        WorkerGroup(TINY, ParallelLayout())
