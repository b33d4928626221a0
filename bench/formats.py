"""ComfyUI's formats on the GPU: fp8_scaled expert files, LoRAs on both experts, image-to-video.

    python bench/formats.py --part fp8    # issue 15: an fp8_scaled A14B file as stored / dequantized vs the bf16 file
    python bench/formats.py --part lora   # issue 16: two rank-64 LoRAs on an A14B pair; the 4-step Lightning job
    python bench/formats.py --part i2v    # issue 17: A14B I2V vs T2V forward; cache presets at 40 and 20 steps
    python bench/formats.py --part fp8 --tiny   # the same code on the CPU with a tiny random model (a dry run)

Random weights everywhere (seeded, built on the GPU): times and memory are those of the real
models, latent errors and cache decisions are not (they show the code runs, not quality).

fp8: one random A14B expert is written in ComfyUI's original key layout as a bf16 file and as an
fp8_scaled file (legacy ``scaled_fp8`` marker, per-tensor ``scale_weight``; both streamed tensor
by tensor) in --workdir, and used for both experts (high_path = low_path). Each configuration
then runs in a fresh child process (``python -c``; the kernel's VmHWM, the peak RSS, cannot be
reset within a process): Runtime.load's time, peak host RSS (VmHWM; sampled private RssAnon and
file-mapped RssFile), peak GPU memory; a 2-step cfg-1 job on the same seed (latent relative error
against the bf16 file's); per-forward time at 32,760 tokens (480x832x81) from a job's CUDA-event
forward times (2 timed after 1 warm-up). Configurations: bf16 file eager, fp8_scaled dequantize,
fp8_scaled as stored eager, as stored + compile, bf16 file + the pack's float8_per_row + compile.

lora: the bf16 file of part fp8 (written again if absent) and two random rank-64 LoRAs in
ComfyUI's ``diffusion_model.*`` layout over every attention/FFN Linear of all 40 blocks. Load
time without and with the two (the difference, and the merge itself timed inside the load), the
change between jobs (run_job with another chain: ``lora_change_s``; and the change alone with
GPU and host memory), then the Lightning job (4 steps, 2/2, cfg 1, shift 5) at 640x640x81
(33,600 tokens): bf16 eager, FP8 (float8_per_row) + compile, and with caching (what it buys at
4 steps is reported from the decisions, not assumed).

i2v: random A14B T2V then I2V experts at 640x640x81: per-forward time (each model's own job),
then I2V jobs (cfg 3.5, shift 5, switch at half the steps, synthetic image channels): uncached
time per step, and sglang-fast / balanced at 20 and 40 steps (cached jobs run in full; the
uncached 20/40-step times are the uncached time per step times the steps, unless time is left
to run the uncached 20-step job in full).

Every part keeps within --budget-s (defaults fp8 575 s, lora 540 s, i2v 560 s, for 10-minute
calls): a configuration that does not fit is skipped or stopped with a note (part fp8 kills its
child process; parts lora and i2v stop between steps, or at SIGALRM at the budget); results are
written after every row, so a killed call still leaves them; --only runs what was skipped. Output: <out>/<date>-<gpu>-<part>.{json,md,log}, --out
defaulting to $OUT (else bench/results, or <workdir>/out with --tiny).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from accel.errors import JobCancelled  # noqa: E402
from accel.job.job import Job  # noqa: E402
from accel.job.scm import expert_masks  # noqa: E402
from accel.job.settings import (  # noqa: E402
    CacheSettings,
    EngineOptions,
    JobSettings,
    LoraSpec,
    ModelSpec,
    QuantSettings,
    SamplerSettings,
)
from accel.job.smoke import smoke_embeddings, smoke_image  # noqa: E402
from accel.logs import setup_logging  # noqa: E402
from accel.model.files import A14B_CONFIG, TINY_CONFIG, to_original_layout  # noqa: E402
from accel.model.lora import block_linear_shapes  # noqa: E402
from bench.common import RESULTS, markdown_table, relative_error  # noqa: E402

GB = 2**30
LABEL = "random weights (seeded): times and memory as the real models', errors and cache decisions not"
TEXT_TOKENS = 512
TINY_TEXT_TOKENS = 16
FP8_SIZE = (480, 832, 81)  # 32,760 tokens
JOB_SIZE = (640, 640, 81)  # 33,600 tokens
TINY_SIZE = (64, 64, 9)
T2V_SHIFT = 8.0  # ComfyUI's T2V template
LIGHTNING = {"steps": 4, "switch_step": 2, "cfg": 1.0, "shift": 5.0}  # the templates' Lightning path
I2V_CFG, I2V_SHIFT = 3.5, 5.0  # ComfyUI's I2V template
LORA_RANK, LORA_ALPHA, LORA_SCALE = 64, 64.0, 0.01


def say(*parts) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------------------------------------
# time, memory


class Clock:
    """Seconds since the script started, against the call's budget."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class BudgetExceeded(BaseException):
    """Raised by SIGALRM when the call's budget is spent (parts lora and i2v, which run in this
    process): not an Exception, so that it ends the part instead of the configuration only."""


def _alarm(signum, frame):
    raise BudgetExceeded()


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process in GB (Linux; empty elsewhere)."""
    values = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    values[key] = int(rest.split()[0]) * 1024 / GB
    except OSError:
        pass
    return values


class RssSampler:
    """Peak VmRSS / RssAnon / RssFile of this process, sampled every 10 ms by a thread while a
    Phase is open (idle otherwise, so that it never competes with a timed job for the GIL)."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.peak: dict[str, float] = {}
        self.lock = threading.Lock()
        self.active = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.active.wait()
            self.sample()
            time.sleep(self.interval_s)

    def sample(self) -> dict[str, float]:
        now = proc_status()
        with self.lock:
            for key in ("VmRSS", "RssAnon", "RssFile"):
                if key in now:
                    self.peak[key] = max(self.peak.get(key, 0.0), now[key])
        return now

    def reset(self) -> dict[str, float]:
        """Peaks from now on (sampling on); returns the current values."""
        now = proc_status()
        with self.lock:
            self.peak = {k: now[k] for k in ("VmRSS", "RssAnon", "RssFile") if k in now}
        self.active.set()
        return now

    def peaks(self) -> dict[str, float]:
        """The peaks since reset (sampling off)."""
        self.sample()
        self.active.clear()
        with self.lock:
            return dict(self.peak)


class Phase:
    """Wall time, host RSS (before / sampled peak / after) and GPU memory (allocated before,
    max_memory_allocated after a reset, allocated after) of one block of work."""

    def __init__(self, sampler: RssSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self.values: dict[str, float] = {}

    def __enter__(self) -> Phase:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            self.values["gpu_before_gb"] = torch.cuda.memory_allocated(self.device) / GB
            torch.cuda.reset_peak_memory_stats(self.device)
        before = self.sampler.reset()
        self.values["rss_before_gb"] = before.get("VmRSS")
        self.values["anon_before_gb"] = before.get("RssAnon")
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.values["seconds"] = time.perf_counter() - self.began
        if self.device.type == "cuda":
            self.values["gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / GB
            self.values["gpu_after_gb"] = torch.cuda.memory_allocated(self.device) / GB
            self.values["gpu_peak_over_before_gb"] = self.values["gpu_peak_gb"] - self.values["gpu_before_gb"]
        peaks, after = self.sampler.peaks(), proc_status()
        self.values.update(rss_peak_gb=peaks.get("VmRSS"), anon_peak_gb=peaks.get("RssAnon"),
                           file_peak_gb=peaks.get("RssFile"), rss_after_gb=after.get("VmRSS"),
                           anon_after_gb=after.get("RssAnon"))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gpu_allocated_gb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------
# results


class Report:
    """Rows by table, notes; written as JSON and markdown after every change."""

    def __init__(self, args: argparse.Namespace, part: str, device: torch.device, tables: dict[str, list]):
        self.args, self.part, self.device, self.tables = args, part, device, tables
        self.rows: dict[str, dict[str, dict]] = {name: {} for name in tables}
        self.notes: list[str] = []
        self.info: dict = {}
        gpu = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
        suffix = "-" + args.only.replace(",", "_") if args.only else ""
        out = Path(args.out) if args.out else (Path(args.workdir) / "out" if args.tiny else RESULTS)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{datetime.date.today().isoformat()}-{gpu}-{part}{suffix}"
        self.device_name = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(device)}" \
            if device.type == "cuda" else "cpu"

    def row(self, table: str, name: str, **values) -> None:
        self.rows[table].setdefault(name, {}).update(values)
        say(f"{table} | {name}: {json.dumps(values, default=str)}")
        self.write()

    def note(self, text: str) -> None:
        say(f"NOTE: {text}")
        self.notes.append(text)
        self.write()

    def failed(self, what: str, error: BaseException) -> None:
        traceback.print_exc()
        sys.stdout.flush()
        self.note(f"{what}: failed: {error!r}"[:800])

    def write(self) -> None:
        payload = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": self.device_name,
            "versions": versions(), "part": self.part, "weights": LABEL, "tiny": self.args.tiny,
            "argv": sys.argv[1:], "info": self.info, "rows": self.rows, "notes": self.notes,
        }
        self.path.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
        lines = [f"# {self.part}: {self.device_name}, {datetime.date.today().isoformat()}", "",
                 f"Weights: {LABEL}.", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), ""]
        for key, value in self.info.items():
            lines.append(f"- {key}: {value}")
        for table, columns in self.tables.items():
            rows = self.rows[table]
            if not rows:
                continue
            lines += ["", f"## {table}", "", markdown_table(
                [header for _, header in columns],
                [[name] + [fmt(values.get(key)) for key, _ in columns[1:]] for name, values in rows.items()])]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        self.path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.2e}"
        return f"{value:.3f}"
    return str(value)


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    if not _VERSIONS:
        _VERSIONS["torch"] = torch.__version__
        for name in ("diffusers", "cache_dit", "torchao"):
            try:
                _VERSIONS[name] = __import__(name).__version__
            except Exception as error:  # noqa: BLE001
                _VERSIONS[name] = f"unavailable ({type(error).__name__})"
    return _VERSIONS


class Tee:
    """stdout into a log file too (the device call returns only the tail of the output)."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, path.open("a")

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# ----------------------------------------------------------------------------------------------
# files: random experts in ComfyUI's original layout, random LoRAs


def model_config(tiny: bool) -> dict:
    return dict(TINY_CONFIG if tiny else A14B_CONFIG)


class Bf16View(Mapping):
    """A state dict with every floating tensor in bf16, cast when a tensor is asked for (as the
    bf16 / fp16 files ComfyUI users keep: norms and modulation in the file's dtype too)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self.state[key]
        return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor

    def __iter__(self):
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def expert_files(args, device: torch.device, kinds: tuple[str, ...], report: Report) -> dict[str, Path]:
    """The random expert as a bf16 file and/or an fp8_scaled file in --workdir (reused when a
    previous call wrote them completely: a .done file beside each)."""
    from accel.model.fp8_scaled import write_fp8_scaled
    from accel.model.loading import _random_expert

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"t2v-{'tiny' if args.tiny else 'a14b'}-seed{args.seed}"
    paths = {"bf16": workdir / f"{stem}-bf16.safetensors", "fp8": workdir / f"{stem}-fp8_scaled.safetensors"}
    missing = [kind for kind in kinds if not done_marker(paths[kind]).is_file() or not paths[kind].is_file()]
    for kind in kinds:
        if kind not in missing:
            written = json.loads(done_marker(paths[kind]).read_text())
            report.row("files", f"{kind} file", path=str(paths[kind]), gb=written["gb"], write_s=written["write_s"],
                       reused=True)
    if not missing:
        return paths
    config = model_config(args.tiny)
    params = sum_params(config)
    need_gb = sum({"bf16": 2.0, "fp8": 1.02}[kind] * params / GB for kind in missing)
    for kind in missing:  # a stale partial file counts as free space
        paths[kind].unlink(missing_ok=True)
        done_marker(paths[kind]).unlink(missing_ok=True)
    free_gb = shutil.disk_usage(workdir).free / GB
    if free_gb < need_gb + 1.0:
        raise RuntimeError(f"{workdir}: {free_gb:.1f} GB free, the files need {need_gb:.1f} GB")
    say(f"building a random expert (seed {args.seed}) on {device} to write {', '.join(missing)} "
        f"({need_gb:.1f} GB, {free_gb:.1f} GB free)")
    began = time.perf_counter()
    model = _random_expert(config, args.seed, torch.bfloat16, device)
    state = to_original_layout(model.state_dict())
    build_s = time.perf_counter() - began
    view = Bf16View(state)
    for kind in missing:
        say(f"writing {paths[kind]}")
        began = time.perf_counter()
        if kind == "bf16":  # nothing selected: every tensor as it is (bf16), streamed
            write_fp8_scaled(paths[kind], view, marker=False, select=lambda key: False, return_weights=False)
        else:  # as the templates' files: block Linears float8_e4m3fn + scale_weight, scaled_fp8 marker
            write_fp8_scaled(paths[kind], view, return_weights=False)
        with paths[kind].open("rb") as handle:  # on disk, not only in the page cache
            os.fsync(handle.fileno())
        seconds = time.perf_counter() - began
        size = paths[kind].stat().st_size / GB
        done_marker(paths[kind]).write_text(json.dumps({"gb": size, "write_s": seconds, "seed": args.seed}))
        report.row("files", f"{kind} file", path=str(paths[kind]), gb=size, write_s=seconds, build_s=build_s,
                   reused=False)
    del model, state, view
    free(device)
    return paths


def done_marker(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def sum_params(config: dict) -> int:
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    per_block = 8 * dim * dim + 2 * dim * config["ffn_dim"]
    return config["num_layers"] * per_block + 4096 * dim * 2 + dim * dim * 8  # blocks + embeddings (rough)


def write_lora(path: Path, config: dict, seed: int, rank: int, device: torch.device) -> Path:
    """A random LoRA in ComfyUI's diffusion_model.* layout (lora_up / lora_down, bf16, alpha), as
    accel.model.lora.write_random_lora does, at the given rank and on the GPU; reused when already written."""
    from safetensors.torch import save_file

    if path.is_file() and done_marker(path).is_file():
        return path
    generator = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for module, (rows, cols) in block_linear_shapes(config).items():
        for name, shape in (("lora_up", (rows, rank)), ("lora_down", (rank, cols))):
            factor = torch.randn(shape, generator=generator, device=device) * LORA_SCALE
            tensors[f"diffusion_model.{module}.{name}.weight"] = factor.to(torch.bfloat16).cpu()
        tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(float(min(LORA_ALPHA, rank)))
    save_file(tensors, str(path))
    done_marker(path).write_text("{}")
    return path


# ----------------------------------------------------------------------------------------------
# jobs


def latent_shape(size: tuple[int, int, int]) -> tuple[int, ...]:
    height, width, frames = size
    return (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)


def make_job(sampler: SamplerSettings, shape, text_dim: int, text_len: int, *, cache=None, scm=None,
             loras=(), image=None) -> Job:
    settings = JobSettings(sampler=sampler, cache=cache, scm=scm, loras=tuple(loras))
    return Job(cond=smoke_embeddings(1, text_dim, text_len), uncond=smoke_embeddings(2, text_dim, text_len),
               latent=torch.zeros(shape), settings=settings, image=image)


def sampler_of(steps: int, seed: int, cfg: float, shift: float, switch_step: int | None) -> SamplerSettings:
    return SamplerSettings(steps=steps, seed=seed, cfg_high=cfg, cfg_low=cfg, shift=shift, sampler="euler",
                           scheduler="simple", switch_step=switch_step)


def job_row(result, steps: int) -> dict:
    """What a finished job tells: times, forwards computed, memory, LoRA change, compile."""
    info, summary = result.trace.info, result.trace.summary()
    forward_ms = [r.wall_ms for r in result.trace.records if r.decision == "compute"]
    cached_ms = [r.wall_ms for r in result.trace.records if r.decision == "cache"]
    return {
        "steps": steps, "denoise_s": info.get("denoise_s"), "s_per_step": info.get("denoise_s", 0.0) / steps,
        "forwards": summary["forwards"], "computed": summary["computed"],
        "computed_forward_s": statistics.median(forward_ms) / 1e3 if forward_ms else None,
        "cached_forward_s": statistics.median(cached_ms) / 1e3 if cached_ms else None,
        "compile_s": info.get("compile_s"), "lora_change_s": info.get("lora_change_s"),
        "peak_gpu_gb": info.get("peak_mem_gb"), "notes": "; ".join(info.get("notes") or []) or None,
    }


def run_timed_job(runtime, job: Job, device: torch.device, deadline: float | None = None):
    """run_job with the GPU peak reset first; ``deadline`` (perf_counter) cancels between steps.
    Returns (result or None, records seen so far, seconds)."""
    from accel.sampling.loop import run_job

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seen = []
    began = time.perf_counter()
    try:
        result = run_job(runtime, job, on_step=lambda step, records: seen.extend(records),
                         should_cancel=None if deadline is None else (lambda: time.perf_counter() > deadline))
    except JobCancelled:
        return None, seen, time.perf_counter() - began
    return result, seen, time.perf_counter() - began


def forward_times(result, warm: int) -> dict:
    """Per-forward seconds from a job's CUDA-event forward times, the first ``warm`` dropped."""
    times = [r.wall_ms / 1e3 for r in result.trace.records][warm:]
    return {"s_per_forward": statistics.median(times) if times else None, "forward_s_each": times,
            "job_compile_s": result.trace.info.get("compile_s")}


def engine_of(quantize: str | None, compile_: bool) -> EngineOptions:
    return EngineOptions(quantize=QuantSettings(quantize) if quantize else None, compile=compile_)


# ----------------------------------------------------------------------------------------------
# child processes (part fp8): one configuration each, so that the peak RSS (VmHWM) is its own

CHILD_CODE = ("import sys; sys.path.insert(0, {root!r}); from bench.formats import child_main; "
              "raise SystemExit(child_main(sys.argv[1]))")


def child_main(config_json: str) -> int:
    """Load one configuration, run its error job and its forward job; prints RESULT lines (JSON,
    cumulative: the last one counts) after every stage."""
    from accel.sampling.runtime import Runtime

    config = json.loads(config_json)
    setup_logging()
    sampler = RssSampler()
    device = torch.device(config["device"])
    result: dict = {"pid": os.getpid()}

    def emit() -> None:
        print("RESULT " + json.dumps(result, default=str), flush=True)

    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context before the baseline
        torch.cuda.synchronize(device)
    spec = ModelSpec(**config["spec"])
    engine = engine_of(config["quantize"], config["compile"])
    shape, text_dim, text_len, seed = tuple(config["latent_shape"]), config["text_dim"], config["text_len"], config["seed"]
    status = proc_status()
    result.update(rss_before_load_gb=status.get("VmRSS"), vmhwm_before_load_gb=status.get("VmHWM"))
    try:
        with Phase(sampler, device) as phase:
            runtime = Runtime.load(spec, device, engine)
        values = phase.values
        result.update(load_s=values["seconds"], vmhwm_gb=proc_status().get("VmHWM"), rss_peak_gb=values["rss_peak_gb"],
                      anon_peak_gb=values["anon_peak_gb"], file_peak_gb=values["file_peak_gb"],
                      rss_after_load_gb=values["rss_after_gb"], gpu_load_peak_gb=values.get("gpu_peak_gb"),
                      gpu_after_load_gb=values.get("gpu_after_gb"), runtime_notes=runtime.notes)
        emit()
        warm = 1
        if config["error_job"]:  # 2 steps, cfg 1, switched at 1: both experts, also the warm-up
            job = make_job(sampler_of(2, seed, 1.0, T2V_SHIFT, 1), shape, text_dim, text_len)
            out, _, wall = run_timed_job(runtime, job, device)
            torch.save(out.latent, config["latent_out"])
            result.update(error_job={**job_row(out, 2), "wall_s": wall})
            warm = 0
            emit()
        if config["forward_job"]:  # warm + timed steps, all on the high-noise expert, cfg 1
            steps = warm + config["timed"]
            job = make_job(sampler_of(steps, seed, 1.0, T2V_SHIFT, steps), shape, text_dim, text_len)
            out, _, wall = run_timed_job(runtime, job, device)
            result.update(forward={**forward_times(out, warm), "warm_up_forwards": 1, "job_peak_gpu_gb":
                                   out.trace.info.get("peak_mem_gb"), "job_denoise_s": out.trace.info.get("denoise_s")})
            emit()
    except Exception as error:  # noqa: BLE001 (reported to the parent as a note)
        traceback.print_exc()
        result["failed"] = repr(error)[:600]
        emit()
        return 1
    result["done"] = True
    emit()
    return 0


def run_child(config: dict, timeout_s: float, report: Report, code: str = CHILD_CODE) -> dict | None:
    """Run one configuration in a child process (``code``: its main, formatted with the project
    root); its output streams through with a prefix."""
    name = config["name"]
    command = [sys.executable, "-c", code.format(root=str(ROOT)), json.dumps(config)]
    say(f"--- child: {name} (timeout {timeout_s:.0f} s)")
    process = subprocess.Popen(command, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    last: list[dict] = []
    tail: deque[str] = deque(maxlen=15)

    def read() -> None:
        for line in process.stdout:
            if line.startswith("RESULT "):
                try:
                    last.append(json.loads(line[7:]))
                except json.JSONDecodeError:
                    pass
            else:
                tail.append(line.rstrip())
                print(f"  [{name}] {line}", end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    began = time.perf_counter()
    try:
        rc = process.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the child and its compile workers (its own session)
        process.wait()
        rc = None
        report.note(f"{name}: stopped at the call's time budget after {time.perf_counter() - began:.0f} s "
                    f"(what it measured before is kept); run it alone with --only")
    reader.join(timeout=10)
    result = last[-1] if last else None
    if rc not in (0, None):
        failure = (result or {}).get("failed") or " | ".join(list(tail)[-4:])
        report.note(f"{name}: child exited with {rc}: {failure}"[:800])
    if result is not None:
        result["child_wall_s"] = time.perf_counter() - began
    return result


# ----------------------------------------------------------------------------------------------
# part fp8

FP8_CONFIGS = {  # key: (row name, file, fp8_scaled mode, quantize, compile, error job, forward job, min seconds)
    "bf16": ("bf16 file, eager", "bf16", "dequantize", None, False, True, True, 60),
    "stored": ("fp8_scaled as stored, eager", "fp8", "as_stored", None, False, True, True, 50),
    "stored-compile": ("fp8_scaled as stored + compile", "fp8", "as_stored", None, True, True, True, 90),
    "dequantize": ("fp8_scaled dequantized (bf16 compute)", "fp8", "dequantize", None, False, True, False, 40),
    "rowwise-compile": ("bf16 file + float8_per_row + compile", "bf16", "dequantize", "float8_per_row", True, True,
                        True, 150),
}


def part_fp8(args, report: Report, clock: Clock, device: torch.device) -> None:
    shape = latent_shape(TINY_SIZE if args.tiny else FP8_SIZE)
    config = model_config(args.tiny)
    report.info.update(latent=list(shape), tokens=shape[2] * (shape[3] // 2) * (shape[4] // 2),
                       error_job="2 steps, euler / simple, shift 8, cfg 1, switch at step 1, seed "
                                 f"{args.seed}; latent relative error against the bf16 file's",
                       forwards="CUDA-event time of each forward inside a job (cfg 1, high-noise expert): "
                                "2 timed after 1 warm-up (the error job's forward of the same expert)",
                       loads="Runtime.load of the pair (high_path = low_path: the same file twice), each in a "
                             "fresh child process; VmHWM = peak RSS including file pages mapped by safetensors "
                             "(page cache, shared), anon = sampled peak of private memory")
    keys = [k for k in FP8_CONFIGS if not args.only or k in args.only.split(",")]
    need = {FP8_CONFIGS[k][1] for k in keys}
    try:
        paths = expert_files(args, device, tuple(sorted(need)), report)
    except Exception as error:  # noqa: BLE001
        report.failed("writing the expert files", error)
        return
    latents = Path(args.workdir) / "latents"
    latents.mkdir(exist_ok=True)
    for key in keys:
        name, file, mode, quantize, compile_, error_job, forward_job, min_s = FP8_CONFIGS[key]
        if clock.left() < min_s:
            report.note(f"{name}: skipped, {clock.left():.0f} s left of the call's budget (needs about {min_s} s "
                        f"or more); run `--part fp8 --only {key}`")
            continue
        latent_out = latents / f"fp8-{key}-seed{args.seed}.pt"
        latent_out.unlink(missing_ok=True)
        child = {
            "name": name, "device": str(device), "quantize": quantize, "compile": compile_,
            "spec": dataclasses.asdict(ModelSpec(source="single-file", high_path=str(paths[file]),
                                                 low_path=str(paths[file]), dtype="bf16", fp8_scaled=mode)),
            "latent_shape": list(shape), "text_dim": config["text_dim"],
            "text_len": TINY_TEXT_TOKENS if args.tiny else TEXT_TOKENS, "seed": args.seed,
            "error_job": error_job, "forward_job": forward_job, "timed": 2, "latent_out": str(latent_out),
        }
        result = run_child(child, clock.left() - 10, report)
        if result is None:
            continue
        row = {k: result.get(k) for k in ("load_s", "vmhwm_gb", "anon_peak_gb", "file_peak_gb", "rss_before_load_gb",
                                          "gpu_load_peak_gb", "gpu_after_load_gb", "child_wall_s")}
        row["file"] = paths[file].name
        if result.get("failed"):
            row["failed"] = result["failed"]
        if result.get("runtime_notes"):
            row["runtime_notes"] = "; ".join(result["runtime_notes"])
        if "error_job" in result:
            row.update(error_job_compile_s=result["error_job"].get("compile_s"),
                       error_job_peak_gpu_gb=result["error_job"].get("peak_gpu_gb"))
        if "forward" in result:
            row.update(s_per_forward=result["forward"]["s_per_forward"], forward_s_each=result["forward"]["forward_s_each"],
                       job_peak_gpu_gb=result["forward"]["job_peak_gpu_gb"])
        report.row("fp8", name, **row)
    # errors against the bf16 file's latent, speedups against its forward
    base_latent = latents / f"fp8-bf16-seed{args.seed}.pt"
    base_row = report.rows["fp8"].get(FP8_CONFIGS["bf16"][0], {})
    for key in keys:
        name = FP8_CONFIGS[key][0]
        path = latents / f"fp8-{key}-seed{args.seed}.pt"
        row = report.rows["fp8"].get(name)
        if row is None:
            continue
        extra = {}
        if base_latent.is_file() and path.is_file():
            extra["rel_error_vs_bf16"] = relative_error(torch.load(path), torch.load(base_latent))
        if base_row.get("s_per_forward") and row.get("s_per_forward"):
            extra["speedup_vs_bf16_eager"] = base_row["s_per_forward"] / row["s_per_forward"]
        if extra:
            report.row("fp8", name, **extra)


# ----------------------------------------------------------------------------------------------
# part lora


def timed_lora_load(spec: ModelSpec, device: torch.device, engine: EngineOptions, loras, sampler: RssSampler):
    """Runtime.load with the LoRA merge inside it timed (LoraPatcher.apply, wrapped for the call)."""
    from accel.model import lora_patching
    from accel.sampling.runtime import Runtime

    merges: list[float] = []
    original = lora_patching.LoraPatcher.apply

    def timed(self, chain, *, quantized):
        began = time.perf_counter()
        original(self, chain, quantized=quantized)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if chain:
            merges.append(time.perf_counter() - began)

    lora_patching.LoraPatcher.apply = timed
    try:
        with Phase(sampler, device) as phase:
            runtime = Runtime.load(spec, device, engine, loras=tuple(loras))
    finally:
        lora_patching.LoraPatcher.apply = original
    return runtime, phase.values, sum(merges) if merges else None


def memory_row(values: dict) -> dict:
    keys = ("seconds", "gpu_before_gb", "gpu_peak_gb", "gpu_peak_over_before_gb", "gpu_after_gb", "rss_before_gb",
            "rss_peak_gb", "rss_after_gb", "anon_before_gb", "anon_peak_gb", "anon_after_gb", "file_peak_gb")
    return {k: values.get(k) for k in keys}


def part_lora(args, report: Report, clock: Clock, device: torch.device) -> None:
    from accel.job.presets import load_preset
    from accel.sampling.runtime import Runtime

    config = model_config(args.tiny)
    shape = latent_shape(TINY_SIZE if args.tiny else JOB_SIZE)
    text_len = TINY_TEXT_TOKENS if args.tiny else TEXT_TOKENS
    rank = 8 if args.tiny else LORA_RANK
    groups = args.only.split(",") if args.only else ["bf16", "fp8"]
    layer_gb = max(a * b for a, b in block_linear_shapes(config).values()) * 2 / GB
    report.info.update(latent=list(shape), tokens=shape[2] * (shape[3] // 2) * (shape[4] // 2),
                       job="Lightning: 4 steps, euler / simple, switch at step 2, cfg 1, shift 5",
                       loras=f"two random rank-{rank} LoRAs (bf16, alpha {min(LORA_ALPHA, rank):g}) over every "
                             f"attention/FFN Linear of all {config['num_layers']} blocks, diffusion_model.* keys",
                       chains="A: LoRA 1 at 1.0 + LoRA 2 at 1.0 on both experts; B: LoRA 2 at 0.5",
                       largest_layer_bf16_gb=round(layer_gb, 4),
                       memory="GPU: torch.cuda.max_memory_allocated reset before each step; host: VmRSS sampled "
                              "every 10 ms (anon = private memory; file = pages mapped from the expert file)")
    try:
        paths = expert_files(args, device, ("bf16",), report)
        workdir = Path(args.workdir)
        size = "tiny" if args.tiny else "a14b"
        began = time.perf_counter()
        reused = all(done_marker(workdir / f"lora-{size}-r{rank}-{i}.safetensors").is_file() for i in (1, 2))
        lora_paths = [write_lora(workdir / f"lora-{size}-r{rank}-{i}.safetensors", config, 100 + i, rank, device)
                      for i in (1, 2)]
        report.row("files", "LoRA files", gb=sum(p.stat().st_size for p in lora_paths) / GB,
                   write_s=time.perf_counter() - began, path=", ".join(p.name for p in lora_paths), reused=reused)
    except Exception as error:  # noqa: BLE001
        report.failed("writing the files", error)
        return
    spec = ModelSpec(source="single-file", high_path=str(paths["bf16"]), low_path=str(paths["bf16"]), dtype="bf16")
    chain_a = (LoraSpec(str(lora_paths[0]), 1.0, 1.0), LoraSpec(str(lora_paths[1]), 1.0, 1.0))
    chain_b = (LoraSpec(str(lora_paths[0]), 1.0, 1.0), LoraSpec(str(lora_paths[1]), 0.5, 0.5))
    sampler = RssSampler()
    lightning = sampler_of(LIGHTNING["steps"], args.seed, LIGHTNING["cfg"], LIGHTNING["shift"], LIGHTNING["switch_step"])
    preset = load_preset("sglang-fast")
    scm4 = preset.scm_for(LIGHTNING["steps"])
    split = lightning.experts()
    masks = expert_masks(scm4, split) if scm4 is not None else None
    report.info["sglang_fast_at_4_steps"] = (
        f"load_preset('sglang-fast').scm_for(4) = {list(scm4.mask) if scm4 else None} ({scm4.policy if scm4 else ''}); "
        f"split per expert (each expert's first step computes): {masks}; max_warmup_steps high "
        f"{preset.cache.high.max_warmup_steps} / low {preset.cache.low.max_warmup_steps} of 2 steps each")
    threshold_only = CacheSettings(high=dataclasses.replace(preset.cache.high, max_warmup_steps=1),
                                   low=dataclasses.replace(preset.cache.low, max_warmup_steps=1))

    def job(loras, cache=None, scm=None):
        return make_job(lightning, shape, config["text_dim"], text_len, cache=cache, scm=scm, loras=loras)

    def timed_job(name: str, runtime, the_job, table: str = "jobs", **extra):
        out, _, wall = run_timed_job(runtime, the_job, device)
        report.row(table, name, **job_row(out, LIGHTNING["steps"]), wall_s=wall, **extra)
        return out

    def change(name: str, runtime, chain):
        with Phase(sampler, device) as phase:
            runtime.apply_loras(chain)
        report.row("lora", name, **memory_row(phase.values))

    reference = None
    if "bf16" in groups:
        runtime = None
        try:
            with Phase(sampler, device) as phase:
                runtime = Runtime.load(spec, device, EngineOptions())
            no_lora = phase.values
            report.row("lora", "load, no LoRA (bf16)", **memory_row(no_lora))
            del runtime
            runtime = None
            free(device)
            if device.type == "cuda":
                report.info["gpu_allocated_after_freeing_gb"] = gpu_allocated_gb(device)
            runtime, values, merge_s = timed_lora_load(spec, device, EngineOptions(), chain_a, sampler)
            report.row("lora", "load with chain A (bf16)", **memory_row(values), merge_s=merge_s,
                       load_minus_no_lora_s=values["seconds"] - no_lora["seconds"],
                       gpu_peak_over_no_lora_peak_gb=None if device.type != "cuda"
                       else values["gpu_peak_gb"] - no_lora["gpu_peak_gb"])
            warm = timed_job("bf16 eager, chain A (first job: warm-up)", runtime, job(chain_a))
            reference = warm.latent
            timed_job("bf16 eager, chain A -> B (change in run_job)", runtime, job(chain_b))
            change("change B -> A alone (bf16)", runtime, chain_a)
            again = timed_job("bf16 eager, chain A", runtime, job(chain_a))
            report.row("jobs", "bf16 eager, chain A", bit_exact_vs_first_job=bool(torch.equal(again.latent, reference)),
                       rel_error_vs_first_job=relative_error(again.latent, reference))
            if clock.left() > 240:
                out = timed_job("bf16 eager, chain A, sglang-fast (preset at 4 steps)", runtime,
                                job(chain_a, preset.cache, scm4))
                report.row("jobs", "bf16 eager, chain A, sglang-fast (preset at 4 steps)",
                           rel_error_vs_uncached=relative_error(out.latent, reference))
                out = timed_job("bf16 eager, chain A, threshold-only cache (no mask, warm-up 1)", runtime,
                                job(chain_a, threshold_only))
                report.row("jobs", "bf16 eager, chain A, threshold-only cache (no mask, warm-up 1)",
                           rel_error_vs_uncached=relative_error(out.latent, reference))
            else:
                report.note(f"bf16 cached jobs skipped: {clock.left():.0f} s left")
        except Exception as error:  # noqa: BLE001
            report.failed("bf16 LoRA runs", error)
        runtime = None
        free(device)
    if "fp8" not in groups:
        return
    if device.type == "cuda":
        label, fp8 = "FP8 + compile", EngineOptions(quantize=QuantSettings("float8_per_row"), compile=True)
    else:  # the same runs with compile alone: FP8 needs a CUDA GPU
        label, fp8 = "compile (CPU stand-in for FP8 + compile)", EngineOptions(compile=True)
        report.note("FP8 (float8_per_row) needs a CUDA GPU: on the CPU the FP8 runs use compile alone")
    if clock.left() < 240:
        report.note(f"{label} skipped: {clock.left():.0f} s left of the call's budget; run `--part lora --only fp8`")
        return
    runtime = None
    try:
        report.info["gpu_allocated_before_fp8_load_gb"] = gpu_allocated_gb(device)
        runtime, values, merge_s = timed_lora_load(spec, device, fp8, chain_a, sampler)
        report.row("lora", f"load with chain A ({label})", **memory_row(values), merge_s=merge_s)
        deadline = time.perf_counter() + clock.left() - 15
        first, seen, wall = run_timed_job(runtime, job(chain_a), device, deadline)
        if first is None:
            report.note(f"{label}: first job (compile) stopped at the budget after {wall:.0f} s, "
                        f"{len(seen)} forwards done")
            return
        report.row("jobs", f"{label}, chain A (first job: compile)", **job_row(first, LIGHTNING["steps"]), wall_s=wall)
        timed_job(f"{label}, chain A -> B (change in run_job)", runtime, job(chain_b))
        change(f"change B -> A alone ({label}{': re-quantized' if device.type == 'cuda' else ''})", runtime, chain_a)
        name = f"{label}, chain A"
        out = timed_job(name, runtime, job(chain_a))
        report.row("jobs", name, bit_exact_vs_first_job=bool(torch.equal(out.latent, first.latent)),
                   rel_error_vs_first_job=relative_error(out.latent, first.latent))
        if reference is not None:
            report.row("jobs", name, rel_error_vs_bf16=relative_error(out.latent, reference))
        for cache_name, cache, scm in (("sglang-fast (preset at 4 steps)", preset.cache, scm4),
                                       ("threshold-only cache (no mask, warm-up 1)", threshold_only, None)):
            if clock.left() < 30:
                report.note(f"{label}, {cache_name}: skipped, {clock.left():.0f} s left")
                continue
            cached = timed_job(f"{label}, chain A, {cache_name}", runtime, job(chain_a, cache, scm))
            report.row("jobs", f"{label}, chain A, {cache_name}",
                       rel_error_vs_uncached=relative_error(cached.latent, out.latent))
    except Exception as error:  # noqa: BLE001
        report.failed(f"{label} LoRA runs", error)


# ----------------------------------------------------------------------------------------------
# part i2v

I2V_RUNS = (("sglang-fast", 20), ("balanced", 20), ("sglang-fast", 40), ("balanced", 40))


def part_i2v(args, report: Report, clock: Clock, device: torch.device) -> None:
    from accel.job.image_to_video import image_channels
    from accel.job.presets import load_preset
    from accel.sampling.runtime import Runtime

    config = model_config(args.tiny)
    shape = latent_shape(TINY_SIZE if args.tiny else JOB_SIZE)
    text_len = TINY_TEXT_TOKENS if args.tiny else TEXT_TOKENS
    only = args.only.split(",") if args.only else None
    image = image_channels(*smoke_image(args.seed, shape), shape)
    report.info.update(latent=list(shape), tokens=shape[2] * (shape[3] // 2) * (shape[4] // 2),
                       forwards="each model's own job: 3 steps on the high-noise expert, cfg 1; CUDA-event time of "
                                "the last 2 forwards",
                       i2v_jobs=f"euler / simple, cfg {I2V_CFG} (both experts), shift {I2V_SHIFT}, switch at half the "
                                "steps (the template's split); image channels from a synthetic concat_latent_image "
                                "and a first-frame mask (accel.job.smoke.smoke_image) through image_channels",
                       speedup="uncached time of N steps = N x the uncached 2-step job's time per step (every "
                               "uncached step is two full forwards) unless the row says it ran in full")
    sources = {"T2V": "tiny-random" if args.tiny else "a14b-random",
               "I2V": "tiny-random-i2v" if args.tiny else "a14b-random-i2v"}
    runtime = None
    for kind in ("T2V", "I2V"):
        if only and "forward" not in only and kind == "T2V":
            continue
        try:
            spec = ModelSpec(source=sources[kind], dtype="bf16", seed=args.seed)
            with Phase(RssSampler(), device) as phase:
                runtime = Runtime.load(spec, device, EngineOptions())
            job = make_job(sampler_of(3, args.seed, 1.0, I2V_SHIFT if kind == "I2V" else T2V_SHIFT, 3), shape,
                           config["text_dim"], text_len, image=image if kind == "I2V" else None)
            out, _, _ = run_timed_job(runtime, job, device)
            report.row("forward", f"{kind} ({sources[kind]})", **forward_times(out, 1), load_s=phase.values["seconds"],
                       gpu_after_load_gb=phase.values.get("gpu_after_gb"), in_channels=runtime.experts.config.in_channels)
        except Exception as error:  # noqa: BLE001
            report.failed(f"{kind} forward", error)
            runtime = None
        if kind == "T2V":
            runtime = None
            free(device)
    rows = report.rows["forward"]
    t2v, i2v = rows.get(f"T2V ({sources['T2V']})", {}), rows.get(f"I2V ({sources['I2V']})", {})
    if t2v.get("s_per_forward") and i2v.get("s_per_forward"):
        report.row("forward", f"I2V ({sources['I2V']})", i2v_over_t2v=i2v["s_per_forward"] / t2v["s_per_forward"])
    if runtime is None:
        report.note("no I2V model loaded: the cache runs are skipped")
        return

    def i2v_job(steps: int, preset: str = "none"):
        chosen = load_preset(preset)
        return make_job(sampler_of(steps, args.seed, I2V_CFG, I2V_SHIFT, steps // 2), shape, config["text_dim"],
                        text_len, cache=chosen.cache, scm=chosen.scm_for(steps), image=image)

    uncached_step = None
    latents: dict[tuple[str, int], torch.Tensor] = {}
    try:
        out, _, wall = run_timed_job(runtime, i2v_job(2), device)
        row = job_row(out, 2)
        uncached_step = row["s_per_step"]
        report.row("cache", "I2V no cache (2 steps: time per step)", **row, wall_s=wall)
    except Exception as error:  # noqa: BLE001
        report.failed("I2V uncached job", error)
        return
    runs = [(p, s) for p, s in I2V_RUNS if not only or f"{p}-{s}" in only]
    if not only or "none-20" in only:
        runs.append(("none", 20))  # the uncached 20-step job in full, if time is left
    for preset, steps in runs:
        name = f"I2V {preset}, {steps} steps"
        chosen = load_preset(preset)
        scm = chosen.scm_for(steps)
        mask_ones = sum(scm.mask) if scm is not None else steps
        # a computed step costs an uncached step; a cached one about a tenth (Fn blocks, TaylorSeer)
        estimate = mask_ones * uncached_step + (steps - mask_ones) * 0.1 * uncached_step
        if clock.left() < min(estimate + 20, 60) or (preset == "none" and clock.left() < estimate + 20):
            report.note(f"{name}: skipped, {clock.left():.0f} s left (estimated {estimate:.0f} s)")
            continue
        try:
            deadline = time.perf_counter() + clock.left() - 15
            out, seen, wall = run_timed_job(runtime, i2v_job(steps, preset), device, deadline)
            if out is None:
                computed = sum(r.decision == "compute" for r in seen)
                report.row("cache", name, steps=steps, stopped_after_s=wall, forwards_done=len(seen),
                           computed_so_far=computed, mask=list(scm.mask) if scm else None)
                report.note(f"{name}: stopped at the budget after {wall:.0f} s ({len(seen)} forwards logged, "
                            f"{computed} computed)")
                continue
            row = job_row(out, steps)
            latents[(preset, steps)] = out.latent
            if preset == "none":
                row["uncached_s_per_step_vs_2_step_job"] = row["s_per_step"] / uncached_step
            else:
                uncached = steps * uncached_step
                row.update(uncached_estimate_s=uncached, speedup=uncached / row["denoise_s"],
                           forward_ratio=row["forwards"] / row["computed"], mask=list(scm.mask) if scm else None)
            report.row("cache", name, **row, wall_s=wall)
        except Exception as error:  # noqa: BLE001
            report.failed(name, error)
            free(device)
    full = report.rows["cache"].get("I2V none, 20 steps")
    for preset, steps in I2V_RUNS:
        if full and steps == 20 and (preset, steps) in latents:
            report.row("cache", f"I2V {preset}, {steps} steps",
                       speedup_vs_full_uncached=full["denoise_s"] / report.rows["cache"][f"I2V {preset}, {steps} steps"]["denoise_s"],
                       rel_error_vs_uncached=relative_error(latents[(preset, steps)], latents[("none", 20)]))


# ----------------------------------------------------------------------------------------------

TABLES = {
    "fp8": {
        "files": [("name", "file"), ("gb", "GB"), ("write_s", "write s (to disk, fsync)"), ("reused", "reused")],
        "fp8": [("name", "configuration"), ("load_s", "load s (pair)"), ("vmhwm_gb", "peak host RSS GB (VmHWM)"),
                ("anon_peak_gb", "peak host anon GB"), ("file_peak_gb", "peak mapped file GB"),
                ("gpu_load_peak_gb", "peak GPU GB (load)"), ("gpu_after_load_gb", "GPU GB after load"),
                ("s_per_forward", "s / forward (32,760 tok)"), ("speedup_vs_bf16_eager", "vs bf16 eager"),
                ("error_job_compile_s", "compile s (first job)"), ("job_peak_gpu_gb", "peak GPU GB (job)"),
                ("rel_error_vs_bf16", "latent rel. error vs bf16 (2-step job)"), ("failed", "failed")],
    },
    "lora": {
        "files": [("name", "file"), ("gb", "GB"), ("write_s", "write s"), ("reused", "reused")],
        "lora": [("name", "step"), ("seconds", "s"), ("merge_s", "merge s (inside load)"),
                 ("load_minus_no_lora_s", "load - no-LoRA load s"), ("gpu_before_gb", "GPU GB before"),
                 ("gpu_peak_gb", "peak GPU GB"), ("gpu_peak_over_before_gb", "peak - before GB"),
                 ("gpu_after_gb", "GPU GB after"), ("rss_before_gb", "host RSS GB before"),
                 ("rss_peak_gb", "peak host RSS GB"), ("rss_after_gb", "host RSS GB after"),
                 ("anon_peak_gb", "peak anon GB"), ("anon_after_gb", "anon GB after")],
        "jobs": [("name", "job (4 steps, cfg 1, 33,600 tokens)"), ("denoise_s", "denoise s"), ("s_per_step", "s / step"),
                 ("computed", "computed"), ("forwards", "forwards"), ("lora_change_s", "LoRA change s (run_job)"),
                 ("compile_s", "compile s"), ("peak_gpu_gb", "peak GPU GB"),
                 ("bit_exact_vs_first_job", "bit-exact vs first chain-A job"), ("rel_error_vs_bf16", "rel. error vs bf16"),
                 ("rel_error_vs_uncached", "rel. error vs uncached")],
    },
    "i2v": {
        "forward": [("name", "model"), ("s_per_forward", "s / forward (33,600 tok)"), ("i2v_over_t2v", "I2V / T2V"),
                    ("load_s", "load s"), ("gpu_after_load_gb", "GPU GB (both experts)"), ("in_channels", "in channels")],
        "cache": [("name", "I2V job (cfg 3.5)"), ("denoise_s", "denoise s"), ("s_per_step", "s / step"),
                  ("computed", "computed"), ("forwards", "forwards"), ("uncached_estimate_s", "uncached s (estimate)"),
                  ("speedup", "speedup"), ("speedup_vs_full_uncached", "speedup vs full uncached run"),
                  ("computed_forward_s", "computed forward s"), ("cached_forward_s", "cached forward s"),
                  ("rel_error_vs_uncached", "rel. error vs uncached (20 steps)"), ("peak_gpu_gb", "peak GPU GB")],
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("fp8", "lora", "i2v"), required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with the tiny random model and tiny sizes")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    parser.add_argument("--workdir", default=None,
                        help="expert and LoRA files, reused across parts (default /tmp/bench-formats, "
                             "/tmp/bench-formats-tiny with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds this call may take (default: fp8 575, lora 540, i2v 560, for calls of 600 s); "
                             "configurations that do not fit are skipped or stopped")
    parser.add_argument("--only", default=None,
                        help="comma list: fp8 " + ",".join(FP8_CONFIGS) + "; lora bf16,fp8; i2v forward,"
                             + ",".join(f"{p}-{s}" for p, s in I2V_RUNS) + ",none-20")
    args = parser.parse_args()
    args.workdir = args.workdir or ("/tmp/bench-formats-tiny" if args.tiny else "/tmp/bench-formats")
    args.budget_s = args.budget_s or {"fp8": 575.0, "lora": 540.0, "i2v": 560.0}[args.part]
    clock = Clock(args.budget_s)
    setup_logging()
    if not args.tiny and not torch.cuda.is_available():
        say("no CUDA GPU: use --tiny for a CPU dry run")
        return 2
    device = torch.device("cpu" if args.tiny else "cuda:0")
    report = Report(args, args.part, device, TABLES[args.part])
    sys.stdout = Tee(sys.stdout, report.path.with_suffix(".log"))
    sys.stderr = Tee(sys.stderr, report.path.with_suffix(".log"))
    say(f"part {args.part} on {report.device_name}, budget {args.budget_s:.0f} s, workdir {args.workdir}, "
        f"results {report.path}.{{json,md,log}}")
    report.info["budget_s"] = args.budget_s
    report.write()
    if args.part != "fp8":  # part fp8 runs its configurations in child processes, killed at the budget
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(clock.left(), 1.0))
    try:
        {"fp8": part_fp8, "lora": part_lora, "i2v": part_i2v}[args.part](args, report, clock, device)
    except BudgetExceeded:
        traceback.print_exc()
        report.note(f"stopped at the call's budget ({args.budget_s:.0f} s): the rows above are complete, "
                    "the configuration that was running is not")
    except Exception as error:  # noqa: BLE001
        report.failed(f"part {args.part}", error)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    report.info["elapsed_s"] = round(clock.elapsed(), 1)
    report.write()
    say(report.path.with_suffix(".md").read_text())
    say(f"wrote {report.path}.json / .md / .log in {clock.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
