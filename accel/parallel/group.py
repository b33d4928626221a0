"""The host side of a worker group: launch, run jobs, stream progress, cancel, tear down."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..diagnostics.trace import StepRecord, Trace
from ..errors import JobCancelled, UserInputError, WorkerGroupError
from ..job.job import Job, JobResult, validate_for_model
from ..job.settings import (
    RANDOM_SOURCES,
    EngineOptions,
    LoraChain,
    ModelSpec,
    chain_to_json,
)
from ..model.engine_check import check_engine, check_shard
from ..model.files import model_config_for
from ..shared_memory import remove_shared_files
from .channel import Message, listen, receive, send
from .launch import free_port, start_worker, visible_devices, worker_python
from .layout import ParallelLayout

log = logging.getLogger(__name__)

POLL_S = 0.1
START_TIMEOUT_S = 1800.0  # loading two 14B experts from a slow disk takes minutes
COLLECTIVE_TIMEOUT_S = 1200.0  # the first compiled FP8 forward takes ~200 s on every rank at once
SHUTDOWN_GRACE_S = 5.0
CANCEL_GRACE_S = 300.0  # a cancelled job stops before its next step; longer than the slowest step + compile
# Inductor and Triton caches survive worker and server restarts, so compiling is paid once.
DEFAULT_COMPILE_CACHE = Path.home() / ".cache" / "comfyui-cachedit-parallel" / "compile"


def group_key(spec: ModelSpec, layout: ParallelLayout, engine: EngineOptions, loras: LoraChain) -> tuple:
    """What a warm group must match to serve a job. A LoRA chain changes in place (the weights
    are read back from the files), except on the random presets, which have no files, and under
    "shard", whose split layers the patcher does not write."""
    in_place = spec.source not in RANDOM_SOURCES and engine.residency != "shard"
    return spec, layout, engine, () if in_place else loras


class WorkerGroup:
    """N worker processes joined by torch.distributed; rank 0 talks to this host."""

    def __init__(self, spec: ModelSpec, layout: ParallelLayout, engine: EngineOptions | None = None, *,
                 loras: LoraChain = (), compile_cache_dir: Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
                 cancel_grace_s: float = CANCEL_GRACE_S):
        self.spec = spec
        self.layout = layout
        self.engine = engine or EngineOptions()
        self.loras = loras  # merged as the workers load, before quantization and compile
        self.key = group_key(spec, layout, self.engine, loras)
        self.compile_cache_dir = compile_cache_dir or DEFAULT_COMPILE_CACHE
        self.start_timeout_s = start_timeout_s
        self.collective_timeout_s = collective_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.python = worker_python()
        self.procs: list[subprocess.Popen] = []
        self.conn = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="cachedit-workers-"))
        self._cancel = threading.Event()
        self._closed = False
        self._failed = False  # keep the workers' logs: the error message points at them
        self._job_running = False
        self._last_latent: tuple[int | None, torch.Tensor | None, torch.Tensor | None] = (None, None, None)  # job, it, copy

    # lifecycle

    @functools.cached_property
    def model_config(self) -> dict:
        """The experts' architecture, read once from the model files (headers only)."""
        return model_config_for(self.spec)

    def check(self) -> None:
        """What can be refused without starting anything: layout against the model, engine against the GPU."""
        self.layout.check_model(self.model_config["num_attention_heads"])
        if self.layout.devices is not None:
            visible_devices(self.layout.devices)
        device = torch.device("cuda", self.layout.devices[0]) if self.layout.devices else None
        check_engine(self.engine, self.spec, device)
        if self.engine.residency == "shard":
            check_shard(self.engine, self.spec, self.layout.ulysses)

    def start(self) -> "WorkerGroup":
        self.check()
        try:
            self._launch()
            message = self._wait_message(time.monotonic() + self.start_timeout_s, "loading the model")
            if message.kind != "ready":
                self._fail_with(message)
        except BaseException:
            self.close()  # e.g. a file the workers found damaged: no worker is left behind
            raise
        log.info("worker group ready: %s on %s", self.layout, self.spec.source)
        return self

    def _launch(self) -> None:
        listener, key = listen()
        try:
            config = dict(
                world=self.layout.world, master_port=free_port(), channel_port=listener.address[1],
                parent_pid=os.getpid(), collective_timeout_s=self.collective_timeout_s,
                spec=dataclasses.asdict(self.spec), layout=dataclasses.asdict(self.layout),
                engine=self.engine.to_dict(), loras=chain_to_json(self.loras),
            )
            for rank in range(self.layout.world):
                self.procs.append(start_worker({**config, "rank": rank}, key, self.layout.devices,
                                               self.log_dir / f"rank{rank}.log", self.compile_cache_dir, self.python))
            self.conn = self._accept(listener)
        finally:
            listener.close()

    def _accept(self, listener):
        accepted: list = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while thread.is_alive():
            thread.join(POLL_S)
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._failure(f"rank 0 did not connect within {self.start_timeout_s:.0f} s")
        if not accepted:
            raise self._failure("rank 0 failed to authenticate with the host")
        return accepted[0]

    @property
    def alive(self) -> bool:
        return not self._closed and all(p.poll() is None for p in self.procs)

    def close(self) -> None:
        """Shut the workers down (politely, then by force) and free their GPU memory."""
        if self._closed:
            return
        self._closed = True
        if self.conn is not None and all(p.poll() is None for p in self.procs):
            try:
                send(self.conn, Message("shutdown"))
            except OSError:
                pass
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill()
        if self.conn is not None:
            self.conn.close()
        if not self._failed:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _kill(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()
        remove_shared_files([proc.pid for proc in self.procs])  # frames a dead rank 0 sent, never read

    def __enter__(self) -> "WorkerGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # failures

    def _log_tail(self, rank: int, lines: int = 15) -> str:
        path = self.log_dir / f"rank{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _check_alive(self) -> None:
        if any(proc.poll() is not None for proc in self.procs):
            raise self._failure()

    def _failure(self, reported: str | None = None) -> WorkerGroupError:
        """Tear the group down and say which rank failed first and how."""
        settle = time.monotonic() + 1.0  # the other ranks fail their collectives right after
        while time.monotonic() < settle and not all(p.poll() is not None for p in self.procs):
            time.sleep(POLL_S)
        dead = [(rank, proc.returncode) for rank, proc in enumerate(self.procs) if proc.poll() is not None]
        self._failed = True
        self.close()
        signalled = [d for d in dead if d[1] < 0]
        parts = []
        if signalled or dead:
            rank, code = (signalled or dead)[0]
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            parts.append(f"worker rank {rank} {how}")
            log_path = self.log_dir / f"rank{rank}.log"
        else:
            rank, log_path = 0, self.log_dir / "rank0.log"
        if reported:
            parts.append(f"rank 0 reported: {reported}")
        return WorkerGroupError(
            "; ".join(parts) + "; the worker group was shut down and the next job starts a fresh one. "
            f"Last lines of {log_path}:\n{self._log_tail(rank)}"
        )

    def _fail_with(self, message: Message) -> None:
        if message.kind == "error" and message.payload.get("kind") == "input":
            raise UserInputError(message.payload["message"])
        raise self._failure(message.payload.get("message", message.kind))

    def _wait_message(self, deadline: float, doing: str) -> Message:
        while not self.conn.poll(POLL_S):
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._failure(f"no answer from the worker group while {doing}")
        try:
            return receive(self.conn)
        except (EOFError, OSError) as error:
            raise self._failure(f"lost the connection to rank 0 while {doing}") from error

    # jobs

    def cancel(self) -> None:
        """Ask the running job to stop before its next step (thread safe)."""
        self._cancel.set()

    def run(
        self,
        job: Job,
        *,
        on_step: Callable[[int, list[StepRecord]], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        timeout_s: float = 24 * 3600.0,
    ) -> JobResult:
        if not self.alive:
            raise WorkerGroupError("the worker group is not running")
        validate_for_model(job, self.model_config)
        patch = self.model_config["patch_size"]
        self.layout.check_tokens(tuple(n // p for n, p in zip(job.latent.shape[2:], patch)), 8 * patch[1])
        self._cancel.clear()
        tensors = {name: tensor for name, tensor in (("cond", job.cond), ("latent", job.latent),
                                                     ("uncond", job.uncond), ("image", job.image)) if tensor is not None}
        send(self.conn, Message("job", {"settings": job.settings.to_dict()}, tensors))
        self._job_running = True
        try:
            return self._follow(on_step, should_cancel, time.monotonic() + timeout_s, timeout_s)
        except BaseException:
            # Whatever stopped this host mid-job (an exception in a callback, Ctrl-C): stop the
            # job too, so the group is left idle and ready, never running a job nobody follows.
            if self._job_running:
                self._abandon()
            raise

    def _abandon(self) -> None:
        self._job_running = False
        if not self.alive:
            return
        try:
            send(self.conn, Message("cancel"))
            deadline = time.monotonic() + 60.0
            while True:
                message = self._wait_message(deadline, "stopping an abandoned job")
                if message.kind in ("done", "cancelled", "error"):
                    return
        except (WorkerGroupError, OSError):
            self.close()

    def _follow(self, on_step, should_cancel, deadline: float, timeout_s: float) -> JobResult:
        cancelled_at = None
        while True:
            while True:
                if cancelled_at is None and (self._cancel.is_set() or (should_cancel is not None and should_cancel())):
                    send(self.conn, Message("cancel"))
                    cancelled_at = time.monotonic()
                if self.conn.poll(POLL_S):
                    break
                self._check_alive()
                if time.monotonic() > deadline:
                    raise self._failure(f"the job did not finish within {timeout_s:.0f} s")
                if cancelled_at is not None and time.monotonic() - cancelled_at > self.cancel_grace_s:
                    # A rank that neither steps nor dies is hung (a stuck collective or kernel).
                    raise self._failure(f"the workers did not stop within {self.cancel_grace_s:.0f} s of the cancel")
            message = self._wait_message(deadline, "running the job")
            self._job_running = message.kind == "step"
            if message.kind == "step":
                if on_step is not None:
                    on_step(message.payload["step"], [StepRecord(**r) for r in message.payload["records"]])
            elif message.kind == "done":
                latent = message.tensors["latent"]
                # the workers keep it too: a decode of this very tensor, unchanged (ComfyUI's tensors
                # are inference tensors, which keep no version counter: compared with a copy), is not sent back
                self._last_latent = (message.payload.get("job"), latent, latent.clone())
                return JobResult(latent=latent, trace=Trace.from_dict(message.payload["trace"]))
            elif message.kind == "cancelled":
                raise JobCancelled(message.payload["message"])
            else:
                self._fail_with(message)

    # the VAE (model/vae.py): loaded by the workers on first use, kept warm beside the experts

    def decode(self, latent: torch.Tensor, vae_path: str | Path, tiling: str | bool = "auto", *,
               tile: tuple[int, int] | None = None, dtype: str = "auto", timeout_s: float = 3600.0) -> torch.Tensor:
        """A LATENT's samples [B, 16, T, h, w] -> IMAGE frames [B*T, 8h, 8w, 3], float32 in 0..1, as
        ComfyUI's VAEDecode gives them. Tiled (True / "on", or "auto" where tiles are faster or whole
        frames would not fit), every rank decodes a share of the tiles (cache-dit's DP decode). The
        latent of this group's last job, as it came back and unchanged since (the sampler's output
        wired straight to the decode), is decoded where the workers kept it: it is not sent again."""
        job, kept, copy = self._last_latent
        if job is not None and latent is kept and torch.equal(latent, copy):
            extra, tensors = {"latent_of_job": job}, {}
        else:
            extra, tensors = {}, {"latent": latent}
        return self._vae_request("decode", vae_path, tiling, tile, dtype, timeout_s, latent, extra,
                                 **tensors)["frames"].float()

    def encode(self, images: torch.Tensor, vae_path: str | Path, tiling: str | bool = "auto", *,
               tile: tuple[int, int] | None = None, dtype: str = "auto", timeout_s: float = 3600.0) -> torch.Tensor:
        """IMAGE frames [T, H, W, 3] in 0..1 -> a LATENT's samples [1, 16, 1 + (T-1)//4, H/8, W/8], as
        ComfyUI's VAEEncode gives them."""
        return self._vae_request("encode", vae_path, tiling, tile, dtype, timeout_s, images, {},
                                 images=images)["latent"]

    def _vae_request(self, kind: str, vae_path, tiling: str | bool, tile, dtype: str, timeout_s: float,
                     checked: torch.Tensor, extra: dict, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``checked``: the request's input, checked here (``tensors``: what is sent of it)."""
        from ..model import vae

        if not self.alive:
            raise WorkerGroupError("the worker group is not running")
        if self._job_running:
            raise WorkerGroupError("the worker group is running a job")
        vae.vae_config(vae_path)  # a missing or wrong file is refused here, before the workers see it
        vae.vae_dtype(dtype, torch.device("cpu"))  # a known name
        (vae.check_latent if kind == "decode" else vae.check_images)(checked)
        tiling = {True: "on", False: "off"}.get(tiling, tiling) if isinstance(tiling, bool) else tiling
        if tiling not in vae.TILING_MODES:
            raise UserInputError(f"tiling {tiling!r} is unknown; expected one of {vae.TILING_MODES}")
        payload = {"vae_path": str(vae_path), "tiling": tiling, "dtype": dtype,
                   "tile": None if tile is None else list(vae.parse_tile(tile)), **extra}
        send(self.conn, Message(kind, payload, tensors))
        message = self._wait_message(time.monotonic() + timeout_s, f"running the VAE {kind}")
        if message.kind != vae.VAE_REQUESTS[kind]:
            self._fail_with(message)
        self.last_vae_info = message.payload  # timings of the last decode/encode (benchmarks)
        return message.tensors
