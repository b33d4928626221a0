"""The pack against native ComfyUI on one GPU, side by side in one process and one run.

    python bench/native.py --out bench/results                       # Lightning path (4 steps, cfg 1)
    python bench/native.py --out bench/results --paths template \
        --native-configs fp8_scaled --pack-configs fp8_compile       # the template path (~2 min a run)
    python bench/native.py --tiny --out /tmp/native-tiny             # the same code on CPU, tiny model

ComfyUI's source goes in ``.comfyui/`` at the repo root (ignored; never committed). ComfyUI imports
``av`` and ``torchsde`` for features this chain never runs; where they are not installed (the GPU
image) stand-in modules take their place (``--stand-ins``), and the results say so.

What it does, in order (each configuration in its own try/except: a failure is a note, the rest runs):

1. Weights: random full-size Wan2.2-A14B expert weights in the ORIGINAL Wan key layout
   (``blocks.0.self_attn.q.weight``...), built on the GPU tensor by tensor from a seed and streamed
   to a scratch directory: one fp16 file and its fp8_scaled version (``write_fp8_scaled``) laid
   out as Comfy-Org's Wan2.2 fp8_scaled files are: every Linear weight float8_e4m3fn with a
   per-tensor ``scale_weight`` and a ``scale_input`` (1.0 here), the rest fp16, and an empty
   ``scaled_fp8`` marker, which ComfyUI reads as "fp8 matmuls where the GPU has fp8 compute"
   (``--fp8-marker pair``: the 2-element marker, dequantized matmuls). By default
   ONE file of each format serves as both the high-noise and the low-noise expert (the timing does
   not depend on the weights; ``--expert-pair`` writes two of each where the disk has room).
   Files already there from an earlier run with the same settings are reused. Beside them a random
   full-width Wan2.1 VAE (``save_random_vae``: base_dim 96, the only width ComfyUI builds; bf16, as
   ``wan_2.1_vae.safetensors`` is stored) in the original layout, reused where there.
2. Native ComfyUI, imported in this process from ``--comfyui`` (default ``.comfyui/`` at the repo
   root; ComfyUI is GPL-3.0: imported at run time, none of its code is in this repository): the
   official template's chain UNETLoader -> ModelSamplingSD3 -> two KSamplerAdvanced (euler /
   simple; high [0, split) with noise and leftover noise, low [split, steps) without noise), with
   synthetic conditioning and an empty latent. Configurations: fp16 file, default; fp8_scaled
   file, default; fp8_scaled file with weight_dtype ``fp8_e4m3fn_fast``; optionally fp16 +
   TorchCompileModel (``--native-configs ...,fp16_compile``).
3. The VAE decode (``--skip-vae`` turns it off): ComfyUI's VAELoader + VAEDecode on that file, then
   the pack's decode of the same seeded random latent (the run's, [1, 16, 21, 60, 104] at
   480x832x81; [1, 16, 2, 8, 8] on the CPU dry run) with the node's defaults (tiling "auto", dtype
   "auto"), in a worker group of one GPU holding the tiny random experts (``--pack-in workers``;
   the VAE does not depend on them) or in this process (``GroupVae``, the workers' own decode).
   Each side: load, an untimed decode of a small latent, then one timed decode (wall time of the
   call, frames on the host); PSNR of the pack's frames against ComfyUI's.
4. The pack, by default in a worker group of one GPU (``--pack-in workers``: a process of its own,
   as the nodes run it; ``--pack-in process``: ``Runtime.load`` in this process, where ComfyUI's
   import slows its forward by a third): the same files (bf16; FP8 per-row + compile; the
   fp8_scaled file used as stored + compile) and the same settings, conditioning, latent and
   seed, plus cache presets (``--cache-presets``) on the template path.
5. With ``--pack-in process``: the pack's uncached forward at ``--tokens`` (bf16 with exact
   attention; FP8 + compile; FP8 + a low-precision attention backend where one is installed).

Each configuration: load, a 2-step warm-up chain (both experts, which also compiles), then each
path timed (the Lightning path ``--repeats`` times, median; the template path once). Denoise
time is the two samplers' time (native) or ``trace.info["denoise_s"]`` (pack); peak GPU memory
is torch's allocator peak over each timed run (weights included). Latent errors are against the
pack's own bf16 run of the same path (random weights: a measure of drift, not of video quality).

Writes ``<out>/<date>-<gpu>-native.{json,md}`` after every configuration, so a run cut short still
leaves what it measured. ``--budget-s`` (default 540) skips what would not finish in time, with a
note. The device's ComfyUI process would normally pick cudaMallocAsync (ComfyUI's main.py); here
both sides share PyTorch's default caching allocator.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.abc
import importlib.util
import json
import logging
import math
import platform
import re
import shutil
import statistics
import struct
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from accel.job.job import Job  # noqa: E402
from accel.job.presets import load_preset  # noqa: E402
from accel.job.settings import (  # noqa: E402
    ATTENTION_BACKENDS,
    QUANTIZED_ATTENTION,
    EngineOptions,
    JobSettings,
    ModelSpec,
    QuantSettings,
    SamplerSettings,
)
from accel.logs import setup_logging  # noqa: E402
from accel.model.files import A14B_CONFIG, original_key  # noqa: E402
from accel.model.fp8_scaled import BLOCK_LINEAR, write_fp8_scaled  # noqa: E402
from accel.model.vae import save_random_vae  # noqa: E402
from accel.parallel.layout import ParallelLayout  # noqa: E402
from bench.quality import psnr  # noqa: E402

GIB = 2**30
TEXT_TOKENS = 512
# A tiny Wan that ComfyUI's model detection accepts: it assumes text_dim 4096 and 128-wide heads
# (num_heads = dim // 128), so dim is 2 x 128 (a dim of 24 would give ComfyUI 0 heads).
TINY_COMFY_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=64, num_layers=2,
)
TINY_SIZE = (9, 64, 64)  # frames, height, width: latent [1, 16, 3, 8, 8]
FORWARD_SHAPES = {14040: (33, 480, 832), 32760: (81, 480, 832), 75600: (81, 720, 1280)}
VAE_TINY_LATENT = (1, 16, 2, 8, 8)  # the CPU dry run's decode: 5 frames of 64 x 64
VAE_WARM_LATENT = (1, 16, 2, 8, 8)  # each side's untimed first decode (loads the VAE onto the device)
# For the budget: one decode of 480x832x81 (2-10 s a side on an H200), loading the VAE, and
# starting a worker group of the tiny random model (processes, imports, CUDA context).
VAE_DECODE_S, VAE_LOAD_S, GROUP_START_S = 10.0, 3.0, 30.0


def one_gpu_layout(device: torch.device) -> ParallelLayout:
    """A worker group of one rank: on ``device`` where it is a GPU, else on the CPU."""
    return ParallelLayout(devices=(device.index or 0,)) if device.type == "cuda" else ParallelLayout()


class PackRunner:
    """The pack's jobs in a worker group of one GPU (a process of its own, as the nodes run them), or
    in this process (``runtime`` then holds the loaded model, for the forward timings)."""

    def __init__(self, spec: ModelSpec, device: torch.device, engine, in_workers: bool):
        from accel.parallel.group import WorkerGroup
        from accel.sampling.runtime import Runtime

        self.group = self.runtime = None
        if in_workers:
            self.group = WorkerGroup(spec, one_gpu_layout(device), engine).start()
        else:
            self.runtime = Runtime.load(spec, device, engine)

    def run(self, job: Job):
        from accel.sampling.loop import run_job

        return self.group.run(job) if self.group is not None else run_job(self.runtime, job)

    def peak_gib(self, result, in_process: float | None) -> float | None:
        """The worker's own peak (reset per job) where the job ran in a group."""
        if self.group is None:
            return in_process
        return (result.trace.info.get("peak_mem_gb_per_rank") or [None])[0]  # GiB, as the worker reports

    def close(self) -> None:
        if self.group is not None:
            self.group.close()


@dataclass(frozen=True)
class SamplingPath:
    name: str
    steps: int
    split: int  # the high-noise expert runs steps [0, split)
    cfg: float
    shift: float


PATHS = {
    "lightning": SamplingPath("lightning", steps=4, split=2, cfg=1.0, shift=5.0),
    "template": SamplingPath("template", steps=20, split=10, cfg=3.5, shift=8.0),
}
WARM = SamplingPath("warm-up", steps=2, split=1, cfg=1.0, shift=5.0)  # one forward on each expert


@dataclass(frozen=True)
class NativeConfig:
    label: str
    weights: str  # "fp16" | "fp8"
    weight_dtype: str  # UNETLoader's weight_dtype
    compile: bool = False
    forward_s: float = 3.0  # rough seconds per forward at 32,760 tokens, for the time budget


NATIVE = {
    "fp16": NativeConfig("fp16 weights, default", "fp16", "default", forward_s=3.1),
    "fp8_scaled": NativeConfig("fp8_scaled file, default", "fp8", "default", forward_s=3.2),
    "fp8_scaled_fast": NativeConfig("fp8_scaled file, fp8_e4m3fn_fast", "fp8", "fp8_e4m3fn_fast", forward_s=2.9),
    "fp16_compile": NativeConfig("fp16 + TorchCompileModel", "fp16", "default", compile=True, forward_s=2.8),
}


@dataclass(frozen=True)
class PackConfig:
    label: str
    weights: str
    engine: EngineOptions
    as_stored: bool = False
    forward_s: float = 3.0


PACK = {
    "bf16": PackConfig("pack bf16 (the fp16 file, cast)", "fp16", EngineOptions(), forward_s=2.9),
    "fp8_compile": PackConfig("pack FP8 per-row + compile", "fp16",
                              EngineOptions(quantize=QuantSettings("float8_per_row"), compile=True), forward_s=2.2),
    "fp8_stored": PackConfig("pack fp8_scaled as stored + compile", "fp8", EngineOptions(compile=True),
                             as_stored=True, forward_s=2.2),
    "fp8_stored_int8": PackConfig("pack fp8_scaled as stored + compile + int8 attention", "fp8",
                                  EngineOptions(compile=True, attention_backend="int8"), as_stored=True,
                                  forward_s=2.0),
    "fp8_stored_int8_fp8": PackConfig("pack fp8_scaled as stored + compile + int8_fp8 attention", "fp8",
                                      EngineOptions(compile=True, attention_backend="int8_fp8"), as_stored=True,
                                      forward_s=1.8),
}
LOWPREC_CONFIGS = ("fp8_stored_int8_fp8", "fp8_stored_int8")  # FP8 linears + quantized attention, fastest first
COMPILE_WARMUP_S = 150.0  # a cold-cache compile of the block graph (first job), for the budget
NATIVE_COMPILE_WARMUP_S = 100.0


# ComfyUI imports these at module level for features this chain never runs (video files, SDE
# samplers' Brownian trees); the device image lacks them. Where missing, stand-in modules let the
# import through, and any use of them raises. Everything else ComfyUI imports must be real.
STUB_PACKAGES = ("av", "torchsde")
COMFY_NEEDS = ("einops", "psutil", "PIL", "scipy", "torchvision", "transformers", "tokenizers", "safetensors",
               "numpy", "tqdm", "yaml")


class _StandIn(types.ModuleType):
    """A module whose every attribute is an inert class: enough for ``from av.container import
    InputContainer`` and annotations; calling into it fails loudly."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name}: a stand-in (the package is not installed)")

        value = type(name, (), {"__module__": self.__name__, "__init__": refuse})
        setattr(self, name, value)
        return value


class StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module) -> None:
        module.__path__ = []


def install_stand_ins(mode: str) -> list[str]:
    """``auto``: stand-ins for the STUB_PACKAGES that are not installed; ``force``: for all of
    them (tests); ``off``: none. Returns the packages stood in for."""
    if mode == "off":
        return []
    roots = {name for name in STUB_PACKAGES if mode == "force" or importlib.util.find_spec(name) is None}
    if roots:
        finder = StandInFinder(roots)
        if mode == "force":
            sys.meta_path.insert(0, finder)
        else:
            sys.meta_path.append(finder)
    return sorted(roots)


def original_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Original-layout key -> shape of one expert, from diffusers' model built on the meta device."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    return {original_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


class RandomWeights(Mapping):
    """A lazy original-layout state dict: each tensor is drawn on ``device`` from its own seeded
    generator when asked for (the same values every time), so a 14B expert is never held whole.
    Linear / conv weights and biases uniform in +-1/sqrt(fan_in) (torch's default init), norm
    weights 1 and norm biases 0, modulation tables N(0, 1/dim) (diffusers' init)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype, device: torch.device,
                 extra: dict[str, Callable[[], torch.Tensor]] | None = None):
        self.shapes, self.seed, self.dtype, self.device = shapes, seed, dtype, device
        self.order = {key: i for i, key in enumerate(shapes)}
        self.extra = extra or {}

    def __iter__(self) -> Iterator[str]:  # the marker (extra) first, as ComfyUI's files have it near the top
        yield from self.extra
        yield from self.shapes

    def __len__(self) -> int:
        return len(self.extra) + len(self.shapes)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.extra:
            return self.extra[key]()
        shape = self.shapes[key]
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + self.order[key])
        leaf = key.split(".")[-2] if "." in key else key
        if leaf.startswith("norm"):
            fill = 1.0 if key.endswith(".weight") else 0.0
            return torch.full(shape, fill, dtype=self.dtype, device=self.device)
        if "modulation" in key:
            values = torch.randn(shape, generator=generator, device=self.device) / math.sqrt(shape[-1])
            return values.to(self.dtype)
        weight_shape = self.shapes.get(key.removesuffix(".bias") + ".weight", shape) if key.endswith(".bias") else shape
        fan_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else weight_shape[0]
        bound = 1.0 / math.sqrt(fan_in)
        values = torch.empty(shape, dtype=torch.float32, device=self.device)
        return values.uniform_(-bound, bound, generator=generator).to(self.dtype)


def fp8_layer_selector(shapes: dict[str, tuple[int, ...]], which: str) -> Callable[[str], bool]:
    """The weights an fp8_scaled file stores in float8: every Linear (``all-linear``: what
    Comfy-Org's Wan2.2 files hold, text/time embeddings, time projection and head included; in
    the original layout the 2-D weights are exactly the Linear ones) or the blocks' Linears only
    (``blocks``: ``write_fp8_scaled``'s default)."""
    if which == "blocks":
        return lambda key: BLOCK_LINEAR.match(key) is not None
    return lambda key: key.endswith(".weight") and len(shapes.get(key, ())) == 2


def file_bytes(shapes: dict[str, tuple[int, ...]], fp8_select: Callable[[str], bool] | None) -> int:
    """Data bytes of the fp16 file (``fp8_select`` None) or of the fp8_scaled file (header left out)."""
    total = 0
    for key, shape in shapes.items():
        total += math.prod(shape) * (1 if fp8_select is not None and fp8_select(key) else 2)
    return total


def write_plain_safetensors(path: Path, state: RandomWeights, device: torch.device) -> None:
    """A plain safetensors file of ``state`` (every tensor in its own dtype), written tensor by
    tensor: each one is copied into a reused pinned host buffer and handed to the file as a
    memoryview (no bytes copy: on the CPU of this project's dev VM that is 6-12x faster than
    ``numpy().tobytes()``)."""
    element = torch.empty((), dtype=state.dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in state:
        nbytes = math.prod(state.shapes[key]) * element
        header[key] = {"dtype": {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}[state.dtype],
                       "shape": list(state.shapes[key]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    largest = max(math.prod(shape) for shape in state.shapes.values())
    buffer = torch.empty(largest * element, dtype=torch.uint8, pin_memory=device.type == "cuda")
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for key in state:
            tensor = state[key].contiguous().reshape(-1).view(torch.uint8)
            chunk = buffer[: tensor.numel()]
            chunk.copy_(tensor)  # synchronous: the buffer is reused by the next tensor
            out.write(memoryview(chunk.numpy()))


def filesystem_of(path: Path) -> str:
    """The mount point and type holding ``path`` (a tmpfs /tmp would hold the weights in RAM)."""
    best = ("?", "?")
    try:
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
                best = (mount, kind)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


class Collector(logging.Handler):
    """Keeps ComfyUI's loader and memory lines (model dtype, missing keys, partial loads)."""

    KEYS = ("model weight dtype", "model_type", "Using scaled fp8", "unet missing", "unet unexpected",
            "left over keys", "loaded partially", "loaded completely", "lowvram", "memory leak",
            "VAE load device", "Missing VAE keys", "Leftover VAE keys", "tiled VAE decoding")

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return
        if any(key in message for key in self.KEYS):
            self.lines.append(message[:300])

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tiny = args.tiny
        self.began = time.perf_counter()
        self.device = torch.device("cpu" if self.tiny or not torch.cuda.is_available() else "cuda:0")
        if self.device.type == "cpu" and not self.tiny:
            raise SystemExit("no CUDA GPU: use --tiny for the CPU dry run")
        self.config = dict(TINY_COMFY_CONFIG if self.tiny else A14B_CONFIG)
        frames, height, width = TINY_SIZE if self.tiny else (args.frames, args.height, args.width)
        self.size = (frames, height, width)
        self.latent_shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        self.tokens = self.latent_shape[2] * (height // 16) * (width // 16)
        text_dim = self.config["text_dim"]
        self.cond = torch.randn(1, TEXT_TOKENS, text_dim, generator=torch.Generator().manual_seed(args.seed + 1))
        self.uncond = torch.randn(1, TEXT_TOKENS, text_dim, generator=torch.Generator().manual_seed(args.seed + 2))
        unknown = [p for p in args.paths.split(",") if p and p not in PATHS]
        if unknown:
            raise SystemExit(f"--paths: unknown {unknown}; use {','.join(PATHS)}")
        self.paths = [PATHS[p] for p in args.paths.split(",") if p]
        for option, known in (("native_configs", NATIVE), ("pack_configs", PACK)):
            unknown = [n for n in getattr(args, option).split(",") if n and n not in known]
            if unknown:
                raise SystemExit(f"--{option.replace('_', '-')}: unknown {unknown}; use {','.join(known)}")
        self.rows: dict[str, dict] = {}
        self.latents: dict[str, torch.Tensor] = {}
        self.first_job: dict[str, dict] = {}
        self.forward: dict[str, dict] = {}
        self.attention: dict = {}
        self.weights: dict = {}
        self.vae: dict = {"rows": {}}
        self.vae_file: Path | None = None
        self.vae_frames: torch.Tensor | None = None  # native's, until the pack's are compared with them
        self.vae_shape = VAE_TINY_LATENT if self.tiny else self.latent_shape
        self.files: dict[str, tuple[Path, Path] | None] = {"fp16": None, "fp8": None}
        self.notes: list[str] = []
        self.reasons: dict[str, str] = {}
        self.comfy = None
        self.comfy_error: str | None = None  # ComfyUI could not be imported: the other native configs skip
        self.collector = Collector()
        gpu = "cpu" if self.device.type == "cpu" else torch.cuda.get_device_name(0).replace(" ", "-")
        self.out = Path(args.out) / f"{datetime.date.today()}-{gpu}-native"

    # ---------------------------------------------------------------------------------------
    # helpers

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.began:7.1f}s] {message}", flush=True)

    def note(self, message: str) -> None:
        self.notes.append(message[:800])
        self.log(f"NOTE: {message[:800]}")

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.began)

    def fits(self, seconds: float, what: str) -> bool:
        if self.tiny or seconds <= self.left():
            return True
        self.note(f"skipped {what}: needs about {seconds:.0f} s, {self.left():.0f} s left of --budget-s "
                  f"{self.args.budget_s:.0f}")
        return False

    def scale(self) -> float:
        return (self.tokens / 32760) ** 1.2

    def run_estimate(self, forward_s: float, path: SamplingPath, cached: bool = False) -> float:
        if self.tiny:
            return 0.0
        forwards = path.steps * (1 if path.cfg == 1.0 else 2) * (0.5 if cached else 1.0)
        return forwards * forward_s * self.scale() + 3.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GIB if self.device.type == "cuda" else None

    def allocated_gib(self) -> float:
        return torch.cuda.memory_allocated(self.device) / GIB if self.device.type == "cuda" else 0.0

    def paths_for(self, config: str) -> list[SamplingPath]:
        template_configs = self.args.template_configs.split(",")
        return [p for p in self.paths if p.name != "template" or config in template_configs]

    def record(self, key: str, row: dict, latent: torch.Tensor) -> None:
        row["finite"] = bool(torch.isfinite(latent).all())
        if not row["finite"]:
            self.note(f"{key}: the latent has non-finite values (random weights in {row.get('config')})")
        self.rows[key] = row
        self.latents[key] = latent.float().cpu()
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        self.log(f"{key}: {json.dumps(shown, default=str)}")

    # ---------------------------------------------------------------------------------------
    # 1. weights

    def needed_formats(self) -> set[str]:
        """The weight formats the requested configurations load."""
        a = self.args
        needed = set()
        if not a.skip_native:
            needed |= {NATIVE[n].weights for n in a.native_configs.split(",") if n in NATIVE}
        if not a.skip_pack:
            needed |= {PACK[n].weights for n in a.pack_configs.split(",") if n in PACK}
        return needed

    def scratch_dir(self) -> Path:
        scratch = Path(self.args.scratch or ("/tmp/wan-native-bench-tiny" if self.tiny else "/tmp/wan-native-bench"))
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def write_weights(self) -> None:
        args = self.args
        scratch = self.scratch_dir()
        shapes = original_shapes(self.config)
        select = fp8_layer_selector(shapes, args.fp8_layers)
        sizes = {"fp16": file_bytes(shapes, None), "fp8": file_bytes(shapes, select)}
        experts = ("high", "low") if args.expert_pair else ("both",)
        common = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
                  "seed": args.seed, "experts": list(experts), "format_version": 2}
        # What each format's files were written with: a file is reused where this matches.
        manifest = {"fp16": common, "fp8": {**common, "fp8_marker": args.fp8_marker, "fp8_layers": args.fp8_layers}}
        manifest_path = scratch / "manifest.json"
        names = {(fmt, expert): scratch / f"wan2.2_t2v_{expert}_noise_{'tiny' if self.tiny else '14B'}_"
                                          f"{'fp16' if fmt == 'fp16' else 'fp8_scaled'}.safetensors"
                 for fmt in ("fp16", "fp8") for expert in experts}
        needed = self.needed_formats()
        try:
            written = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            written = {}
        reused = {fmt for fmt in ("fp16", "fp8") if written.get(fmt) == manifest[fmt]
                  and all(p.is_file() and p.stat().st_size >= sizes[fmt] for (f, _), p in names.items() if f == fmt)}
        manifest_path.write_text(json.dumps({fmt: manifest[fmt] for fmt in reused}))
        for old in scratch.glob("wan2.2_t2v_*.safetensors"):  # stale or partly written files
            if old not in {p for (fmt, _), p in names.items() if fmt in reused}:
                old.unlink()
        names = {key: path for key, path in names.items() if key[0] in needed}
        free = shutil.disk_usage(scratch).free
        need = sum(sizes[fmt] for (fmt, _) in names if fmt not in reused)
        self.weights = {"dir": str(scratch), "filesystem": filesystem_of(scratch), "bytes_per_file": sizes,
                        "experts_share_one_file": not args.expert_pair, "disk_free_gb_before": free / 1e9,
                        "reused": sorted(reused), "tensors": len(shapes), "fp8_marker": args.fp8_marker,
                        "fp8_layers": args.fp8_layers,
                        "fp8_tensors": sum(1 for key in shapes if select(key)), "fp8_input_scales": "1.0"}
        self.log(f"weights: {len(shapes)} tensors per expert, fp16 {sizes['fp16'] / 1e9:.1f} GB, fp8_scaled "
                 f"{sizes['fp8'] / 1e9:.1f} GB per file; {free / 1e9:.1f} GB free in {scratch} "
                 f"({self.weights['filesystem']}); reusing {sorted(reused) or 'nothing'}, writing {need / 1e9:.1f} GB")
        margin = 3e9 if not self.tiny else 0
        if need + margin > free:
            if args.expert_pair:
                self.note("--expert-pair does not fit on the disk: one file of each format serves both experts")
                args.expert_pair = False
                return self.write_weights()
            if "fp16" in reused or sizes["fp16"] * len(experts) + margin <= free:
                names = {k: v for k, v in names.items() if k[0] == "fp16"}
                self.note("no room for the fp8_scaled file beside the fp16 one: fp8_scaled configurations skipped")
            else:
                raise RuntimeError(f"{free / 1e9:.1f} GB free in {scratch}, the fp16 file alone needs "
                                   f"{sizes['fp16'] / 1e9:.1f} GB")
        gen_device = self.device
        # ComfyUI's scaled_fp8 marker: 0 elements (what ComfyUI itself writes, and Comfy-Org's Wan2.2
        # files hold) asks for fp8 matmuls with the stored input scales where the GPU has fp8
        # compute; 2 elements asks for dequantized, full-precision matmuls.
        pair_marker = {"scaled_fp8": lambda: torch.zeros(2, dtype=torch.float32).to(torch.float8_e4m3fn)}
        for (fmt, expert), path in names.items():
            seed = self.args.seed + (1 if expert == "low" else 0)
            if fmt not in reused:
                began = time.perf_counter()
                if fmt == "fp16":
                    write_plain_safetensors(path, RandomWeights(shapes, seed, torch.float16, gen_device), gen_device)
                else:
                    # The same values as the fp16 file, quantized per tensor, with input scales of 1.
                    pair = args.fp8_marker == "pair"
                    state = RandomWeights(shapes, seed, torch.float16, gen_device, extra=pair_marker if pair else None)
                    write_fp8_scaled(path, state, marker=not pair, select=select, input_scale=True,
                                     return_weights=False)
                seconds = time.perf_counter() - began
                size = path.stat().st_size
                self.weights[f"write_s_{fmt}_{expert}"] = seconds
                self.log(f"wrote {path.name}: {size / 1e9:.2f} GB in {seconds:.1f} s ({size / 1e9 / seconds:.2f} GB/s)")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            # A format is recorded once all its files are complete (a run cut short rewrites it).
            if fmt not in reused and all(names[key].is_file() for key in names if key[0] == fmt):
                done = json.loads(manifest_path.read_text())
                done[fmt] = manifest[fmt]
                manifest_path.write_text(json.dumps(done))
        for fmt in ("fp16", "fp8"):
            chosen = [names.get((fmt, e)) for e in experts]
            if all(chosen):
                self.files[fmt] = (chosen[0], chosen[-1])
        if not args.expert_pair:
            self.notes.append("one file of each format serves as both the high-noise and the low-noise expert "
                              "(same weights in both: the timing does not depend on them)")
        if self.files["fp8"] is not None:
            self.notes.append(
                f"fp8_scaled file: {self.weights['fp8_tensors']} Linear weights ({args.fp8_layers}) float8_e4m3fn "
                "with per-tensor scale_weight and scale_input 1.0, the rest fp16, "
                + ("an empty scaled_fp8 marker as in Comfy-Org's Wan2.2 files and as ComfyUI writes it (ComfyUI then "
                   "runs fp8 matmuls by default on a GPU with fp8 compute)" if args.fp8_marker == "empty" else
                   "a 2-element scaled_fp8 marker (ComfyUI then dequantizes per layer by default)"))
        self.weights["disk_free_gb_after"] = shutil.disk_usage(scratch).free / 1e9
        self.weights["files"] = {fmt: None if pair is None else [str(p) for p in pair]
                                 for fmt, pair in self.files.items()}

    # ---------------------------------------------------------------------------------------
    # 2. native ComfyUI

    def import_comfy(self):
        if self.comfy is not None:
            return self.comfy
        comfy_dir = Path(self.args.comfyui or ROOT / ".comfyui").resolve()
        if not (comfy_dir / "comfy" / "sd.py").is_file():
            raise RuntimeError(f"{comfy_dir}: not a ComfyUI checkout (no comfy/sd.py); pass --comfyui or put "
                               "ComfyUI's source in .comfyui/ at the repo root")
        if self.comfy_error is not None:
            raise RuntimeError(self.comfy_error)
        missing = [name for name in COMFY_NEEDS if importlib.util.find_spec(name) is None]
        if missing:
            self.comfy_error = (f"ComfyUI's modules need the Python packages {missing}, not installed here "
                                "(carry them as wheels)")
            raise RuntimeError(self.comfy_error)
        stood_in = install_stand_ins(self.args.stand_ins)
        if stood_in:
            self.notes.append(f"ComfyUI imported with stand-in modules for {stood_in} (not installed here; "
                              "imported by ComfyUI for video files and SDE samplers, which this chain never runs)")
        try:
            model_management, advanced, nodes = self._import_comfy(comfy_dir)
        except Exception as error:
            self.comfy_error = f"importing ComfyUI from {comfy_dir} failed: {error!r}"
            raise

        try:
            import comfyui_version

            version = comfyui_version.__version__
        except Exception:  # noqa: BLE001
            version = "unknown"
        self.comfy = dict(nodes=nodes, mm=model_management, advanced=advanced, version=version, dir=str(comfy_dir))
        self.notes.append(f"ComfyUI {version} imported in this process: both sides use PyTorch's default caching "
                          "allocator (ComfyUI's main.py would pick cudaMallocAsync); ComfyUI's import turns on "
                          "fp16/bf16 reductions in SDPA's math backend only (the pack's attention does not use it)")
        self.log(f"ComfyUI {version} from {comfy_dir}: device {model_management.get_torch_device()}, "
                 f"vram state {model_management.vram_state.name}")
        return self.comfy

    def _import_comfy(self, comfy_dir: Path):
        # ComfyUI's own directory first: this repository has a `nodes` package of its own.
        sys.path.insert(0, str(comfy_dir))
        import comfy.options  # noqa: F401  (argument parsing stays off: cli_args parses [])
        import comfy.cli_args

        comfy.cli_args.args.cpu = self.device.type == "cpu"
        import folder_paths

        for pair in self.files.values():
            if pair is not None:
                folder_paths.add_model_folder_path("diffusion_models", str(pair[0].parent), is_default=True)
        import comfy.model_management as model_management
        import comfy.sd  # noqa: F401
        import comfy.utils
        import comfy_extras.nodes_model_advanced as advanced
        import nodes

        comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars in the log
        return model_management, advanced, nodes

    def native_compile(self, model):
        from comfy_api.torch_helpers import set_torch_compile_wrapper

        clone = model.clone()
        set_torch_compile_wrapper(model=clone, backend="inductor")  # what TorchCompileModel does
        return clone

    def native_chain(self, high, low, path: SamplingPath) -> tuple[torch.Tensor, float]:
        c = self.comfy
        high_m = c["advanced"].ModelSamplingSD3().patch(high, path.shift)[0]
        low_m = c["advanced"].ModelSamplingSD3().patch(low, path.shift)[0]
        positive, negative = [[self.cond, {}]], [[self.uncond, {}]]
        latent = {"samples": torch.zeros(self.latent_shape)}
        sampler = c["nodes"].KSamplerAdvanced()
        seed = self.args.seed
        self.sync()
        began = time.perf_counter()
        handed = sampler.sample(high_m, "enable", seed, path.steps, path.cfg, "euler", "simple", positive, negative,
                                latent, 0, path.split, "enable")[0]
        out = sampler.sample(low_m, "disable", seed, path.steps, path.cfg, "euler", "simple", positive, negative,
                             handed, path.split, 10000, "disable")[0]
        self.sync()
        return out["samples"].float().cpu(), time.perf_counter() - began

    def free_native(self) -> None:
        c = self.comfy
        gc.collect()
        c["mm"].cleanup_models()
        c["mm"].soft_empty_cache(True)
        if self.allocated_gib() > 1.0:
            c["mm"].unload_all_models()
            gc.collect()
            c["mm"].cleanup_models()
            c["mm"].soft_empty_cache(True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            if self.allocated_gib() > 1.0:
                self.note(f"native: {self.allocated_gib():.1f} GiB still allocated after freeing a model")

    @staticmethod
    def native_model_info(high, low) -> dict:
        """What ComfyUI chose (no reference to the models is kept)."""
        return {"model_dtype": str(high.model.get_dtype()),
                "manual_cast_dtype": str(getattr(high.model, "manual_cast_dtype", None)),
                "loaded_gib": [m.loaded_size() / GIB for m in (high, low) if hasattr(m, "loaded_size")],
                "model_gib": [m.model_size() / GIB for m in (high, low) if hasattr(m, "model_size")]}

    def native_config(self, name: str) -> None:
        spec = NATIVE[name]
        paths = self.paths_for(name) if not spec.compile else [p for p in self.paths if p.name == "lightning"]
        if not paths:
            return
        files = self.files[spec.weights]
        if files is None:
            self.note(f"native {name}: no {spec.weights} file, skipped")
            return
        per_expert = 12.0 if spec.weights == "fp16" else 7.0
        first = 2 * per_expert + (NATIVE_COMPILE_WARMUP_S if spec.compile else 0) + \
            self.run_estimate(spec.forward_s, WARM) + self.run_estimate(spec.forward_s, paths[0])
        if not self.fits(first, f"native {name}"):
            return
        high = low = None
        try:
            c = self.import_comfy()
            self.collector.take()
            self.log(f"native {name}: {spec.label}")
            self.reset_peak()
            began = time.perf_counter()
            loader = c["nodes"].UNETLoader()
            high = loader.load_unet(files[0].name, spec.weight_dtype)[0]
            low = loader.load_unet(files[1].name, spec.weight_dtype)[0]
            load_s = time.perf_counter() - began
            loader_log = self.collector.take()
            label = spec.label
            matmul = next((m for m in (re.search(r"fp8 matrix mult: (\w+)", line) for line in loader_log) if m), None)
            if matmul is not None:
                label += " (fp8 matmul)" if matmul.group(1) == "True" else " (dequantized per layer)"
            if spec.compile:
                high, low = self.native_compile(high), self.native_compile(low)
            began = time.perf_counter()
            self.native_chain(high, low, WARM)
            warm_s = time.perf_counter() - began
            info = {"side": "native", "label": label, "load_s": load_s, "warmup_s": warm_s,
                    "load_warmup_peak_gib": self.peak_gib(), "weight_dtype_option": spec.weight_dtype,
                    **self.native_model_info(high, low), "comfy_loader_log": loader_log}
            self.first_job[f"native {name}"] = info
            self.log(f"native {name} first job: {json.dumps(info, default=str)}")
            for path in paths:
                if not self.fits(self.run_estimate(spec.forward_s, path), f"native {name} {path.name}"):
                    continue
                repeats = self.args.repeats if path.name == "lightning" else 1
                times, latent = [], None
                self.reset_peak()
                for _ in range(repeats):
                    latent, seconds = self.native_chain(high, low, path)
                    times.append(seconds)
                self.record(f"native {name} | {path.name}", {
                    "side": "native", "config": name, "label": label, "path": path.name, "cache": None,
                    "steps": path.steps, "denoise_s": statistics.median(times), "denoise_runs_s": times,
                    "s_per_step": statistics.median(times) / path.steps, "peak_mem_gib": self.peak_gib(),
                }, latent)
            info["comfy_log"] = self.collector.take()[:20]
        except Exception as error:  # noqa: BLE001 (a failed configuration is a note; the others still run)
            traceback.print_exc()
            self.note(f"native {name}: failed: {error!r}")
        finally:
            high = low = None
            if self.comfy is not None:
                if spec.compile:
                    torch._dynamo.reset()
                self.free_native()
            self.save()

    # ---------------------------------------------------------------------------------------
    # 3. the VAE decode

    def write_vae(self) -> bool:
        """The random full-width Wan2.1 VAE file (reused where written before); False: it failed."""
        path = self.scratch_dir() / f"random_wan_2.1_vae_seed{self.args.seed}_bf16.safetensors"
        try:
            if not path.is_file():
                began = time.perf_counter()
                partial = path.with_suffix(".partial")  # renamed when complete: a run cut short leaves none
                save_random_vae(partial, seed=self.args.seed, base_dim=96, dtype=torch.bfloat16)
                partial.rename(path)
                self.vae["write_s"] = time.perf_counter() - began
                self.log(f"wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB in {self.vae['write_s']:.1f} s")
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"VAE file: failed: {error!r}; no VAE decode")
            return False
        self.vae_file = path
        self.vae.update(file=str(path), reused="write_s" not in self.vae, latent=list(self.vae_shape),
                        warmup_latent=list(VAE_WARM_LATENT), latent_values="randn, seed --seed + 3")
        return True

    def vae_decode_s(self) -> float:
        """One decode's seconds for the budget, from the time of 480x832x81 by the latent's size."""
        return VAE_DECODE_S * math.prod(self.vae_shape[2:]) / (21 * 60 * 104)

    def timed_decode(self, decode: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]
                     ) -> tuple[torch.Tensor, float]:
        """``decode`` of the seeded random latent of ``shape`` (the same values on both sides) and its
        wall time."""
        latent = torch.randn(shape, generator=torch.Generator().manual_seed(self.args.seed + 3))
        self.sync()
        began = time.perf_counter()
        frames = decode(latent)
        self.sync()
        return frames, time.perf_counter() - began

    def vae_record(self, row: dict) -> None:
        self.vae["rows"][row["side"]] = row
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        self.log(f"VAE decode, {row['side']}: {json.dumps(shown, default=str)}")

    def vae_native(self) -> None:
        """ComfyUI's VAELoader + VAEDecode, called as its executor runs nodes (under inference mode)."""
        if not self.fits(VAE_LOAD_S + 2 * self.vae_decode_s(), "native VAE decode"):
            return
        vae = None
        try:
            c = self.import_comfy()
            import folder_paths  # ComfyUI's, imported with it

            folder_paths.add_model_folder_path("vae", str(self.vae_file.parent), is_default=True)
            self.collector.take()
            self.log("native VAE decode: VAELoader + VAEDecode")
            decoder = c["nodes"].VAEDecode()
            with torch.inference_mode():
                began = time.perf_counter()
                vae = c["nodes"].VAELoader().load_vae(self.vae_file.name)[0]
                load_s = time.perf_counter() - began
                _, warm_s = self.timed_decode(lambda z: decoder.decode(vae, {"samples": z})[0], VAE_WARM_LATENT)
                self.reset_peak()
                frames, seconds = self.timed_decode(lambda z: decoder.decode(vae, {"samples": z})[0],
                                                    self.vae_shape)
            self.vae_frames = frames.float().cpu()
            self.vae_record({"side": "native", "label": "ComfyUI VAELoader + VAEDecode", "load_s": load_s,
                             "warmup_s": warm_s, "decode_s": seconds, "peak_mem_gib": self.peak_gib(),
                             "dtype": str(vae.vae_dtype), "frames": list(frames.shape),
                             "comfy_log": self.collector.take()[:10]})
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"native VAE decode: failed: {error!r}")
        finally:
            vae = None
            if self.comfy is not None:
                self.comfy["mm"].unload_all_models()  # the VAE (under 1 GiB: free_native would keep it)
                self.free_native()
            self.save()

    def vae_pack(self) -> None:
        """The pack's decode with the node's defaults: a group's decode request, or in this process the
        workers' own request handler (``GroupVae.serve``: the same tiling choice, timing, peak and
        fp16 frames, without the channel)."""
        from accel.model.vae import GroupVae
        from accel.parallel.group import WorkerGroup

        in_workers = self.args.pack_in == "workers"
        if not self.fits((GROUP_START_S if in_workers else 0.0) + VAE_LOAD_S + 2 * self.vae_decode_s(),
                         "the pack's VAE decode"):
            return
        group = served = None
        try:
            self.log(f"pack VAE decode ({'worker group' if in_workers else 'in process'})")
            row: dict = {"side": "pack", "pack_in": self.args.pack_in}
            if in_workers:
                began = time.perf_counter()
                # The tiny random experts: the group the decode runs in; its VAE does not depend on them.
                group = WorkerGroup(ModelSpec(source="tiny-random"), one_gpu_layout(self.device)).start()
                row.update(label="pack Wan VAE Decode (worker group of one rank)",
                           group_start_s=time.perf_counter() - began)

                def decode(latent: torch.Tensor) -> tuple[torch.Tensor, dict]:
                    return group.decode(latent, self.vae_file, "auto"), group.last_vae_info
            else:
                served = GroupVae(self.device)
                row["label"] = "pack GroupVae decode (this process)"

                def decode(latent: torch.Tensor) -> tuple[torch.Tensor, dict]:
                    _, info, tensors = served.serve("decode", {"vae_path": str(self.vae_file), "tiling": "auto"},
                                                    {"latent": latent})
                    return tensors["frames"].float().cpu(), info

            (_, warm), warm_s = self.timed_decode(decode, VAE_WARM_LATENT)
            (frames, info), seconds = self.timed_decode(decode, self.vae_shape)
            row.update(load_s=warm["load_s"], warmup_s=warm_s, decode_s=seconds, worker_decode_s=info["seconds"],
                       peak_mem_gib=info["peak_mem_gb_rank0"], dtype=info["dtype"], tiles=info["tiles"],
                       tiling=info["tiling"], frames=list(frames.shape))
            if self.vae_frames is not None:
                if frames.shape == self.vae_frames.shape:
                    row["psnr_db_vs_native"] = psnr(frames, self.vae_frames)
                    row["max_abs_diff_vs_native"] = float((frames - self.vae_frames).abs().max())
                else:
                    self.note(f"pack VAE decode: frames {list(frames.shape)}, native's "
                              f"{list(self.vae_frames.shape)}: not compared")
            self.vae_record(row)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"pack VAE decode: failed: {error!r}")
        finally:
            if group is not None:
                group.close()
            served = self.vae_frames = None  # the in-process VAE too, before free_pack empties the cache
            self.free_pack()
            self.save()

    # ---------------------------------------------------------------------------------------
    # 4. the pack

    def pack_job(self, path: SamplingPath, preset: str | None = None) -> Job:
        chosen = load_preset(preset) if preset else None
        sampler = SamplerSettings(steps=path.steps, seed=self.args.seed, cfg_high=path.cfg, cfg_low=path.cfg,
                                  shift=path.shift, sampler="euler", scheduler="simple", switch_step=path.split)
        settings = JobSettings(sampler=sampler, cache=chosen.cache if chosen else None,
                               scm=chosen.scm_for(path.steps) if chosen else None)
        return Job(cond=self.cond, uncond=self.uncond, latent=torch.zeros(self.latent_shape), settings=settings)

    def pack_config(self, name: str) -> None:
        spec = PACK[name]
        paths = self.paths_for(name)
        runs: list[tuple[SamplingPath, str | None]] = [(p, None) for p in paths]
        if any(p.name == "template" for p in paths) and name in self.args.cache_configs.split(","):
            runs += [(PATHS["template"], preset) for preset in self.args.cache_presets.split(",") if preset]
        # float8 matmuls on the CPU run an emulation (minutes for one tiny job): load only.
        load_only = self.tiny and spec.as_stored
        if not runs:
            return
        files = self.files[spec.weights]
        if files is None:
            self.note(f"pack {name}: no {spec.weights} file, skipped")
            return
        engine = spec.engine
        extra = {}
        if spec.as_stored:
            fields = {f.name for f in dataclasses.fields(ModelSpec)}
            if "fp8_scaled" not in fields:
                self.note(f"pack {name}: ModelSpec has no fp8_scaled field (the loader cannot use fp8_scaled "
                          "files as stored yet): skipped")
                return
            extra["fp8_scaled"] = "as_stored"
        if engine.compile and self.device.type == "cpu":
            engine = dataclasses.replace(engine, compile=False)
            self.notes.append(f"pack {name}: compile off on the CPU dry run")
        per_expert = 10.0 if spec.weights == "fp16" else 6.0
        compile_s = COMPILE_WARMUP_S if engine.compile else 0.0
        first = 2 * per_expert + compile_s + self.run_estimate(spec.forward_s, WARM) + \
            self.run_estimate(spec.forward_s, runs[0][0])
        if engine.compile and not self.fits(first, f"pack {name} with compile"):
            if spec.as_stored and self.fits(first - compile_s, f"pack {name} without compile"):
                engine = dataclasses.replace(engine, compile=False)
                self.note(f"pack {name}: run without compile (budget)")
            else:
                return
        elif not self.fits(first, f"pack {name}"):
            return
        dtype = "fp32" if self.tiny and not spec.as_stored else "bf16"
        label = spec.label if engine == spec.engine else spec.label.replace(" + compile", "")
        if dtype != "bf16":
            label += f" [{dtype} on the CPU dry run]"
        runtime = None
        try:
            self.log(f"pack {name}: {label}")
            model_spec = ModelSpec(source="single-file", high_path=str(files[0]), low_path=str(files[1]),
                                   dtype=dtype, **extra)
            self.reset_peak()
            began = time.perf_counter()
            runtime = PackRunner(model_spec, self.device, engine, in_workers=self.args.pack_in == "workers")
            self.sync()
            load_s = time.perf_counter() - began
            if load_only:
                self.first_job[f"pack {name}"] = {"side": "pack", "load_s": load_s, "warmup_s": None,
                                                  "engine": engine.to_dict(), "dtype": dtype, **extra}
                self.notes.append(f"pack {name}: loaded, jobs not run on the CPU dry run (CPU float8 matmuls "
                                  "are an emulation: minutes for one tiny job)")
                self.log(f"pack {name}: loaded in {load_s:.2f} s; no jobs on the CPU")
                return
            began = time.perf_counter()
            warm = runtime.run(self.pack_job(WARM))
            warm_s = time.perf_counter() - began
            info = {"side": "pack", "load_s": load_s, "warmup_s": warm_s,
                    "warmup_compile_s": warm.trace.info.get("compile_s"),
                    "load_warmup_peak_gib": runtime.peak_gib(warm, self.peak_gib()), "pack_in": self.args.pack_in,
                    "engine": engine.to_dict(), "dtype": dtype, **extra}
            self.first_job[f"pack {name}"] = info
            self.log(f"pack {name} first job: {json.dumps(info, default=str)}")
            for path, preset in runs:
                what = f"pack {name} {path.name}" + (f" {preset}" if preset else "")
                if not self.fits(self.run_estimate(spec.forward_s, path, cached=preset is not None), what):
                    continue
                repeats = self.args.repeats if path.name == "lightning" else 1
                times, walls, result = [], [], None
                self.reset_peak()
                for _ in range(repeats):
                    began = time.perf_counter()
                    result = runtime.run(self.pack_job(path, preset))
                    walls.append(time.perf_counter() - began)
                    times.append(result.trace.info["denoise_s"])
                summary = result.trace.summary()
                self.record(f"pack {name} | {path.name}" + (f" | {preset}" if preset else ""), {
                    "side": "pack", "config": name, "label": label, "path": path.name, "cache": preset,
                    "steps": path.steps, "denoise_s": statistics.median(times), "denoise_runs_s": times,
                    "s_per_step": statistics.median(times) / path.steps,
                    "job_overhead_s": statistics.median(walls) - statistics.median(times),
                    "peak_mem_gib": runtime.peak_gib(result, self.peak_gib()), "pack_in": self.args.pack_in,
                    "compile_s_in_run": result.trace.info.get("compile_s"),
                    "forwards": summary["forwards"], "computed": summary["computed"],
                    "switch": result.trace.info.get("switch"),
                }, result.latent)
            if runtime.runtime is None:
                self.notes.append(f"pack {name}: forwards not timed here (the jobs ran in a worker group; "
                                  "bench/formats.py times forwards in a process of their own, --pack-in process here)")
            elif name == "bf16":
                self.forward_times(runtime.runtime, "pack bf16, exact attention", name)
            elif name in ("fp8_compile", "fp8_stored") and engine.compile:
                self.forward_times(runtime.runtime, f"{label}, exact attention", name)
                if name == "fp8_compile":
                    self.lowprec_forward(runtime.runtime, label)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"pack {name}: failed: {error!r}")
        finally:
            if runtime is not None:
                runtime.close()
            runtime = None
            self.free_pack()
            self.save()

    def free_pack(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            if self.allocated_gib() > 1.0:
                torch._dynamo.reset()
                gc.collect()
                torch.cuda.empty_cache()
            if self.allocated_gib() > 1.0:
                self.note(f"pack: {self.allocated_gib():.1f} GiB still allocated after freeing a runtime")

    # ---------------------------------------------------------------------------------------
    # 5. forwards and attention

    def timed(self, fn, repeats: int, warmup: int = 1) -> float:
        with torch.no_grad():
            for _ in range(warmup):
                fn()
            self.sync()
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - began)
        return statistics.median(times)

    def forward_inputs(self, tokens: int | None, dtype: torch.dtype):
        if tokens is None or self.tiny:
            shape = self.latent_shape
        else:
            frames, height, width = FORWARD_SHAPES[tokens]
            shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        generator = torch.Generator().manual_seed(0)
        latent = torch.randn(shape, generator=generator).to(self.device, dtype)
        text = self.cond.to(self.device, dtype)
        return latent, torch.tensor([900.0], device=self.device), text, shape[2] * (shape[3] // 2) * (shape[4] // 2)

    def forward_times(self, runtime, label: str, name: str) -> None:
        from accel.sampling.loop import expert_forward

        module = runtime.experts.high
        for tokens in self.args.tokens:
            estimate = 0 if self.tiny else 5 * PACK[name].forward_s * (tokens / 32760) ** 1.2 + 2
            if not self.fits(estimate, f"forward of {label} at {tokens} tokens"):
                continue
            try:
                latent, timestep, text, real = self.forward_inputs(tokens, runtime.experts.high.dtype)
                seconds = self.timed(lambda x=latent, t=timestep, c=text: expert_forward(module, x, t, c),
                                     self.args.forward_repeats)
                self.forward.setdefault(label, {})[str(real)] = seconds
                self.log(f"forward, {label}, {real} tokens: {seconds:.3f} s")
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                self.note(f"forward of {label} at {tokens} tokens failed: {error!r}")

    def lowprec_backend(self) -> str | None:
        from accel.model.quantized_attention import unavailable_reason

        if unavailable_reason(self.device) is None:
            return "int8_fp8"
        for name, (_, package) in ATTENTION_BACKENDS.items():
            if name in ("native", "cudnn", "flash") or package is None:
                continue
            if importlib.util.find_spec(package) is not None:
                return name
        return None

    def lowprec_forward(self, runtime, label: str) -> None:
        """FP8 linears + a low-precision attention backend (sage), where one is installed: the
        attention kernel's error against SDPA on Wan-shaped inputs, and the forward at --tokens."""
        backend = self.lowprec_backend()
        if backend is None:
            packages = {n: p for n, (_, p) in ATTENTION_BACKENDS.items() if p and n not in ("flash",)}
            reason = f"no low-precision attention package installed (the pack's backends need {packages})"
            self.reasons["forward_32k_lowprec_s"] = reason
            self.reasons["lowprec_attention_rel_error"] = reason
            return
        if self.device.type == "cuda":
            try:
                self.attention_error(backend)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                self.reasons["lowprec_attention_rel_error"] = f"{backend}: failed: {error!r}"[:300]
        else:
            self.reasons["lowprec_attention_rel_error"] = "CPU dry run"
        try:
            from accel.model.engine import set_attention_backend
            from accel.sampling.loop import expert_forward

            tokens = 32760 if 32760 in self.args.tokens else self.args.tokens[0]
            if not self.fits(10 * PACK["fp8_compile"].forward_s * (tokens / 32760) ** 1.2 + 60,
                             f"forward with {backend} attention"):
                self.reasons["forward_32k_lowprec_s"] = "skipped: --budget-s"
                return
            module = runtime.experts.high
            latent, timestep, text, real = self.forward_inputs(tokens, module.dtype)
            with torch.no_grad():
                exact = expert_forward(module, latent, timestep, text).float()
            set_attention_backend(runtime.experts, dataclasses.replace(runtime.engine, attention_backend=backend))
            seconds = self.timed(lambda: expert_forward(module, latent, timestep, text), self.args.forward_repeats)
            with torch.no_grad():
                low = expert_forward(module, latent, timestep, text).float()
            drift = relative_error(low, exact)
            key = f"{label}, {backend} attention"
            self.forward.setdefault(key, {})[str(real)] = seconds
            self.attention["forward_rel_error_vs_exact_attention"] = drift
            self.log(f"forward, {key}, {real} tokens: {seconds:.3f} s, output rel error vs exact attention {drift:.2e}")
            if drift == 0.0:
                self.note(f"{backend} attention gave the exact forward bit for bit: the backend switch did not take "
                          "effect on the compiled blocks, so its forward time is not a low-precision one")
                self.forward.pop(key)
                self.reasons["forward_32k_lowprec_s"] = f"the {backend} backend switch did not take effect"
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.reasons["forward_32k_lowprec_s"] = f"{backend}: failed: {error!r}"[:300]

    def attention_error(self, backend: str) -> None:
        """The low-precision kernel against SDPA at 32,760 tokens on random N(0, 1) q, k, v in the
        [B, H, S, D] layout (bench/attention_kernels.py has Wan-like inputs and every size)."""
        import torch.nn.functional as F

        if backend == "sage":
            from sageattention import sageattn

            def low(q, k, v):
                return sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        elif backend in QUANTIZED_ATTENTION:
            from accel.model.quantized_attention import quantized_attention

            def low(q, k, v):
                pv = QUANTIZED_ATTENTION[backend]
                return quantized_attention(*(t.transpose(1, 2) for t in (q, k, v)), pv=pv).transpose(1, 2)
        else:
            self.reasons["lowprec_attention_rel_error"] = f"no kernel-level check written for backend {backend!r}"
            return
        heads, head_dim = self.config["num_attention_heads"], self.config["attention_head_dim"]
        generator = torch.Generator(self.device).manual_seed(0)
        q, k, v = (torch.randn(1, heads, 32760, head_dim, generator=generator, device=self.device,
                               dtype=torch.bfloat16) for _ in range(3))
        reference = F.scaled_dot_product_attention(q, k, v)
        out = low(q, k, v)
        self.attention = {
            "backend": backend, "shape": [1, heads, 32760, head_dim],
            "rel_error_vs_sdpa": relative_error(out, reference),
            "sdpa_ms": 1e3 * self.timed(lambda: F.scaled_dot_product_attention(q, k, v), 5),
            "lowprec_ms": 1e3 * self.timed(lambda: low(q, k, v), 5),
            "inputs": "random N(0,1) q, k, v",
        }
        self.log(f"attention {backend}: {self.attention}")

    # ---------------------------------------------------------------------------------------
    # results

    def errors(self) -> None:
        for key, row in self.rows.items():
            latent = self.latents[key]
            reference = f"pack bf16 | {row['path']}"
            if reference in self.latents and reference != key:
                row["rel_err_vs_pack_bf16"] = relative_error(latent, self.latents[reference])
            if row.get("cache"):
                uncached = f"pack {row['config']} | {row['path']}"
                if uncached in self.latents:
                    row["rel_err_vs_same_engine_uncached"] = relative_error(latent, self.latents[uncached])
            native = f"native fp16 | {row['path']}"
            if native in self.latents and native != key:
                row["rel_err_vs_native_fp16"] = relative_error(latent, self.latents[native])

    def per_step(self, key: str, name: str) -> float | None:
        """A forward's seconds from a Lightning run in the worker group (cfg 1: one forward per
        step), where no forward was timed on its own; the run's size must be 32,760 tokens."""
        row = self.rows.get(key)
        if row is None or not row["finite"] or self.tokens != 32760:
            return None
        note = (f"{name}: the Lightning run's seconds per step ({key}: cfg 1, one forward per step, in the worker "
                "group, including the step's scheduler work)")
        if note not in self.notes:  # the summary is written after each stage
            self.notes.append(note)
        return row["s_per_step"]

    def best(self, side: str, path: str) -> tuple[str, dict] | None:
        rows = [(k, r) for k, r in self.rows.items() if r["side"] == side and r["path"] == path and r["finite"]]
        return min(rows, key=lambda kr: kr[1]["denoise_s"]) if rows else None

    def summary(self) -> dict:
        out: dict = {}
        native, pack = self.best("native", "lightning"), self.best("pack", "lightning")
        if native and pack:
            out["lightning_vs_native_best"] = native[1]["denoise_s"] / pack[1]["denoise_s"]
            out["lightning_native_best"], out["lightning_pack_best"] = native[0], pack[0]
        else:
            out["lightning_vs_native_best"] = None
            self.reasons.setdefault("lightning_vs_native_best", "no native or no pack Lightning run finished")
        fp8 = self.rows.get("native fp8_scaled | template")
        pack_t = self.best("pack", "template")
        if fp8 and pack_t and fp8["finite"]:
            out["template_vs_native_fp8"] = fp8["denoise_s"] / pack_t[1]["denoise_s"]
            out["template_pack_best"] = pack_t[0]
            out["template_pack_best_rel_err_vs_pack_bf16"] = pack_t[1].get("rel_err_vs_pack_bf16")
        else:
            out["template_vs_native_fp8"] = None
            self.reasons.setdefault("template_vs_native_fp8",
                                    "template path not run (--paths) or its native fp8_scaled / pack run missing")
        exact = self.forward.get("pack bf16, exact attention", {}).get("32760")
        if exact is None:
            exact = self.per_step("pack bf16 | lightning", "forward_32k_exact_s")
        out["forward_32k_exact_s"] = exact
        if exact is None:
            self.reasons.setdefault("forward_32k_exact_s", "the pack's bf16 forward at 32,760 tokens was not run"
                                    + (" (CPU dry run)" if self.tiny else ""))
        lowprec = next((v.get("32760") for k, v in self.forward.items() if k.endswith(" attention")
                        and "exact" not in k), None)
        for name in LOWPREC_CONFIGS:
            if lowprec is None:
                lowprec = self.per_step(f"pack {name} | lightning", "forward_32k_lowprec_s")
        out["forward_32k_lowprec_s"] = lowprec
        if lowprec is None:
            self.reasons.setdefault("forward_32k_lowprec_s", "FP8 + low-precision attention forward not run")
        fp8_forward = next((v.get("32760") for k, v in self.forward.items()
                            if k.startswith("pack FP8") and "exact" in k), None)
        out["forward_32k_fp8_compile_s"] = fp8_forward
        out["lowprec_attention_rel_error"] = self.attention.get("rel_error_vs_sdpa")
        if out["lowprec_attention_rel_error"] is None:
            self.reasons.setdefault("lowprec_attention_rel_error", "no low-precision attention kernel measured")
        native_vae, pack_vae = (self.vae["rows"].get(side) for side in ("native", "pack"))
        out["vae_decode_vs_native"] = native_vae["decode_s"] / pack_vae["decode_s"] if native_vae and pack_vae else None
        out["vae_decode_psnr_db"] = pack_vae.get("psnr_db_vs_native") if pack_vae else None
        if out["vae_decode_vs_native"] is None:
            a = self.args
            skipped = "--skip-vae" if a.skip_vae else "--skip-native / --skip-pack" if a.skip_native or a.skip_pack \
                else "the native or the pack's VAE decode did not finish (see the notes)"
            self.reasons.setdefault("vae_decode_vs_native", skipped)
        return out

    def save(self) -> None:
        self.errors()
        summary = self.summary()
        try:
            from bench.common import versions

            found = versions()
        except Exception as error:  # noqa: BLE001
            found = {"error": repr(error)}
        if self.comfy is not None:
            found["comfyui"] = self.comfy["version"]
        payload = {
            **summary,
            "notes": self.notes + [f"{key}: null: {reason}" for key, reason in self.reasons.items()
                                   if summary.get(key) is None],
            "null_reasons": {k: v for k, v in self.reasons.items() if summary.get(k) is None},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": self.device_name(), "versions": found, "elapsed_s": time.perf_counter() - self.began,
            "settings": {"frames_height_width": list(self.size), "latent": list(self.latent_shape),
                         "tokens": self.tokens, "paths": {p.name: dataclasses.asdict(p) for p in self.paths},
                         "warmup": dataclasses.asdict(WARM), "sampler": "euler", "scheduler": "simple",
                         "seed": self.args.seed, "repeats_lightning": self.args.repeats, "tiny": self.tiny,
                         "model": "tiny Wan (text_dim 4096, dim 256, 2 layers)" if self.tiny else
                         "Wan2.2-A14B, random weights", "conditioning": f"randn [1, {TEXT_TOKENS}, text_dim]"},
            "weights": self.weights, "rows": self.rows, "first_job": self.first_job, "forward_s": self.forward,
            "attention": self.attention, "vae_decode": self.vae,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
        self.out.with_suffix(".md").write_text(self.markdown(payload) + "\n")

    def device_name(self) -> str:
        if self.device.type == "cpu":
            return f"cpu ({platform.processor() or platform.machine()})"
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"

    def markdown(self, payload: dict) -> str:
        def num(value, digits=3):
            return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

        def sci(value):
            return "" if value is None else f"{value:.2e}"

        frames, height, width = self.size
        lines = [f"# The pack against native ComfyUI, {datetime.date.today()}, {payload['device']}", "",
                 (f"{height}x{width}x{frames} ({self.tokens} tokens), euler / simple, seed {self.args.seed}, "
                  f"{'tiny model on the CPU (dry run)' if self.tiny else 'random A14B weights'}; versions "
                  f"{payload['versions']}. Denoise = both samplers' time; Lightning median of {self.args.repeats}, "
                  "template once. Latent errors are against the pack's bf16 run of the same path (random weights)."),
                 ""]
        header = ["path", "side", "configuration", "denoise s", "s/step", "native best / this", "peak GiB",
                  "rel err vs pack bf16", "forwards computed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        native_best = {p: self.best("native", p) for p in PATHS}
        for _key, row in sorted(self.rows.items(), key=lambda kr: (kr[1]["path"] != "lightning", kr[1]["side"], kr[0])):
            best = native_best.get(row["path"])
            ratio = best[1]["denoise_s"] / row["denoise_s"] if best else None
            label = row["label"] + (f" + {row['cache']}" if row.get("cache") else "")
            forwards = f"{row['computed']}/{row['forwards']}" if "forwards" in row else ""
            lines.append("| " + " | ".join([row["path"], row["side"], label, num(row["denoise_s"], 2),
                                              num(row["s_per_step"]), num(ratio, 2), num(row["peak_mem_gib"], 1),
                                              sci(row.get("rel_err_vs_pack_bf16")), forwards]) + " |")
        lines += ["", "First job (load, warm-up: 2 steps, one forward per expert, which compiles):", "",
                  "| configuration | load s | warm-up s | compile s in warm-up | peak GiB (load + warm-up) |",
                  "|---|---|---|---|---|"]
        for name, info in self.first_job.items():
            lines.append(f"| {name} | {num(info['load_s'], 1)} | {num(info['warmup_s'], 1)} | "
                         f"{num(info.get('warmup_compile_s'), 1)} | {num(info.get('load_warmup_peak_gib'), 1)} |")
        if self.forward:
            lines += ["", "Uncached forward of one expert (median):", "", "| forward | tokens | s |", "|---|---|---|"]
            for label, by_tokens in self.forward.items():
                for tokens, seconds in by_tokens.items():
                    lines.append(f"| {label} | {tokens} | {seconds:.3f} |")
        if self.vae["rows"]:
            native_vae = self.vae["rows"].get("native")
            header = ["side", "configuration", "dtype", "load s", "warm-up s", "decode s", "worker s",
                      "native / this", "peak GiB", "tiles", "PSNR dB vs native"]
            lines += ["", (f"VAE decode: a random full-width Wan2.1 VAE (bf16 file), the same seeded randn latent "
                           f"{self.vae['latent']} on both sides, after an untimed decode of "
                           f"{self.vae['warmup_latent']}; load s: native's VAELoader (ComfyUI moves the weights to the "
                           "device in the warm-up), the pack's load onto the device; decode s: the call's wall time, "
                           "frames on the host (worker s: the decode in the worker); peak: the allocator's peak over "
                           "the decode:"), "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in self.vae["rows"].values():
                ratio = native_vae["decode_s"] / row["decode_s"] if native_vae else None
                lines.append("| " + " | ".join([row["side"], row["label"], row["dtype"], num(row["load_s"], 2),
                                                  num(row["warmup_s"], 2), num(row["decode_s"], 2),
                                                  num(row.get("worker_decode_s"), 2), num(ratio, 2),
                                                  num(row["peak_mem_gib"], 2), num(row.get("tiles")),
                                                  num(row.get("psnr_db_vs_native"), 1)]) + " |")
        keys = ("lightning_vs_native_best", "template_vs_native_fp8", "forward_32k_exact_s", "forward_32k_lowprec_s",
                "lowprec_attention_rel_error", "vae_decode_vs_native")
        lines += ["", "| key | value |", "|---|---|"]
        lines += [f"| {key} | {num(payload.get(key), 4) or 'null: ' + payload['null_reasons'].get(key, '')} |"
                  for key in keys]
        lines += ["", "Notes:", ""] + [f"- {note}" for note in payload["notes"]]
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.log(f"device {self.device_name()}, latent {list(self.latent_shape)} ({self.tokens} tokens), paths "
                 f"{[p.name for p in self.paths]}, budget {a.budget_s:.0f} s, out {self.out}")
        try:
            self.write_weights()
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.note(f"weights: failed: {error!r}; nothing else can run")
            self.save()
            return
        vae = not a.skip_vae and self.write_vae()
        self.save()
        if not a.skip_native:
            for name in [n for n in a.native_configs.split(",") if n]:
                self.native_config(name)
            if vae:
                self.vae_native()
        if self.comfy is not None:  # ComfyUI's directories (its nodes.py adds comfy/) out of later imports
            sys.path[:] = [p for p in sys.path if not p.startswith(self.comfy["dir"])]
        if vae and not a.skip_pack:
            self.vae_pack()
        if not a.skip_pack:
            for name in [n for n in a.pack_configs.split(",") if n]:
                self.pack_config(name)
            lowprec = [n for n in a.pack_configs.split(",") if n in LOWPREC_CONFIGS]
            if lowprec and "rel_error_vs_sdpa" not in self.attention and self.device.type == "cuda":
                try:
                    self.attention_error(PACK[lowprec[0]].engine.attention_backend)
                except Exception as error:  # noqa: BLE001
                    traceback.print_exc()
                    self.reasons["lowprec_attention_rel_error"] = f"failed: {error!r}"[:300]
        if a.delete_weights:
            for pair in self.files.values():
                for path in set(pair or ()):
                    path.unlink(missing_ok=True)
            if self.vae_file is not None:
                self.vae_file.unlink(missing_ok=True)
            self.notes.append("weights deleted after the run (--delete-weights)")
        self.save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory of the JSON and markdown")
    parser.add_argument("--paths", default="lightning", help="lightning,template (the template path is ~2 min a run)")
    parser.add_argument("--skip-native", action="store_true")
    parser.add_argument("--skip-pack", action="store_true")
    parser.add_argument("--skip-vae", action="store_true", help="no VAE decode comparison")
    parser.add_argument("--native-configs", default="fp16,fp8_scaled,fp8_scaled_fast",
                        help=f"of {','.join(NATIVE)} (fp16_compile: about 86 s of compile, Lightning only)")
    parser.add_argument("--pack-configs", default="bf16,fp8_compile,fp8_stored", help=f"of {','.join(PACK)}")
    parser.add_argument("--pack-in", choices=("workers", "process"), default="workers",
                        help="the pack's jobs in a worker group of one GPU, as the nodes run them (default), or "
                             "in this process beside ComfyUI (whose import slows the pack's forward: measured "
                             "3.76 s instead of 2.82 s at 32,760 tokens on an H200); forward times need 'process'")
    parser.add_argument("--template-configs", default="fp16,fp8_scaled,bf16,fp8_compile,fp8_stored",
                        help="configurations that also run the template path when it is in --paths")
    parser.add_argument("--cache-presets", default="sglang-fast", help="presets run by the pack on the template path")
    parser.add_argument("--cache-configs", default="fp8_compile,fp8_stored",
                        help="pack configurations that run --cache-presets on the template path")
    parser.add_argument("--tokens", type=int, nargs="+", choices=sorted(FORWARD_SHAPES), default=[32760],
                        help="token counts of the uncached forward timings")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed Lightning runs per configuration (median)")
    parser.add_argument("--forward-repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="skip what would not finish within this many seconds of the start (with a note)")
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: .comfyui/ at the repo root)")
    parser.add_argument("--scratch", help="where the weights go (default /tmp/wan-native-bench)")
    parser.add_argument("--expert-pair", action="store_true",
                        help="distinct high/low files (twice the writing and disk); default one file for both")
    parser.add_argument("--delete-weights", action="store_true", help="delete the weight files at the end")
    parser.add_argument("--fp8-marker", choices=("empty", "pair"), default="empty",
                        help="the fp8_scaled file's scaled_fp8 marker: empty (as ComfyUI writes it and Comfy-Org's "
                             "Wan2.2 files hold: fp8 matmuls on an fp8 GPU) or pair (dequantized matmuls)")
    parser.add_argument("--fp8-layers", choices=("all-linear", "blocks"), default="all-linear",
                        help="float8 weights in the fp8_scaled file: every Linear (as Comfy-Org's files) or "
                             "the blocks' Linears only")
    parser.add_argument("--stand-ins", choices=("auto", "force", "off"), default="auto",
                        help=f"stand-in modules for {', '.join(STUB_PACKAGES)} where not installed (ComfyUI imports "
                             "them for features this chain never runs); force: always (tests)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny Wan (text_dim 4096, dim 256, 2 layers)")
    args = parser.parse_args()
    setup_logging()
    bench = Bench(args)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    root.setLevel(logging.INFO)
    root.addHandler(bench.collector)
    bench.run()
    summary = {k: v for k, v in json.loads(bench.out.with_suffix(".json").read_text()).items()
               if k in ("lightning_vs_native_best", "template_vs_native_fp8", "forward_32k_exact_s",
                        "forward_32k_lowprec_s", "lowprec_attention_rel_error", "vae_decode_vs_native",
                        "vae_decode_psnr_db")}
    print(bench.out.with_suffix(".md").read_text(), flush=True)
    print(f"summary {json.dumps(summary)}\nwrote {bench.out.with_suffix('.json')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
