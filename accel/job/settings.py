"""Settings of one job, as dataclasses that travel as JSON (never pickled)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserInputError
from ..sampling.comfy_sigmas import COMFY_SCHEDULERS, comfy_sigmas, uses_uncond

EXPERTS = ("high", "low")
BRANCHES = ("cond", "uncond")
# euler: ComfyUI's update (CFG on the denoised prediction). wan_flow_unipc: diffusers' flow UniPC, the
# solver of Wan's own pipelines (not ComfyUI's uni_pc, which is another solver).
SAMPLERS = ("euler", "wan_flow_unipc")
SCHEDULERS = COMFY_SCHEDULERS  # ComfyUI's sigma schedules, by ComfyUI's names and formulas
DTYPES = ("bf16", "fp16", "fp32")
SCM_PRESETS = ("slow", "medium", "fast", "ultra")
SCM_POLICIES = ("dynamic", "static")
MODEL_SOURCES = ("tiny-random", "tiny-random-i2v", "a14b-random", "a14b-random-i2v", "diffusers", "single-file")
RANDOM_SOURCES = ("tiny-random", "tiny-random-i2v", "a14b-random", "a14b-random-i2v")  # weights built, not read
# How ComfyUI's fp8_scaled expert files run: dequantized on load to the compute dtype (what ComfyUI
# computes by default), or their FP8 weights and scales used as stored (torchao per-tensor float8).
FP8_SCALED_MODES = ("dequantize", "as_stored")
# cache-dit 1.5.3 quantization types (torchao); FP8 needs CUDA compute capability >= 8.9.
QUANT_TYPES = (
    "float8_per_row", "float8_per_tensor", "float8_per_block", "float8_weight_only",
    "int8_per_row", "int8_per_tensor", "int8_weight_only",
)
DEFAULT_QUANT_EXCLUDES = ("embedder", "embed", "modulation", "mod")  # cache-dit's default
# Where the experts' weights live on each worker (accel/model/residency.py), fastest first:
# both on the GPU; only the running one (the other in pinned host memory, swapped at the switch);
# the running one's transformer blocks streamed from host memory ahead of use; both on the GPUs,
# the blocks' Linear weights split over the sequence-parallel group by cache-dit's tensor-parallel
# plan instead of Ulysses (accel/parallel/tensor_parallel.py; no host copy kept; not yet measured on
# GPUs, so last). "auto" is resolved on the host before the group starts
# (accel/job/memory.py), from free GPU memory, free host memory and the job's tokens.
RESIDENCY_PLANS = ("resident", "swap", "stream", "shard")
RESIDENCY_CHOICES = ("auto", *RESIDENCY_PLANS)
# This pack's name -> (cache-dit backend name, Python package it needs)
ATTENTION_BACKENDS = {
    "native": ("native", None),
    "cudnn": ("_sdpa_cudnn", None),
    "flash": ("flash", "flash_attn"),
    "sage": ("sage", "sageattention"),
    "int8": ("native", None),  # the pack's quantized kernels; cache-dit's native SDPA where they cannot run
    "int8_fp8": ("native", None),
}
# The pack's quantized self-attention (accel/model/quantized_attention.py): q k^T in INT8, p v in
# 16 bit or FP8. Low precision: an explicit choice, never picked for the user.
QUANTIZED_ATTENTION = {"int8": "16bit", "int8_fp8": "fp8"}


@dataclass(frozen=True)
class ModelSpec:
    """Where the two experts come from. Workers load weights themselves from this."""

    source: str = "tiny-random"
    path: str | None = None  # diffusers directory with transformer/ and transformer_2/
    high_path: str | None = None  # single-file safetensors, original Wan key layout
    low_path: str | None = None
    dtype: str = "bf16"
    seed: int = 0  # random presets only
    fp8_scaled: str = "dequantize"  # fp8_scaled single files only (FP8_SCALED_MODES)

    def __post_init__(self) -> None:
        if self.fp8_scaled not in FP8_SCALED_MODES:
            raise UserInputError(f"fp8_scaled mode {self.fp8_scaled!r} is unknown; expected one of {FP8_SCALED_MODES}")
        if self.fp8_scaled == "as_stored" and self.dtype != "bf16":
            raise UserInputError(f"fp8_scaled files used as stored compute in bf16; the loader is set to {self.dtype}")
        if self.source not in MODEL_SOURCES:
            raise UserInputError(f"model source {self.source!r} is unknown; expected one of {MODEL_SOURCES}")
        if self.dtype not in DTYPES:
            raise UserInputError(f"dtype {self.dtype!r} is unknown; expected one of {DTYPES}")
        if self.source == "diffusers" and not self.path:
            raise UserInputError("model source 'diffusers' needs a directory path")
        if self.source == "single-file" and not (self.high_path and self.low_path):
            raise UserInputError("model source 'single-file' needs both a high-noise and a low-noise file")


LORA_STRENGTH_LIMIT = 100.0  # ComfyUI's LoraLoaderModelOnly accepts -100..100


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a chain, with its strength on each expert (JSON-friendly)."""

    path: str
    strength_high: float = 1.0
    strength_low: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise UserInputError(f"a LoRA needs a file path, got {self.path!r}")
        for name in ("strength_high", "strength_low"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or abs(value) > LORA_STRENGTH_LIMIT:
                raise UserInputError(
                    f"LoRA {self.path}: {name} must be a number from -{LORA_STRENGTH_LIMIT:g} to {LORA_STRENGTH_LIMIT:g}, "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    def strength(self, expert: str) -> float:
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        return self.strength_high if expert == "high" else self.strength_low

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoraSpec:
        if not isinstance(data, Mapping):
            raise UserInputError(f"a LoRA entry must be an object with a path and strengths, got {data!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserInputError(f"LoRA entry {dict(data)!r}: unknown fields {', '.join(sorted(unknown))}")
        if "path" not in data:
            raise UserInputError(f"LoRA entry {dict(data)!r}: no path")
        return cls(**data)


LoraChain = tuple[LoraSpec, ...]


def chain_from_json(items: Iterable[Mapping[str, Any]] | None) -> LoraChain:
    return tuple(LoraSpec.from_json(item) for item in items or ())


def chain_to_json(chain: LoraChain) -> list[dict[str, Any]]:
    return [spec.to_json() for spec in chain]


@dataclass(frozen=True)
class QuantSettings:
    quant_type: str = "float8_per_row"
    exclude_layers: tuple[str, ...] = DEFAULT_QUANT_EXCLUDES

    def __post_init__(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise UserInputError(f"quant type {self.quant_type!r} is unknown; expected one of {QUANT_TYPES}")


@dataclass(frozen=True)
class EngineOptions:
    """What is applied to the loaded experts in each worker; a change restarts the worker group."""

    quantize: QuantSettings | None = None
    compile: bool = False
    attention_backend: str = "native"
    # Launch each Ulysses all-to-all as soon as its q/k/v is projected (accel/attention.py). On by
    # default here (cache-dit's key, off by default there, where Wan has no async Ulysses).
    ulysses_async: bool = True
    ulysses_float8: bool = False  # cache-dit: FP8 all-to-all payloads
    # CUDA: the all-to-alls by copy engines over NVLink (accel/copy_engine.py), not NCCL kernels.
    ulysses_copy_engine: bool = True
    # Attend and exchange each rank's heads in up to this many chunks, so that one chunk's
    # all-to-all runs beside another's attention (accel/all_to_all.py): for links where the
    # exchange is long. On NVLinked H200s two chunks were slower (bench/results/*-findings.md).
    ulysses_head_chunks: int = 1
    # RESIDENCY_CHOICES; part of the group key once resolved (a job that needs another plan
    # restarts the group). Placement only: a plan never changes what is computed.
    residency: str = "resident"
    # Why "auto" picked the plan (the host's memory table), for the decision table's notes; not
    # part of the group key.
    residency_reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.residency not in RESIDENCY_CHOICES:
            raise UserInputError(f"residency {self.residency!r} is unknown; expected one of {RESIDENCY_CHOICES}")
        if isinstance(self.ulysses_head_chunks, bool) or not isinstance(self.ulysses_head_chunks, int) \
                or self.ulysses_head_chunks < 1:
            raise UserInputError(f"ulysses_head_chunks must be an integer >= 1, got {self.ulysses_head_chunks!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise UserInputError(
                f"attention backend {self.attention_backend!r} is unknown; expected one of {tuple(ATTENTION_BACKENDS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineOptions":
        quantize = data.get("quantize")
        return cls(**{**data, "quantize": None if quantize is None else QuantSettings(
            quant_type=quantize["quant_type"], exclude_layers=tuple(quantize["exclude_layers"]))})


@dataclass(frozen=True)
class ExpertCacheConfig:
    """DBCache + TaylorSeer settings of one expert (cache-dit's DBCacheConfig fields)."""

    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    max_warmup_steps: int = 4
    max_cached_steps: int = 8
    max_continuous_cached_steps: int = -1
    residual_diff_threshold: float = 0.24
    taylorseer: bool = True
    taylorseer_order: int = 1

    def validate(self, expert: str, num_layers: int | None = None) -> None:
        if self.Fn_compute_blocks < 1:
            raise UserInputError(f"{expert} expert: Fn_compute_blocks must be >= 1, got {self.Fn_compute_blocks}")
        if self.Bn_compute_blocks < 0:
            raise UserInputError(f"{expert} expert: Bn_compute_blocks must be >= 0, got {self.Bn_compute_blocks}")
        if num_layers is not None and self.Fn_compute_blocks + self.Bn_compute_blocks > num_layers:
            raise UserInputError(
                f"{expert} expert: Fn_compute_blocks + Bn_compute_blocks = "
                f"{self.Fn_compute_blocks + self.Bn_compute_blocks} exceeds the model's {num_layers} layers"
            )
        if self.max_warmup_steps < 0:
            raise UserInputError(f"{expert} expert: max_warmup_steps must be >= 0")
        if not 0.0 <= self.residual_diff_threshold < 1.0:
            raise UserInputError(
                f"{expert} expert: residual_diff_threshold must be in [0, 1), got {self.residual_diff_threshold}"
            )
        if self.taylorseer_order < 1:
            raise UserInputError(f"{expert} expert: taylorseer_order must be >= 1")


# The SGLang Wan2.2 run: primary W4/MC8, secondary W2/MC20, F1B0, threshold 0.24, TaylorSeer.
HIGH_DEFAULT = ExpertCacheConfig(max_warmup_steps=4, max_cached_steps=8)
LOW_DEFAULT = ExpertCacheConfig(max_warmup_steps=2, max_cached_steps=20)


@dataclass(frozen=True)
class CacheSettings:
    high: ExpertCacheConfig = HIGH_DEFAULT
    low: ExpertCacheConfig = LOW_DEFAULT

    def for_expert(self, expert: str) -> ExpertCacheConfig:
        return self.high if expert == "high" else self.low


@dataclass(frozen=True)
class ScmSettings:
    """An SCM step mask over all steps (1 = compute, 0 = cache) and its policy."""

    mask: tuple[int, ...]
    policy: str = "dynamic"

    def __post_init__(self) -> None:
        if self.policy not in SCM_POLICIES:
            raise UserInputError(f"SCM policy {self.policy!r} is unknown; expected one of {SCM_POLICIES}")
        if not self.mask or any(bit not in (0, 1) for bit in self.mask):
            raise UserInputError("SCM mask must be a non-empty sequence of 0 and 1")


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 40
    seed: int = 0
    cfg_high: float = 4.0
    cfg_low: float = 3.0
    shift: float = 12.0  # ModelSamplingSD3's shift
    sampler: str = "euler"
    scheduler: str = "simple"
    boundary: float = 0.875  # Wan's rule: the high-noise expert while t >= boundary x 1000
    # The ComfyUI templates' split instead (two KSamplerAdvanced nodes, e.g. 10 of 20 steps on the
    # high-noise expert); None: the boundary rule.
    switch_step: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserInputError(f"steps must be >= 1, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise UserInputError(f"sampler {self.sampler!r} is unknown; expected one of {SAMPLERS}")
        if self.scheduler not in SCHEDULERS:
            raise UserInputError(f"scheduler {self.scheduler!r} is unknown; expected one of {SCHEDULERS}")
        if not 0.0 <= self.boundary <= 1.0:
            raise UserInputError(f"boundary must be in [0, 1], got {self.boundary}")
        if self.shift <= 0:
            raise UserInputError(f"shift must be > 0, got {self.shift}")
        if self.cfg_high < 0.0 or self.cfg_low < 0.0:
            raise UserInputError("cfg must be >= 0 (1.0 turns classifier-free guidance off)")
        if self.switch_step is not None and not 0 <= self.switch_step <= self.steps:
            raise UserInputError(f"switch_step must be in [0, {self.steps}] (the steps), got {self.switch_step}")
        sigmas = self.sigmas()
        if len(sigmas) != self.steps + 1 or sigmas[0] != max(sigmas):
            raise UserInputError(
                f"scheduler {self.scheduler!r} gives {len(sigmas) - 1} steps from sigma {sigmas[0]:.3f} for "
                f"{self.steps} steps (it merges or skips steps there); pick another scheduler or step count"
            )

    def sigmas(self) -> list[float]:
        """ComfyUI's sigmas for these settings (steps + 1 values, the last 0)."""
        return comfy_sigmas(self.scheduler, self.steps, self.shift)

    def guidance(self, expert: str) -> float:
        return self.cfg_high if expert == "high" else self.cfg_low

    def uses_uncond(self, expert: str) -> bool:
        """ComfyUI skips the negative forward only where cfg is 1 (within float tolerance)."""
        return uses_uncond(self.guidance(expert))

    def experts(self) -> list[str]:
        """Which expert runs each step: up to ``switch_step``, or while sigma x 1000 >= boundary x 1000."""
        if self.switch_step is not None:
            return ["high"] * self.switch_step + ["low"] * (self.steps - self.switch_step)
        return ["high" if sigma >= self.boundary else "low" for sigma in self.sigmas()[:-1]]


@dataclass(frozen=True)
class JobSettings:
    """Everything about a job except its tensors."""

    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    cache: CacheSettings | None = None
    scm: ScmSettings | None = None
    loras: LoraChain = ()  # merged into the experts' weights before the job runs, in chain order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSettings":
        cache = data.get("cache")
        scm = data.get("scm")
        return cls(
            sampler=SamplerSettings(**data["sampler"]),
            cache=None
            if cache is None
            else CacheSettings(high=ExpertCacheConfig(**cache["high"]), low=ExpertCacheConfig(**cache["low"])),
            scm=None if scm is None else ScmSettings(mask=tuple(scm["mask"]), policy=scm["policy"]),
            loras=chain_from_json(data.get("loras")),
        )
