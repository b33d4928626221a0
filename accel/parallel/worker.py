"""Entry point of one worker process (one rank, one GPU or one CPU rank on gloo).

Started by ``launch.py``, which imports this core by file path: a worker never imports
ComfyUI and never needs to know the name ComfyUI gave the pack.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from ..diagnostics.profiling import profiled
from ..errors import JobCancelled, UserInputError
from ..job.job import Job
from ..job.settings import EngineOptions, JobSettings, ModelSpec, chain_from_json
from ..logs import setup_logging
from ..model.vae import VAE_REQUESTS, GroupVae
from ..sampling.loop import run_job
from ..sampling.runtime import Runtime
from ..sampling.topology import GroupTopology
from .channel import Message, connect, receive, send
from .layout import ParallelLayout
from .mesh import build_mesh
from .tensor_parallel import enable_tensor_parallelism
from .ulysses.enable import enable_ulysses, outside_allocator_bytes

log = logging.getLogger(__name__)

IDLE_TIMEOUT = timedelta(days=30)  # the control group waits for the next job as long as the host lives


@dataclass
class WorkerConfig:
    rank: int
    world: int
    master_port: int
    channel_port: int
    parent_pid: int
    collective_timeout_s: float
    spec: dict
    layout: dict
    engine: dict
    loras: list

    @classmethod
    def from_env(cls) -> "WorkerConfig":
        return cls(**json.loads(os.environ["ACCEL_WORKER"]))


def die_with_parent(parent_pid: int) -> None:
    """No orphans: exit within a second of the host's death, whatever this rank is blocked in."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


class Worker:
    def __init__(self, config: WorkerConfig, conn):
        self.config = config
        self.conn = conn
        self.layout = ParallelLayout.from_dict(config.layout)
        self.spec = ModelSpec(**config.spec)
        self.rank = config.rank
        if self.layout.devices is None:
            self.device = torch.device("cpu")
        else:
            self.device = torch.device("cuda", self.rank)  # CUDA_VISIBLE_DEVICES holds the group's GPUs
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            self.layout.backend, init_method=f"tcp://127.0.0.1:{config.master_port}", rank=self.rank,
            world_size=config.world, timeout=timedelta(seconds=config.collective_timeout_s),
            device_id=self.device if self.device.type == "cuda" else None,
        )
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        mesh = build_mesh(self.layout, self.device.type)
        engine = EngineOptions.from_dict(config.engine)
        self.cp_configs = []

        def parallelize(experts) -> None:
            self.layout.check_model(experts.config["num_attention_heads"])
            if engine.residency == "shard":  # tensor parallel on the sequence-parallel ranks instead
                enable_tensor_parallelism(experts, mesh, self.device)
            elif self.layout.ulysses > 1:
                self.cp_configs = enable_ulysses(experts, mesh, self.layout.ulysses, engine, self.device,
                                                 timedelta(seconds=config.collective_timeout_s))

        self.runtime = Runtime.load(self.spec, self.device, engine, parallelize,
                                    GroupTopology(self.layout, mesh, self.control), chain_from_json(config.loras))
        self.loaded_at = time.time()
        self.jobs = 0
        self.last_latent: torch.Tensor | None = None  # the last job's, on every rank, for a decode without upload

    def _broadcast(self, message: Message | None) -> Message:
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def _should_cancel(self) -> bool:
        flag = torch.zeros(1, dtype=torch.int32)
        if self.rank == 0 and self.conn.poll():
            flag[0] = int(receive(self.conn).kind == "cancel")
        dist.broadcast(flag, src=0, group=self.control)
        return bool(flag[0])

    def _on_step(self, step: int, records) -> None:
        send(self.conn, Message("step", {"step": step, "records": [r.to_dict() for r in records]}))

    def _set_uneven(self, job: Job) -> None:
        """Ulysses on a sequence the degree does not divide: cache-dit's uneven ("anything") mode."""
        patch = self.runtime.experts.config["patch_size"]
        frames, height, width = job.latent.shape[2:]
        tokens = (frames // patch[0]) * (height // patch[1]) * (width // patch[2])
        for cp_config in self.cp_configs:
            cp_config.ulysses_anything = tokens % self.layout.ulysses != 0

    def _memory_per_rank(self) -> list[float | None]:
        mine = None
        if self.device.type == "cuda":  # the allocator's peak plus what the copy engines hold outside it
            mine = (torch.cuda.max_memory_allocated(self.device) + outside_allocator_bytes(self.runtime.experts)) / 2**30
        gathered = [None] * self.config.world
        dist.all_gather_object(gathered, mine, group=self.control)
        return gathered

    def serve(self) -> None:
        if self.rank == 0:
            send(self.conn, Message("ready"))
        while True:
            message = self._broadcast(receive(self.conn) if self.rank == 0 else None)
            if message.kind == "shutdown":
                return
            if message.kind in VAE_REQUESTS:
                self._vae(message)
                continue
            if message.kind != "job":
                continue  # a cancel that arrived after its job ended
            self._run(message)

    def _vae(self, message: Message) -> None:
        """A VAE decode or encode (model/vae.py) with the VAE this group keeps loaded (the first request
        loads it, a request for another file replaces it); every rank takes part, rank 0 answers."""
        if getattr(self, "vae", None) is None:
            self.vae = GroupVae(self.device, self.rank, self.config.world)
        tensors = message.tensors
        if message.payload.get("latent_of_job") is not None:  # the last job's latent, kept here
            if message.payload["latent_of_job"] != self.jobs or self.last_latent is None:
                if self.rank == 0:
                    send(self.conn, Message("error", {"kind": "fatal", "message": (
                        f"the host asked to decode job {message.payload['latent_of_job']}'s latent; this group "
                        f"keeps job {self.jobs}'s")}))
                return
            tensors = {**tensors, "latent": self.last_latent}
        try:
            kind, payload, tensors = self.vae.serve(message.kind, message.payload, tensors)
        except UserInputError as error:  # the file or the input: every rank refuses it before any collective
            if self.rank == 0:
                send(self.conn, Message("error", {"kind": "input", "message": str(error)}))
            return
        if self.rank == 0:
            send(self.conn, Message(kind, payload, tensors))

    def _run(self, message: Message) -> None:
        job = Job(
            cond=message.tensors["cond"], uncond=message.tensors.get("uncond"), latent=message.tensors["latent"],
            settings=JobSettings.from_dict(message.payload["settings"]), image=message.tensors.get("image"),
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        profile_dir = os.environ.get("ACCEL_PROFILE_DIR")  # diagnostic: each job's GPU timeline per rank
        try:
            self._set_uneven(job)
            with profiled(Path(profile_dir) / f"rank{self.rank}-job{self.jobs + 1}.json" if profile_dir else None):
                result = run_job(
                    self.runtime, job, should_cancel=self._should_cancel,
                    on_step=self._on_step if self.rank == 0 else None,
                )
        except UserInputError as error:
            if self.rank == 0:
                send(self.conn, Message("error", {"kind": "input", "message": str(error)}))
            return
        except JobCancelled as error:
            if self.rank == 0:
                send(self.conn, Message("cancelled", {"message": str(error)}))
            return
        self.jobs += 1
        self.last_latent = result.latent
        memory = self._memory_per_rank()
        if self.rank == 0:
            result.trace.info.update(
                peak_mem_gb_per_rank=memory, jobs_served=self.jobs, loaded_at=self.loaded_at,
                layout={"ulysses": self.layout.ulysses, "cfg": self.layout.cfg, "world": self.layout.world},
            )
            send(self.conn, Message("done", {"trace": result.trace.to_dict(), "job": self.jobs},
                                    {"latent": result.latent}))


def main() -> NoReturn:
    config = WorkerConfig.from_env()
    die_with_parent(config.parent_pid)
    setup_logging(os.environ.get("ACCEL_VERBOSE") == "1")
    # Rank 0 connects first, so that a failure while loading reaches the host as a message.
    key = bytes.fromhex(os.environ.pop("ACCEL_CHANNEL_KEY", ""))
    conn = connect(("127.0.0.1", config.channel_port), key) if config.rank == 0 else None
    try:
        Worker(config, conn).serve()
    except Exception as error:  # noqa: BLE001 (report anything, then die: the host tears the group down)
        traceback.print_exc()
        if conn is not None:
            try:
                kind = "input" if isinstance(error, UserInputError) else "fatal"
                send(conn, Message("error", {"kind": kind, "message": str(error) if kind == "input" else repr(error)}))
            except OSError:
                pass
        sys.stderr.flush()
        os._exit(1)
    dist.destroy_process_group()
    # Ended without Python's shutdown, as on failure: gloo's threads may still be freeing the last
    # collective's tensors, which takes the interpreter (during its shutdown that aborts the process).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
