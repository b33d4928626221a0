"""Every attention kernel that runs here, on Wan2.2-A14B's self-attention, in one run.

    python bench/attention_kernels.py                    # one GPU: 14,040 / 33,600 / 75,600 tokens
    python bench/attention_kernels.py --tokens 256 --heads 2 --dim 64 --device cpu   # dry run

Shape: batch 1, 40 heads x 128, bf16, non-causal, no mask, q/k/v in the [B, S, H, D] layout the
pack's processors hand to the dispatchers (accel/model/attention.py, accel/parallel/ulysses/processor.py).
Kernels, each tried on its own (a missing package, an unsupported GPU or a kernel that fails gives
a row with the reason, never a crash):

- torch SDPA's backends through ``torch.nn.attention.sdpa_kernel``: flash, cuDNN, efficient, math
  (math and eager flex only where the S x S scores fit), and flash with torch's FA3 / FA4 impls
  (``activate_flash_attention_impl``) where their packages are installed;
- every backend diffusers registers (``diffusers.models.attention_dispatch.dispatch_attention_fn``
  with the backend's name; Hub-kernel backends are listed, not run: they download at first use);
- every backend cache-dit registers (``cache_dit.attention._dispatch_attention_fn``: what the pack
  runs on each rank under Ulysses; ``pack`` names the pack's ``attention_backend`` key,
  accel/job/settings.py ATTENTION_BACKENDS), including its FFPA FP8 / FP4 kernels;
- ``flash_attn.cute.flash_attn_func`` (PyPI ``flash-attn-4``), ``sageattention.sageattn``
  (PyPI 1.0.6: Triton, INT8 QK, FP16 PV), torchao's FP8 attention (``fp8_fa3_sdpa``, needs FA3);
  ``--flex-compiled`` adds ``torch.compile(flex_attention)``.

Each kernel: median of ``--repeats`` calls after warm-up (CUDA events), TFLOP/s = 4 S^2 heads dim / t,
and its error on two kinds of inputs (``randn``: q, k, v ~ N(0, 1) x ``--scale``; ``rmsnorm``: q and k
after an RMSNorm over all heads' channels as Wan's norm_q / norm_k, of inputs with log-normal
channel scales and a per-channel mean, times a log-normal norm weight: sharper attention with outlier
channels and the shared key bias that SageAttention's smooth_k removes): relative L2 and max abs
against bf16 SDPA flash on the whole output, and relative L2 against a float64 reference on the first
2 heads x 1,024 queries. Exact = within 2x of SDPA flash's own float64 error (bf16 rounding) on both
kinds of inputs. Then the picks: the fastest exact kernel and the fastest low-precision one with its
error; and, at 33,600 tokens, each kernel called on one rank's heads under Ulysses 2 (20 heads, the
full sequence; also as 2 head chunks of 10, as the pack's ``head_chunks`` calls it).

Writes ``<out>/<date>-<gpu>-attention.{json,md}`` (``--out``, default $OUT or ./out) and prints the
markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# tokens = latent frames x (H/16) x (W/16): 14,040 = 480x832x33, 33,600 = 21 x 1,600 (e.g. 640x640x81),
# 75,600 = 720x1280x81; the forward targets run at 32,760 = 480x832x81 (add it with --tokens)
WAN_TOKENS = (14040, 33600, 75600)
KINDS = ("randn", "rmsnorm")
EXACT_FACTOR = 2.0  # exact: error vs float64 within this factor of SDPA flash's own (bf16 rounding)
EXACT_FLOOR = 4e-3  # ... or below this (2^-8, bf16's unit roundoff), whichever is larger
LOWPREC_MAX_ERROR = 0.1  # a low-precision kernel above this relative L2 is not offered as a pick
SLICE_HEADS, SLICE_QUERIES = 2, 1024  # the float64 reference's part of the output
REASON_CHARS = 300


class Unavailable(Exception):
    """The kernel cannot run here (package, GPU, size): a row with the reason."""


def reason_of(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    name = "" if isinstance(error, Unavailable) else f"{type(error).__name__}: "
    return (name + text)[:REASON_CHARS]


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def device_name() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    found = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "python": sys.version.split()[0]}
    for name in ("triton", "diffusers", "cache-dit", "sageattention", "flash-attn", "flash-attn-4",
                 "flash_attn_3", "nvidia-cutlass-dsl", "torchao", "xformers", "kernels", "ffpa-attn"):
        version = package_version(name)
        if version is not None:
            found[name] = version
    return found


@dataclass
class Context:
    """What a kernel's build sees: the shape, the device, inputs to check constraints on, and an
    exit stack for whatever it switches on (torch's flash impl) and must switch off again."""

    tokens: int
    heads: int
    dim: int
    device: torch.device
    sample: tuple
    stack: contextlib.ExitStack


@dataclass
class Kernel:
    name: str
    kernel_id: str  # the kernel underneath (several dispatchers reach the same one)
    precision: str  # "bf16" for exact-by-design kernels, else what is quantised
    build: Callable[[Context], Callable]
    pack_key: str | None = None  # the pack's attention_backend key that runs exactly this dispatch


# ---------------------------------------------------------------------------------------------
# Guards shared by the builds


def need_cuda(ctx: Context) -> None:
    if ctx.device.type != "cuda":
        raise Unavailable(f"needs CUDA (device is {ctx.device.type})")


def need_scores_fit(ctx: Context, what: str) -> None:
    """Kernels that materialise the S x S scores (bf16 scores, fp32 softmax, a copy)."""
    needed = ctx.tokens ** 2 * ctx.heads * 12
    if ctx.device.type == "cuda":
        budget = 0.3 * torch.cuda.mem_get_info(ctx.device)[0]
    else:
        budget = 4 * 2 ** 30
    if needed > budget:
        raise Unavailable(f"{what} materialises the S x S scores: about {needed / 2 ** 30:.0f} GiB at "
                          f"{ctx.tokens} tokens x {ctx.heads} heads (run only where they fit)")


def need_module(module: str, package: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not there
        found = False
    except Exception as error:  # a parent package that fails to import
        raise Unavailable(f"{module} does not import ({package}): {reason_of(error)}") from error
    if not found:
        raise Unavailable(f"{package} is not installed (no module {module})")


def bhsd(fn):
    """A kernel taking [B, H, S, D] called on the pack's [B, S, H, D] tensors (views, no copy)."""
    return lambda q, k, v: first(fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# torch SDPA


def sdpa_kernels() -> list[Kernel]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def make(backend, scores: bool = False, cuda: bool = True):
        def build(ctx: Context):
            if cuda:
                need_cuda(ctx)
            if scores:
                need_scores_fit(ctx, "the math backend")

            def sdpa(q, k, v):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v)
            return bhsd(sdpa)
        return build

    def impl(name: str, module: str, package: str):
        def build(ctx: Context):
            need_cuda(ctx)
            from torch.nn import attention

            if not hasattr(attention, "activate_flash_attention_impl"):
                raise Unavailable(f"torch {torch.__version__} has no activate_flash_attention_impl")
            if name not in attention.list_flash_attention_impls():
                raise Unavailable(f"torch {torch.__version__} registers no {name} flash impl")
            need_module(module, package)
            attention.activate_flash_attention_impl(name)
            ctx.stack.callback(attention.restore_flash_attention_impl)
            return make(SDPBackend.FLASH_ATTENTION)(ctx)
        return build

    return [
        Kernel("sdpa:flash", "sdpa-flash", "bf16", make(SDPBackend.FLASH_ATTENTION, cuda=False)),
        Kernel("sdpa:cudnn", "sdpa-cudnn", "bf16", make(SDPBackend.CUDNN_ATTENTION)),
        Kernel("sdpa:efficient", "sdpa-efficient", "bf16", make(SDPBackend.EFFICIENT_ATTENTION)),
        Kernel("sdpa:math", "sdpa-math", "bf16", make(SDPBackend.MATH, scores=True, cuda=False)),
        Kernel("sdpa:flash[FA3 impl]", "fa3", "bf16",
               impl("FA3", "flash_attn_interface", "FA3 (flash-attention hopper/)")),
        Kernel("sdpa:flash[FA4 impl]", "fa4", "bf16", impl("FA4", "flash_attn.cute.interface", "flash-attn-4")),
    ]


# ---------------------------------------------------------------------------------------------
# diffusers' dispatcher

DIFFUSERS_IDS = {  # backend name -> (kernel underneath, precision)
    "native": ("sdpa-auto", "bf16"), "_native_cudnn": ("sdpa-cudnn", "bf16"),
    "_native_efficient": ("sdpa-efficient", "bf16"), "_native_flash": ("sdpa-flash", "bf16"),
    "_native_math": ("sdpa-math", "bf16"), "flex": ("flex-eager", "bf16"),
    "flash": ("fa2", "bf16"), "flash_varlen": ("fa2", "bf16"), "_flash_3": ("fa3", "bf16"),
    "_flash_varlen_3": ("fa3", "bf16"), "xformers": ("xformers", "bf16"),
    "sage": ("sageattn", "int8 QK (auto)"), "sage_varlen": ("sageattn-varlen", "int8 QK (auto)"),
    "_sage_qk_int8_pv_fp8_cuda": ("sage2-int8-fp8", "int8 QK, fp8 PV"),
    "_sage_qk_int8_pv_fp8_cuda_sm90": ("sage2-int8-fp8-sm90", "int8 QK, fp8 PV"),
    "_sage_qk_int8_pv_fp16_cuda": ("sage2-int8-fp16", "int8 QK, fp16 PV"),
    "_sage_qk_int8_pv_fp16_triton": ("sage2-int8-fp16-triton", "int8 QK, fp16 PV"),
}
DIFFUSERS_CPU = {"native", "_native_flash", "_native_math", "flex"}


def diffusers_kernels() -> tuple[list[Kernel], dict]:
    try:
        from diffusers.models import attention_dispatch as dispatch
    except Exception as error:
        failed = reason_of(error)

        def build(ctx):
            raise Unavailable(f"diffusers' attention_dispatch does not import: {failed}")
        return [Kernel("diffusers:*", "diffusers", "bf16", build)], {"error": failed}

    registry = dispatch._AttentionBackendRegistry
    names = [member.value for member in dispatch.AttentionBackendName]
    listing = {"members": names, "registered": sorted(b.value for b in registry._backends)}

    def make(name: str):
        def build(ctx: Context):
            if name.endswith("_hub"):
                raise Unavailable("a Hub kernel (`kernels` package): downloads from the Hugging Face Hub at first "
                                  "use, which the GPU machine cannot reach")
            if ctx.device.type != "cuda" and name not in DIFFUSERS_CPU:
                raise Unavailable(f"needs CUDA (device is {ctx.device.type})")
            if name in ("_native_math", "flex"):
                need_scores_fit(ctx, "uncompiled flex_attention" if name == "flex" else "the math backend")
            backend = dispatch.AttentionBackendName(name)
            if backend not in registry._backends:
                raise Unavailable("not registered by this diffusers")
            requirements = getattr(dispatch, "_check_attention_backend_requirements", None)
            if requirements is not None:
                try:
                    requirements(backend)
                except Exception as error:
                    raise Unavailable(reason_of(error)) from error
            q, k, v = ctx.sample
            for check in registry._constraints.get(backend, []):
                try:
                    check(query=q, key=k, value=v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None)
                except Exception as error:
                    raise Unavailable(f"constraint {getattr(check, '__name__', check)}: {reason_of(error)}") from error
            return lambda q, k, v: dispatch.dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0,
                                                                  is_causal=False, backend=backend)
        return build

    kernels = []
    for name in names:
        kernel_id, precision = DIFFUSERS_IDS.get(name, (name.removesuffix("_hub"), "bf16"))
        if name in ("sage_hub", "sage_blackwell_hub"):
            precision = "int8 QK (auto)" if name == "sage_hub" else "fp4"
        kernels.append(Kernel(f"diffusers:{name}", kernel_id, precision, make(name)))
    return kernels, listing


# ---------------------------------------------------------------------------------------------
# cache-dit's dispatcher (the pack's, under Ulysses; locally the pack reaches the same functions
# through diffusers' dispatcher once cache-dit has bridged them)

CACHE_DIT_IDS = {
    "native": ("sdpa-auto", "bf16"), "_sdpa_cudnn": ("sdpa-cudnn", "bf16"), "flash": ("fa2", "bf16"),
    "flash_varlen": ("fa2", "bf16"), "_flash_3": ("fa3", "bf16"), "sage": ("sageattn", "int8 QK (auto)"),
    "sage3": ("sage3", "fp4"), "ffpa": ("ffpa", "bf16"), "ffpa_fp8": ("ffpa-fp8", "fp8"),
    "ffpa_fp8_per_block": ("ffpa-fp8-per-block", "fp8"), "ffpa_fp4": ("ffpa-fp4", "fp4"),
}
NPU_ONLY = {"_native_npu", "_npu_fia", "_mindiesd_laser"}
CACHE_DIT_NEEDS = {  # registered whatever is installed; they fail at the call without these
    "sage": ("sageattention", "sageattention"), "sage3": ("sageattn3", "SageAttention3 (sageattn3, Blackwell only)"),
    **{name: ("ffpa_attn", "ffpa-attn") for name in ("ffpa", "ffpa_fp8", "ffpa_fp4", "ffpa_fp8_per_block")},
}


def cache_dit_kernels(pack_keys: dict[str, str]) -> tuple[list[Kernel], dict]:
    try:
        from cache_dit.attention.backends.register import _AttnBackend, _AttnBackendRegistry, _dispatch_attention_fn
    except Exception as error:
        failed = reason_of(error)

        def build(ctx):
            raise Unavailable(f"cache-dit's attention registry does not import: {failed}")
        return [Kernel("cache-dit:*", "cache-dit", "bf16", build)], {"error": failed}

    listing = {"members": [b.value for b in _AttnBackend],
               "registered": sorted(b.value for b in _AttnBackendRegistry._backends)}

    def make(name: str):
        def build(ctx: Context):
            if name in NPU_ONLY:
                raise Unavailable("Ascend NPU only")
            if ctx.device.type != "cuda" and name != "native":
                raise Unavailable(f"needs CUDA (device is {ctx.device.type})")
            if name.startswith("ffpa"):  # cache-dit's _require_supported_cuda (backends/ffpa.py)
                major, minor = torch.cuda.get_device_capability(ctx.device)
                supported = major == 12 if name == "ffpa_fp4" else (major == 12 or (major == 8 and minor >= 9))
                if not supported:
                    raise Unavailable(f"cache-dit's FFPA kernels run on sm_89 / sm_120 only (fp4: sm_120); this GPU "
                                      f"is sm_{major}{minor}")
            if name in CACHE_DIT_NEEDS:
                need_module(*CACHE_DIT_NEEDS[name])
            backend = _AttnBackend(name)
            if backend not in _AttnBackendRegistry._backends:  # else it would proxy to diffusers' backend
                raise Unavailable("cache-dit did not register it: its package does not import "
                                  "(flash: flash-attn 2; _flash_3: FA3's flash_attn_interface)")
            return lambda q, k, v: _dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                                          backend=backend, cp_config=None)
        return build

    kernels = []
    for backend in _AttnBackend:
        kernel_id, precision = CACHE_DIT_IDS.get(backend.value, (backend.value, "bf16"))
        precision = sage_precision() if backend.value == "sage" else precision
        kernels.append(Kernel(f"cache-dit:{backend.value}", kernel_id, precision, make(backend.value),
                              pack_key=pack_keys.get(backend.value)))
    return kernels, listing


# ---------------------------------------------------------------------------------------------
# Packages called directly


def sage_precision() -> str:
    """sageattention 1.x is Triton only (INT8 QK, FP16 PV); 2.x picks a CUDA kernel per GPU."""
    version = package_version("sageattention")
    return "int8 QK, fp16 PV (Triton)" if version and version.startswith("1.") else "int8 QK (auto)"


def cudnn_fp8(ctx: Context):
    """cuDNN's FP8 attention through its Python frontend (PyPI nvidia-cudnn-frontend): q, k, v, the
    probabilities and, on Hopper, the output in e4m3 with one scale per tensor (the output's from
    max |v|, which bounds it); the output is scaled back to bf16."""
    need_cuda(ctx)
    need_module("cudnn", "nvidia-cudnn-frontend")
    import cudnn

    q, k, v = ctx.sample
    fp8 = torch.float8_e4m3fn
    views = [torch.empty(q.shape, dtype=fp8, device=ctx.device).transpose(1, 2) for _ in range(4)]  # q k v o
    scalars = {name: torch.ones(1, 1, 1, 1, dtype=torch.float32, device=ctx.device)
               for name in ("dq", "dk", "dv", "ds", "ss", "so", "amax_s", "amax_o")}
    graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT)
    tq, tk, tv = (graph.tensor_like(t).set_data_type(cudnn.data_type.FP8_E4M3) for t in views[:3])
    ts = {name: graph.tensor_like(scalars[name]) for name in ("dq", "dk", "dv", "ds", "ss", "so")}
    try:
        to, _, amax_s, amax_o = graph.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=ts["dq"], descale_k=ts["dk"],
                                               descale_v=ts["dv"], descale_s=ts["ds"], scale_s=ts["ss"],
                                               scale_o=ts["so"], is_inference=True, attn_scale=ctx.dim ** -0.5)
        to.set_output(True).set_dim(views[3].size()).set_stride(views[3].stride()).set_data_type(
            cudnn.data_type.FP8_E4M3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
    except Exception as error:
        raise Unavailable(f"cuDNN {cudnn.backend_version()} refuses the FP8 graph: {reason_of(error)}") from error
    workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=ctx.device)
    pack = {tq: views[0], tk: views[1], tv: views[2], to: views[3], amax_s: scalars["amax_s"],
            amax_o: scalars["amax_o"], **{ts[name]: scalars[name] for name in ts}}
    scalars["ds"].fill_(1 / 448)
    scalars["ss"].fill_(448)

    def run(q, k, v):
        amaxes = [t.abs().amax().float().clamp_min(1e-12) for t in (q, k, v)]
        for view, source, amax in zip(views[:3], (q, k, v), amaxes):
            view.copy_((source.float() * (448 / amax)).transpose(1, 2))
        for name, amax in zip(("dq", "dk", "dv"), amaxes):
            scalars[name].copy_(amax / 448)
        scalars["so"].copy_(448 / amaxes[2])
        graph.execute(pack, workspace)
        return (views[3].float() * (amaxes[2] / 448)).to(q.dtype).transpose(1, 2)
    return run


def pack_quantized(pv: str, tiles):
    def build(ctx: Context):
        need_cuda(ctx)
        from accel.model.quantized_attention import quantized_attention, unavailable_reason

        reason = unavailable_reason(ctx.device, ctx.dim)
        if reason:
            raise Unavailable(reason)
        return lambda q, k, v: quantized_attention(q, k, v, pv=pv, tiles=tiles)
    return build


def parse_tiles(text: str):
    """``BMxBNxWARPSxSTAGES``, e.g. 128x128x8x3."""
    from accel.model.quantized_attention import Tiles

    block_m, block_n, warps, stages = (int(part) for part in text.split("x"))
    return Tiles(block_m, block_n, warps, stages)


def package_kernels(flex_compiled: bool, pack_tiles: list[str]) -> list[Kernel]:
    sage_version = package_version("sageattention")

    def flash_attn_4(ctx: Context):
        need_cuda(ctx)
        need_module("flash_attn.cute", "flash-attn-4 (with nvidia-cutlass-dsl)")
        from flash_attn.cute import flash_attn_func

        return lambda q, k, v: first(flash_attn_func(q, k, v, causal=False))

    def flash_attn_4_fp8(ctx: Context):
        need_cuda(ctx)
        major, minor = torch.cuda.get_device_capability(ctx.device)
        if major != 10:
            raise Unavailable(f"flash-attn-4's FP8 forward is SM100 only (flash_attn/cute/interface.py asserts); "
                              f"this GPU is sm_{major}{minor}")
        raise Unavailable("not wired in this script (needs per-head descales)")

    def sageattention(ctx: Context):
        need_cuda(ctx)
        need_module("sageattention", "sageattention")
        from sageattention import sageattn

        # sageattn's smooth_k subtracts k's mean from k in place: the callers give each kernel its own copies
        return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

    def torchao_fp8(hadamard: str):
        def build(ctx: Context):
            need_cuda(ctx)
            major, minor = torch.cuda.get_device_capability(ctx.device)
            if major != 9:
                raise Unavailable(f"torchao's FP8 attention (FP8_FA3) needs Hopper (sm_9x); this GPU is "
                                  f"sm_{major}{minor}")
            need_module("torchao", "torchao")
            need_module("flash_attn_interface", "FA3 (flash-attention's hopper/ build, not on PyPI): torchao's "
                        "fp8_fa3_sdpa runs on FA3's FP8 kernels")
            from torch.nn import attention
            from torchao.prototype.attention.fp8_fa3 import fp8_fa3_sdpa

            attention.activate_flash_attention_impl("FA3")
            ctx.stack.callback(attention.restore_flash_attention_impl)
            return bhsd(lambda q, k, v: fp8_fa3_sdpa(q, k, v, hadamard=hadamard))
        return build

    compiled = {}

    def flex(ctx: Context):
        need_cuda(ctx)
        from torch.nn.attention.flex_attention import flex_attention

        if "fn" not in compiled:
            compiled["fn"] = torch.compile(flex_attention, dynamic=False)
        return bhsd(compiled["fn"])

    kernels = [
        Kernel("flash_attn.cute (FA4)", "fa4", "bf16", flash_attn_4),
        Kernel("flash_attn.cute (FA4) fp8", "fa4-fp8", "fp8", flash_attn_4_fp8),
        Kernel(f"sageattention.sageattn {sage_version or ''}".strip(), "sageattn", sage_precision(), sageattention),
        Kernel("torchao fp8_fa3_sdpa", "fp8-fa3", "fp8 e4m3 (per head)", torchao_fp8("NONE")),
        Kernel("torchao fp8_fa3_sdpa hadamard", "fp8-fa3-hadamard", "fp8 e4m3 (per head)", torchao_fp8("QKV")),
    ]
    if flex_compiled:
        kernels.append(Kernel("torch.compile(flex_attention)", "flex-compiled", "bf16", flex))
    kernels.append(Kernel("cudnn-frontend sdpa_fp8", "cudnn-fp8", "fp8 e4m3 q, k, v, p, o (per tensor)", cudnn_fp8))
    from accel.model.quantized_attention import DEFAULT_TILES

    for text in pack_tiles:
        tiles = parse_tiles(text)
        for key, pv, precision in (("int8_fp8", "fp8", "int8 QK, fp8 PV (Triton)"),
                                   ("int8", "16bit", "int8 QK, bf16 PV (Triton)")):
            default = tiles == DEFAULT_TILES[pv]  # what the pack's attention_backend key runs
            kernels.append(Kernel(f"pack:{key}" + ("" if default else f" [{text}]"), f"pack-{key}-{text}", precision,
                                  pack_quantized(pv, tiles), pack_key=key if default else None))
    return kernels


# ---------------------------------------------------------------------------------------------
# Inputs, reference, timing


def make_inputs(kind: str, tokens: int, heads: int, dim: int, device: torch.device, seed: int, scale: float,
                gain: float) -> tuple:
    generator = torch.Generator(device=device).manual_seed(seed + 7919 * KINDS.index(kind))
    shape = (1, tokens, heads, dim)

    def randn(*size):
        return torch.randn(*size, generator=generator, device=device, dtype=torch.float32)

    def plain():
        return randn(*shape).mul_(scale).to(torch.bfloat16)

    if kind == "randn":
        return plain(), plain(), plain()
    channels = heads * dim

    def normed(offset: float):  # Wan's norm_q / norm_k: RMSNorm over all heads' channels, learned weight
        spread, mean = randn(channels).mul_(0.5).exp_(), randn(channels).mul_(offset)
        weight = randn(channels).mul_(0.25).exp_().mul_(gain)
        x = randn(1, tokens, channels).mul_(spread).add_(mean)
        x.mul_(torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(1e-6))).mul_(weight)
        return x.to(torch.bfloat16).view(shape)

    return normed(0.3), normed(1.0), plain()


def float64_slice(q, k, v) -> tuple[torch.Tensor, float]:
    """softmax(q k^T / sqrt(d)) v in float64 on the first heads and queries, and the logits' std."""
    heads, queries = min(SLICE_HEADS, q.shape[2]), min(SLICE_QUERIES, q.shape[1])
    qs = q[:, :queries, :heads].double().transpose(1, 2)
    ks, vs = (t[:, :, :heads].double().transpose(1, 2) for t in (k, v))
    logits = qs @ ks.transpose(-1, -2) / math.sqrt(q.shape[-1])
    std = float(logits.std())
    out = (logits.softmax(-1) @ vs).transpose(1, 2)
    return out, std


def errors(out: torch.Tensor, reference: torch.Tensor | None, exact: torch.Tensor) -> dict:
    row = {}
    if reference is not None:
        diff = out.float() - reference.float()
        row["rel_l2"] = float(diff.norm() / reference.float().norm())
        row["max_abs"] = float(diff.abs().max())
        del diff
    part = out[:, :exact.shape[1], :exact.shape[2]].double()
    row["rel_l2_fp64"] = float((part - exact).norm() / exact.norm())
    row["finite"] = bool(torch.isfinite(out).all())
    return row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, args, device: torch.device, warmup: int, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of fn(*args) (CUDA events on a GPU) and the number of timed calls. The
    warm-up calls are timed on the wall clock to fit the repeats into ``budget_s`` (at least 3)."""
    estimates = []
    for index in range(max(2, warmup)):
        began = time.perf_counter()
        fn(*args)
        sync(device)
        estimates.append(time.perf_counter() - began)
        if index == 0 and estimates[0] > budget_s:  # a slow kernel: one compile call is enough warm-up
            break
    per_call = min(estimates)
    count = max(3, min(repeats, int(budget_s / max(per_call, 1e-6))))
    if device.type == "cuda":
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, end in pairs:
            start.record()
            fn(*args)
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in pairs]
    else:
        times = []
        for _ in range(count):
            began = time.perf_counter()
            fn(*args)
            times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times), count


def tflops(tokens: int, heads: int, dim: int, ms: float) -> float:
    return 4 * tokens ** 2 * heads * dim / (ms / 1000) / 1e12


def copies(tensors) -> tuple:
    return tuple(t.clone() for t in tensors)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The measurements


def measure_size(kernels: list[Kernel], tokens: int, args, device: torch.device, quiet: set) -> tuple[list, dict]:
    inputs = {kind: make_inputs(kind, tokens, args.heads, args.dim, device, args.seed, args.scale, args.gain)
              for kind in KINDS}
    exact, logit_std = {}, {}
    for kind in KINDS:
        exact[kind], logit_std[kind] = float64_slice(*inputs[kind])
    reference: dict | None = None
    reference_info = {"logit_std": logit_std}
    rows = []
    for kernel in kernels:
        row = {"kernel": kernel.name, "kernel_id": kernel.kernel_id, "precision": kernel.precision,
               "pack_key": kernel.pack_key, "tokens": tokens, "heads": args.heads, "dim": args.dim}
        with contextlib.ExitStack() as stack:
            ctx = Context(tokens, args.heads, args.dim, device, inputs["randn"], stack)
            try:
                fn = kernel.build(ctx)
            except Exception as error:
                row.update(status="unavailable", reason=reason_of(error))
                rows.append(row)
                if kernel.name not in quiet:
                    log(f"[{tokens}] {kernel.name}: unavailable: {row['reason'][:160]}")
                    quiet.add(kernel.name)
                continue
            try:
                outs = {}
                for kind in KINDS:
                    out = first(fn(*copies(inputs[kind])))
                    if tuple(out.shape) != tuple(inputs[kind][0].shape):
                        raise RuntimeError(f"output shape {tuple(out.shape)}, expected {tuple(inputs[kind][0].shape)}")
                    outs[kind] = out
                row["errors"] = {kind: errors(outs[kind], None if reference is None else reference[kind], exact[kind])
                                 for kind in KINDS}
                if reference is None:  # the first kernel that runs (SDPA flash) is the reference
                    reference = outs
                    reference_info["kernel"] = kernel.name
                    reference_info["rel_l2_fp64"] = {kind: row["errors"][kind]["rel_l2_fp64"] for kind in KINDS}
                    for kind in KINDS:
                        row["errors"][kind].update(rel_l2=0.0, max_abs=0.0)
                del outs
                timing_inputs = copies(inputs["randn"])
                ms, count = timed(fn, timing_inputs, device, args.warmup, args.repeats, args.budget_s)
                del timing_inputs
                row.update(status="ok", ms=ms, repeats=count, tflops=tflops(tokens, args.heads, args.dim, ms))
                e = row["errors"]
                log(f"[{tokens}] {kernel.name}: {ms:.3f} ms, {row['tflops']:.1f} TFLOP/s, rel L2 "
                    f"{e['randn'].get('rel_l2', 0):.2e} / {e['rmsnorm'].get('rel_l2', 0):.2e}, fp64 "
                    f"{e['randn']['rel_l2_fp64']:.2e} / {e['rmsnorm']['rel_l2_fp64']:.2e}")
            except Exception as error:
                row.update(status="failed", reason=reason_of(error))
                row.pop("errors", None)
                log(f"[{tokens}] {kernel.name}: failed: {row['reason'][:200]}")
            finally:
                free(device)
        rows.append(row)
    for row in rows:  # exactness against the reference's own error at this size
        if row.get("status") == "ok" and "rel_l2_fp64" in reference_info:
            row["exact"] = all(row["errors"][kind]["finite"] and row["errors"][kind]["rel_l2_fp64"] <= max(
                EXACT_FACTOR * reference_info["rel_l2_fp64"][kind], EXACT_FLOOR) for kind in KINDS)
    del inputs, reference
    free(device)
    return rows, reference_info


def measure_ulysses(kernels: list[Kernel], tokens: int, degree: int, args, device: torch.device) -> dict:
    """Each kernel on one rank's heads: after Ulysses' all-to-all a rank holds the full sequence and
    heads / degree heads, contiguous [B, S, H/P, D] (accel/parallel/ulysses/head_major.py)."""
    heads = args.heads // degree
    result = {"degree": degree, "tokens": tokens, "heads_per_rank": heads, "rows": []}
    if heads < 1:
        result["skipped"] = f"{args.heads} heads cannot be split over {degree} ranks"
        return result
    chunk = heads // 2 if heads % 2 == 0 and heads >= 2 else None
    sizes = {heads: make_inputs("randn", tokens, heads, args.dim, device, args.seed + 1, args.scale, args.gain)}
    if chunk:
        sizes[chunk] = tuple(t[:, :, :chunk].contiguous() for t in sizes[heads])
    for kernel in kernels:
        row = {"kernel": kernel.name, "kernel_id": kernel.kernel_id, "precision": kernel.precision,
               "pack_key": kernel.pack_key}
        for count, key in ((heads, "ms"), (chunk, "chunk_ms")):
            if not count:
                continue
            with contextlib.ExitStack() as stack:
                ctx = Context(tokens, count, args.dim, device, sizes[count], stack)
                try:
                    fn = kernel.build(ctx)
                    ms, repeats = timed(fn, copies(sizes[count]), device, args.warmup, args.repeats, args.budget_s)
                    row[key] = ms
                    if key == "ms":
                        row["tflops"] = tflops(tokens, heads, args.dim, ms)
                        row["repeats"] = repeats
                except Exception as error:
                    row[f"{key}_error"] = reason_of(error)
                finally:
                    free(device)
        if chunk and "chunk_ms" in row:
            row["two_chunks_ms"] = 2 * row.pop("chunk_ms")
        log(f"[ulysses {degree}, {tokens}] {kernel.name}: {row.get('ms', float('nan')):.3f} ms per rank"
            + (f", 2 chunks {row['two_chunks_ms']:.3f} ms" if "two_chunks_ms" in row else "")
            + (f" ({row['ms_error'][:120]})" if "ms_error" in row else ""))
        result["rows"].append(row)
    del sizes
    free(device)
    return result


# ---------------------------------------------------------------------------------------------
# Picks and report


def by_kernel(rows: list[dict]) -> dict[str, dict[int, dict]]:
    table: dict[str, dict[int, dict]] = {}
    for row in rows:
        table.setdefault(row["kernel"], {})[row["tokens"]] = row
    return table


def worst(row_set: dict[int, dict], key: str) -> float:
    return max(row["errors"][kind].get(key, 0.0) for row in row_set.values() for kind in KINDS)


def picks(rows: list[dict], sizes: list[int], pack_routes: dict[str, str]) -> dict:
    complete = {name: runs for name, runs in by_kernel(rows).items()
                if all(runs.get(t, {}).get("status") == "ok" for t in sizes)}

    def summary(name: str, runs: dict[int, dict]) -> dict:
        any_row = next(iter(runs.values()))
        return {"kernel": name, "kernel_id": any_row["kernel_id"], "precision": any_row["precision"],
                "pack_key": any_row["pack_key"] or pack_routes.get(any_row["kernel_id"]),
                "ms": {t: runs[t]["ms"] for t in sizes}, "tflops": {t: runs[t]["tflops"] for t in sizes},
                "total_ms": sum(runs[t]["ms"] for t in sizes),
                "rel_l2": {kind: max(runs[t]["errors"][kind]["rel_l2"] for t in sizes) for kind in KINDS},
                "max_abs": worst(runs, "max_abs"),
                "rel_l2_fp64": {kind: max(runs[t]["errors"][kind]["rel_l2_fp64"] for t in sizes) for kind in KINDS}}

    exact = [summary(n, r) for n, r in complete.items() if all(row.get("exact") for row in r.values())]
    totals = {n: sum(r[t]["ms"] for t in sizes) for n, r in complete.items()}
    low = [summary(n, r) for n, r in complete.items() if next(iter(r.values()))["precision"] != "bf16"
           and not all(row.get("exact") for row in r.values())
           and all(row["errors"][kind]["finite"] for row in r.values() for kind in KINDS)
           and worst(r, "rel_l2") <= LOWPREC_MAX_ERROR]
    unexpected = sorted(n for n, r in complete.items() if next(iter(r.values()))["precision"] == "bf16"
                        and not all(row.get("exact") for row in r.values()))
    result: dict = {"sizes": sizes, "exact": None, "low_precision": None, "bf16_kernels_not_exact": unexpected,
                    "exact_candidates": sorted(s["kernel"] for s in exact),
                    "low_precision_candidates": sorted(s["kernel"] for s in low)}
    for group in (exact, low):
        for s in group:  # the other dispatches of the same kernel, with their summed times
            s["same_kernel"] = {n: totals[n] for n, r in complete.items()
                                if n != s["kernel"] and next(iter(r.values()))["kernel_id"] == s["kernel_id"]}
    if exact:
        result["exact"] = min(exact, key=lambda s: s["total_ms"])
        result["exact"]["fastest_at"] = {t: min(exact, key=lambda s: s["ms"][t])["kernel"] for t in sizes}
    if low:
        best = min(low, key=lambda s: s["total_ms"])
        if result["exact"]:
            base = result["exact"]
            best["speedup_vs_exact"] = {t: base["ms"][t] / best["ms"][t] for t in sizes}
        result["low_precision"] = best
    return result


def rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def fmt(value, digits: str = ".2f") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return format(value, digits)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(payload: dict) -> str:
    cfg = payload["config"]
    out = [f"# Wan2.2-A14B self-attention kernels, {payload['date']}, {payload['device']}", "",
           (f"{cfg['heads']} heads x {cfg['dim']}, bf16, batch 1, non-causal; median of up to {cfg['repeats']} calls "
           f"after warm-up ({'CUDA events' if payload['device'] != 'cpu' else 'wall clock'}); "
           f"TFLOP/s = 4 S^2 heads dim / t. Errors against `{payload['reference_kernel']}` "
           f"(bf16) on the whole output: relative L2 for `randn` / `rmsnorm` inputs and the larger max abs; `fp64`: "
           f"relative L2 against float64 attention on {SLICE_HEADS} heads x {SLICE_QUERIES} queries, randn / rmsnorm. "
           f"Exact: fp64 error within {EXACT_FACTOR:g}x of the reference's own (or {EXACT_FLOOR:g}). `pack`: the "
           f"pack's "
           f"attention_backend key for that dispatch. Versions: {json.dumps(payload['versions'])}. "
           f"Wall time {payload['wall_s']:.0f} s."), ""]
    rows = payload["results"]
    for tokens in cfg["tokens"]:
        info = payload["reference"].get(str(tokens)) or payload["reference"].get(tokens) or {}
        ok = sorted((r for r in rows if r["tokens"] == tokens and r["status"] == "ok"), key=lambda r: r["ms"])
        std = info.get("logit_std", {})
        ref_err = info.get("rel_l2_fp64", {})
        out += [f"## {tokens:,} tokens", "",
                (f"Logit std randn {fmt(std.get('randn'))} / rmsnorm {fmt(std.get('rmsnorm'))}; reference's own fp64 "
                 f"error {fmt(ref_err.get('randn'), '.2e')} / {fmt(ref_err.get('rmsnorm'), '.2e')}."), ""]
        out.append(table(["kernel", "precision", "pack", "ms", "TFLOP/s", "rel L2", "max abs", "fp64", "exact"], [
            [r["kernel"], r["precision"], r["pack_key"] or "", fmt(r["ms"], ".3f"), fmt(r["tflops"], ".1f"),
             f"{fmt(r['errors']['randn']['rel_l2'], '.2e')} / {fmt(r['errors']['rmsnorm']['rel_l2'], '.2e')}",
             fmt(max(r["errors"][k]["max_abs"] for k in KINDS), ".2e"),
             f"{fmt(r['errors']['randn']['rel_l2_fp64'], '.2e')} / {fmt(r['errors']['rmsnorm']['rel_l2_fp64'], '.2e')}",
             "yes" if r.get("exact") else "no"] for r in ok]))
        out.append("")
    uly = payload.get("ulysses")
    if uly and uly.get("rows"):
        full = {r["kernel"]: r for r in rows if r["tokens"] == uly["tokens"] and r["status"] == "ok"}
        out += [(f"## Ulysses {uly['degree']} at {uly['tokens']:,} tokens: one rank's {uly['heads_per_rank']} "
                 "heads, the full sequence"), "",
                f"`per rank / all`: the rank's call over the {cfg['heads']}-head call (1/{uly['degree']} = ideal)"
                + (f"; `2 chunks`: two calls of {uly['heads_per_rank'] // 2} heads (the pack's head_chunks=2)."
                   if uly["heads_per_rank"] % 2 == 0 else "."), ""]
        uly_rows = sorted((r for r in uly["rows"] if "ms" in r), key=lambda r: r["ms"])
        out.append(table(["kernel", "pack", f"{cfg['heads']} heads ms", "per rank ms", "per rank / all", "TFLOP/s",
                          "2 chunks ms"], [
            [r["kernel"], r["pack_key"] or "", fmt(full.get(r["kernel"], {}).get("ms"), ".3f"), fmt(r["ms"], ".3f"),
             fmt(r["ms"] / full[r["kernel"]]["ms"], ".3f") if r["kernel"] in full else "", fmt(r["tflops"], ".1f"),
             fmt(r.get("two_chunks_ms"), ".3f")] for r in uly_rows]))
        out.append("")
    elif uly and uly.get("skipped"):
        out += [f"Ulysses: {uly['skipped']}", ""]
    sizes_of: dict[tuple[str, str], list[int]] = {}  # (kernel, why) -> sizes
    for r in rows:
        if r["status"] != "ok":
            sizes_of.setdefault((r["kernel"], f"{r['status']}: {r['reason']}"), []).append(r["tokens"])
    grouped: dict[tuple[str, str], list[str]] = {}  # (why, sizes) -> kernels
    for (name, why), sizes in sizes_of.items():
        where = "all" if sorted(sizes) == sorted(cfg["tokens"]) else ", ".join(str(s) for s in sizes)
        grouped.setdefault((why, where), []).append(name)
    if grouped:
        out += ["## Not run", ""]
        out += [table(["kernels", "tokens", "why"], [[", ".join(names), where, why[:160]]
                                                     for (why, where), names in grouped.items()]), ""]
    pick = payload["pick"]
    out += ["## Pick", ""]
    sizes = pick["sizes"]

    def describe(s: dict) -> str:
        times = ", ".join(f"{t:,}: {s['ms'][t]:.2f} ms ({rate(s['tflops'][t])} TFLOP/s)" for t in sizes)
        pack = f"pack key `{s['pack_key']}`" if s["pack_key"] else "no pack key runs it yet"
        same = "; ".join(f"{n} {ms:.2f} ms" for n, ms in s.get("same_kernel", {}).items())
        return (f"**{s['kernel']}** ({s['precision']}; {pack}): {times}; rel L2 vs reference "
                f"{s['rel_l2']['randn']:.2e} (randn) / {s['rel_l2']['rmsnorm']:.2e} (rmsnorm), max abs "
                f"{s['max_abs']:.2e}, vs fp64 {s['rel_l2_fp64']['randn']:.2e} / {s['rel_l2_fp64']['rmsnorm']:.2e}"
                + (f"; the same kernel through other dispatchers, summed: {same}" if same else ""))

    if pick["exact"]:
        fastest = ", ".join(f"{t:,}: {k}" for t, k in pick["exact"]["fastest_at"].items())
        out.append(f"- Fastest exact kernel (summed over the sizes): {describe(pick['exact'])}. "
                   f"Fastest per size: {fastest}.")
    else:
        out.append("- No exact kernel ran at every size.")
    if pick["low_precision"]:
        low = pick["low_precision"]
        speedups = low.get("speedup_vs_exact", {})
        gain = ", ".join(f"{t:,}: {x:.2f}x" for t, x in speedups.items())
        slower = (" (slower than the exact pick: no reason to offer it)"
                  if speedups and max(speedups.values()) < 1 else "")
        out.append(f"- Fastest low-precision kernel: {describe(low)}"
                   + (f"; speed-up over the exact pick: {gain}{slower}." if gain else "."))
    else:
        out.append(f"- No low-precision kernel ran at every size with relative L2 <= {LOWPREC_MAX_ERROR:g}.")
    if pick["bf16_kernels_not_exact"]:
        out.append(f"- bf16 kernels outside the exact bound: {', '.join(pick['bf16_kernels_not_exact'])}.")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(WAN_TOKENS))
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per kernel (fewer where one call is slow)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per kernel and size, at most about")
    parser.add_argument("--ulysses", type=int, default=2, help="Ulysses degree of the per-rank section (0: skip)")
    parser.add_argument("--ulysses-tokens", type=int, default=33600,
                        help="size of the per-rank section (the nearest of --tokens when it is not among them)")
    parser.add_argument("--kernels", nargs="*", default=None, help="only kernels whose name contains one of these")
    parser.add_argument("--flex-compiled", action="store_true", help="also time torch.compile(flex_attention)")
    parser.add_argument("--pack-tiles", nargs="+", default=["64x128x4x3", "128x64x4x3"],
                        help="tiles of the pack's quantized kernels, BMxBNxWARPSxSTAGES (accel/model/"
                             "quantized_attention.py DEFAULT_TILES: the pack's)")
    parser.add_argument("--scale", type=float, default=1.0, help="std of the randn inputs")
    parser.add_argument("--gain", type=float, default=1.5, help="the rmsnorm inputs' norm weight scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.environ.get("OUT") or "./out")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    began = time.perf_counter()
    try:
        from accel.job.settings import ATTENTION_BACKENDS

        pack_keys = {value[0] if isinstance(value, (tuple, list)) else value: key
                     for key, value in ATTENTION_BACKENDS.items()}
    except Exception as error:  # the table still stands without the pack's names
        log(f"accel.job.settings.ATTENTION_BACKENDS: {reason_of(error)}")
        pack_keys = {}
    diffusers_rows, diffusers_listing = diffusers_kernels()
    cache_dit_rows, cache_dit_listing = cache_dit_kernels(pack_keys)
    kernels = sdpa_kernels() + diffusers_rows + cache_dit_rows + package_kernels(args.flex_compiled, args.pack_tiles)
    if args.kernels:
        kernels = [kernels[0]] + [k for k in kernels[1:] if any(word in k.name for word in args.kernels)]
    pack_routes = {k.kernel_id: k.pack_key for k in cache_dit_rows if k.pack_key}
    log(f"{len(kernels)} kernels, sizes {args.tokens}, device {device_name() if device.type == 'cuda' else device}")

    rows, reference = [], {}
    quiet: set = set()
    reference_kernel = kernels[0].name
    with torch.inference_mode():
        for tokens in args.tokens:
            size_rows, info = measure_size(kernels, tokens, args, device, quiet)
            rows += size_rows
            reference[tokens] = info
            reference_kernel = info.get("kernel", reference_kernel)
        ulysses = None
        if args.ulysses > 1:
            u_tokens = min(args.tokens, key=lambda t: abs(t - args.ulysses_tokens))
            ran = {r["kernel"] for r in rows if r["tokens"] == u_tokens and r["status"] == "ok"}
            ulysses = measure_ulysses([k for k in kernels if k.name in ran], u_tokens, args.ulysses, args, device)
    sizes = list(args.tokens)
    payload = {
        "date": datetime.date.today().isoformat(), "device": device_name() if device.type == "cuda" else "cpu",
        "versions": versions(),
        "config": {"tokens": sizes, "heads": args.heads, "dim": args.dim, "dtype": "bf16", "batch": 1, "causal": False,
                   "repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget_s, "seed": args.seed,
                   "scale": args.scale, "gain": args.gain, "kinds": list(KINDS), "exact_factor": EXACT_FACTOR,
                   "exact_floor": EXACT_FLOOR, "lowprec_max_error": LOWPREC_MAX_ERROR,
                   "fp64_slice": [SLICE_HEADS, SLICE_QUERIES], "layout": "[B, S, H, D]"},
        "reference_kernel": reference_kernel, "reference": reference,
        "diffusers_backends": diffusers_listing, "cache_dit_backends": cache_dit_listing, "pack_backends": pack_keys,
        "results": rows, "ulysses": ulysses, "pick": picks(rows, sizes, pack_routes),
        "wall_s": time.perf_counter() - began,
    }
    text = markdown(payload)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
    path = folder / f"{payload['date']}-{gpu}-attention"
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    path.with_suffix(".md").write_text(text)
    print(text)
    log(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')} in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
