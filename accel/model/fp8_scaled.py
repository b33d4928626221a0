"""ComfyUI's fp8_scaled checkpoints: detect them, stream them tensor by tensor, use them as stored.

The format (what ComfyUI's loader accepts; read from ComfyUI and comfy-kitchen, no code taken):

- Legacy ("scaled_fp8"): a top-level ``scaled_fp8`` tensor marks the file; its dtype is the fp8
  storage dtype (F32 means e4m3fn) and a 2-element marker asks for dequantized (full-precision)
  matmuls. Linear weights are stored float8 with a scalar ``<layer>.scale_weight`` (float32,
  sometimes bf16) and optionally ``<layer>.scale_input``.
- Current ComfyUI: the same tensors spelled ``<layer>.weight_scale`` / ``<layer>.input_scale``,
  with a per-layer ``<layer>.comfy_quant`` tensor (uint8 bytes of a JSON object such as
  ``{"format": "float8_e4m3fn", "full_precision_matrix_mult": true}``) or the same objects in the
  safetensors metadata entry ``_quantization_metadata`` = ``{"layers": {layer: {...}}}``. The
  formats ComfyUI knows besides per-tensor float8 (nvfp4, mxfp8, int8_tensorwise, convrot_w4a4,
  asym_w4a8_int8, awq_w4a16, ...) are refused here, by name.

Keys may carry the prefix ``model.diffusion_model.``. The weight is ``W = W_fp8 * scale``.

Dequantized ("bf16" mode) weights are ``(W_fp8.float() * scale_f32).to(dtype)``: fp32 product,
one rounding, which is what comfy-kitchen's CUDA dequantize kernel (the one ComfyUI uses on
NVIDIA GPUs) computes. ComfyUI's eager fallback (CPU, or torch older than cu130) and its legacy
scaled_fp8 ops instead multiply in the compute dtype with the scale rounded to it first
(``W_fp8.to(bf16) * scale.to(bf16)``), which can differ by one bf16 ulp.

As-stored ("fp8" mode) weights become torchao ``Float8Tensor`` weights that dequantize to exactly
``W_fp8.float() * scale`` and run ``torch._scaled_mm`` with per-tensor dynamic float8 activations,
as ``Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())`` sets up, without
re-quantizing anything. float8_e5m2 files load in "bf16" mode only (see ``iter_state``).

Host-safe at import: stdlib, torch and safetensors only; torchao is imported where it is used.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open

from ..errors import UserInputError

log = logging.getLogger(__name__)

PREFIX = "model.diffusion_model."
MARKER = "scaled_fp8"
FLOAT8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8_STORAGE = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
SCALE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
COMFY_QUANT_SUFFIX = ".comfy_quant"
# Companion tensors of ComfyUI's other quantization formats (nvfp4, AWQ, W4A8): never float8.
FOREIGN_SUFFIXES = (".weight_scale_2", ".pre_quant_scale", ".weight_s_rel", ".weight_s_channel",
                    ".weight_codebook", ".weight_zeros")
# The block Linear weights ComfyUI's Wan fp8_scaled files store in float8 (original key layout).
BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.((self_attn|cross_attn)\.(q|k|v|o)|ffn\.(0|2))\.weight$")
# Activations whose largest magnitude is below this are quantized with scale LB/448 instead of
# amax/448: an all-zero activation would otherwise give 0/0 = NaN in torchao's quantizer.
ACTIVATION_SCALE_LB = 1e-12


@dataclass(frozen=True)
class Fp8Layer:
    """One float8 Linear (or other) weight of the file. Keys are the file's own (with prefix)."""

    name: str  # layer name in the original layout, prefix stripped: "blocks.0.self_attn.q"
    weight_key: str
    scale_key: str
    input_scale_key: str | None
    storage_dtype: torch.dtype
    shape: tuple[int, ...]
    scale_shape: tuple[int, ...]
    format: str  # "float8_e4m3fn" | "float8_e5m2"
    full_precision_mm: bool  # the file asks for dequantized matmuls on this layer


@dataclass(frozen=True)
class Fp8ScaledInfo:
    path: Path
    prefix: str  # "" or "model.diffusion_model."
    layers: dict[str, Fp8Layer]  # by Fp8Layer.name
    storage_dtypes: frozenset[torch.dtype]
    marker_key: str | None  # the scaled_fp8 tensor's key in the file
    marker_dtype: torch.dtype | None  # storage dtype the marker declares
    spellings: frozenset[str]  # {"scale_weight"} / {"weight_scale"} / both
    config_source: str  # "comfy_quant" | "_quantization_metadata" | "scaled_fp8" | "dtype"
    consumed_keys: frozenset[str] = field(repr=False)  # file keys never yielded: scales, markers

    @property
    def weight_keys(self) -> dict[str, Fp8Layer]:
        """Original-layout weight key (prefix stripped) -> layer."""
        return {layer.name + ".weight": layer for layer in self.layers.values()}

    @property
    def full_precision_mm(self) -> bool:
        return any(layer.full_precision_mm for layer in self.layers.values())

    def summary(self) -> str:
        dtypes = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.storage_dtypes))
        marker = f"marker {self.marker_key} ({self.marker_dtype})" if self.marker_key else "no scaled_fp8 marker"
        spell = "/".join(sorted(self.spellings))
        fpmm = "; the file asks for full-precision matmuls" if self.full_precision_mm else ""
        return (f"{self.path.name}: fp8_scaled, {len(self.layers)} {dtypes} layers with per-tensor "
                f"scales ({spell}), {marker}, format from {self.config_source}{fpmm}")


class Fp8Weight(NamedTuple):
    """A float8 weight as stored plus its float32 0-d scale: ``weight = qdata.float() * scale``."""

    qdata: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return dequantize(self.qdata, self.scale, dtype)


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(qdata.float() * scale.float()).to(dtype)``: fp32 product, rounded once to ``dtype``."""
    return (qdata.float() * scale.to(device=qdata.device, dtype=torch.float32)).to(dtype)


# ----------------------------------------------------------------------------------------------
# detection


def detect(path: Path | str, header: Mapping[str, Any]) -> Fp8ScaledInfo | None:
    """Recognise an fp8_scaled file from its safetensors header (as ``read_safetensors_header``
    returns it). ``None`` for a file with no float8 tensor, scale, marker or quantization config.
    Raises ``UserInputError`` naming the file for anything that cannot load as per-tensor float8.
    The file itself is opened only to read ``.comfy_quant`` tensors (a few bytes each)."""
    path = Path(path)
    metadata = header.get("__metadata__") or {}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    prefix = PREFIX if any(k.startswith(PREFIX) for k in entries) else ""

    def strip(key: str) -> str:
        return key.removeprefix(PREFIX)

    marker_key = next((k for k in (PREFIX + MARKER, MARKER) if k in entries), None)
    fp8_keys = [k for k, v in entries.items() if v.get("dtype") in FP8_STORAGE and k != marker_key]
    scale_keys = [k for k in entries if k.endswith(WEIGHT_SCALE_SUFFIXES)]
    input_keys = [k for k in entries if k.endswith(INPUT_SCALE_SUFFIXES)]
    quant_keys = [k for k in entries if k.endswith(COMFY_QUANT_SUFFIX)]
    has_metadata = "_quantization_metadata" in metadata
    if not (marker_key or fp8_keys or scale_keys or quant_keys or has_metadata):
        return None

    foreign = sorted(k for k in entries if k.endswith(FOREIGN_SUFFIXES))
    configs, source = _layer_configs(path, metadata, quant_keys, entries, strip)
    for name, conf in sorted(configs.items()):
        fmt = conf.get("format")
        if fmt not in FLOAT8_FORMATS:
            raise UserInputError(
                f"{path}: layer {name} is quantized as {fmt!r}; only ComfyUI's per-tensor float8 "
                f"formats ({', '.join(FLOAT8_FORMATS)}) are supported. Use the fp8_scaled, fp16 or "
                "bf16 file of this model"
            )
    if foreign:
        raise UserInputError(
            f"{path}: holds tensors of a non-float8 quantization format ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); only per-tensor float8 (fp8_scaled) is supported"
        )

    marker_dtype = None
    full_precision_file = False
    if marker_key:
        marker = entries[marker_key]
        marker_dtype = FP8_STORAGE.get(marker["dtype"], torch.float8_e4m3fn if marker["dtype"] == "F32" else None)
        if marker_dtype is None:
            raise UserInputError(f"{path}: the scaled_fp8 marker has dtype {marker['dtype']}, not a float8 type")
        full_precision_file = math.prod(marker["shape"]) == 2

    # Pair every weight with its scales.
    scale_of: dict[str, tuple[str, str]] = {}
    for key in scale_keys:
        suffix = next(s for s in WEIGHT_SCALE_SUFFIXES if key.endswith(s))
        layer = strip(key)[: -len(suffix)]
        if layer in scale_of:
            raise UserInputError(
                f"{path}: layer {layer} has two weight scales ({scale_of[layer][0]} and {key}); the file is damaged"
            )
        scale_of[layer] = (key, suffix.lstrip("."))
    input_of: dict[str, str] = {}
    for key in input_keys:
        suffix = next(s for s in INPUT_SCALE_SUFFIXES if key.endswith(s))
        input_of[strip(key)[: -len(suffix)]] = key

    weights = {strip(k)[: -len(".weight")]: k for k in entries if k.endswith(".weight")}
    bad_fp8 = sorted(strip(k) for k in fp8_keys if not k.endswith(".weight"))
    if bad_fp8:
        raise UserInputError(f"{path}: float8 tensors that are not weights ({', '.join(bad_fp8[:3])}); "
                             "not a ComfyUI fp8_scaled file")
    unscaled = sorted(strip(k) for k in fp8_keys if strip(k)[: -len(".weight")] not in scale_of)
    if unscaled:
        raise UserInputError(
            f"{path}: {len(unscaled)} float8 weights have no scale (.scale_weight or .weight_scale), "
            f"e.g. {unscaled[0]}: a plain fp8 cast or a damaged fp8_scaled file is not supported; "
            "use the fp8_scaled, fp16 or bf16 file"
        )
    for layer in sorted(set(scale_of) | set(input_of) | set(configs)):
        if layer not in weights:
            what = scale_of.get(layer, (input_of.get(layer) or f"{layer}{COMFY_QUANT_SUFFIX}",))[0]
            raise UserInputError(f"{path}: {what} has no weight {layer}.weight; the file is damaged")

    layers: dict[str, Fp8Layer] = {}
    for name, (scale_key, _) in sorted(scale_of.items()):
        weight_key = weights[name]
        weight = entries[weight_key]
        storage = FP8_STORAGE.get(weight["dtype"])
        if storage is None:
            raise UserInputError(
                f"{path}: {strip(weight_key)} is stored as {weight['dtype']} but has a scale ({strip(scale_key)}); "
                "only float8 weights with per-tensor scales are supported"
            )
        scale = entries[scale_key]
        if scale["dtype"] not in SCALE_DTYPES:
            raise UserInputError(f"{path}: {strip(scale_key)} is stored as {scale['dtype']}, not a float scale")
        if math.prod(scale["shape"]) != 1 or len(scale["shape"]) > 2:
            raise UserInputError(
                f"{path}: {strip(scale_key)} has shape {scale['shape']}: only per-tensor (scalar) float8 scales "
                "are supported, as ComfyUI's float8 format uses; per-row or block-wise scaled files are refused"
            )
        conf = configs.get(name, {})
        fmt = conf.get("format") or next(f for f, d in FLOAT8_FORMATS.items() if d == storage)
        if FLOAT8_FORMATS[fmt] != storage:
            raise UserInputError(f"{path}: {strip(weight_key)} is stored as {weight['dtype']} but its "
                                 f"quantization config says {fmt}; the file is damaged")
        layers[name] = Fp8Layer(
            name=name, weight_key=weight_key, scale_key=scale_key, input_scale_key=input_of.get(name),
            storage_dtype=storage, shape=tuple(weight["shape"]), scale_shape=tuple(scale["shape"]), format=fmt,
            full_precision_mm=bool(conf.get("full_precision_matrix_mult", full_precision_file)),
        )
    for name in configs:
        if name not in layers:
            raise UserInputError(f"{path}: layer {name} is marked float8 but has no scale "
                                 "(.weight_scale or .scale_weight); the file is damaged")
    if not layers:
        raise UserInputError(f"{path}: marked as fp8_scaled ({source}) but holds no float8 weight with a scale")
    orphan_inputs = sorted(set(input_of) - set(layers))
    if orphan_inputs:
        raise UserInputError(
            f"{path}: input scale for {orphan_inputs[0]}, whose weight is not float8; the file is damaged")

    storage_dtypes = frozenset(layer.storage_dtype for layer in layers.values())
    if marker_dtype is not None and storage_dtypes != {marker_dtype}:
        log.warning("%s: the scaled_fp8 marker says %s but the weights are stored as %s; using the weights' dtype",
                    path, marker_dtype, sorted(map(str, storage_dtypes)))
    consumed = {marker_key} if marker_key else set()
    consumed.update(scale_keys, input_keys, quant_keys)
    return Fp8ScaledInfo(
        path=path, prefix=prefix, layers=layers, storage_dtypes=storage_dtypes, marker_key=marker_key,
        marker_dtype=marker_dtype, spellings=frozenset(s for _, s in scale_of.values()),
        config_source=source or ("scaled_fp8" if marker_key else "dtype"), consumed_keys=frozenset(consumed),
    )


def _layer_configs(path: Path, metadata: Mapping[str, str], quant_keys: list[str], entries: Mapping[str, Any],
                   strip: Callable[[str], str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per-layer quantization configs (prefix-stripped layer name -> dict), as ComfyUI reads
    them: ``.comfy_quant`` tensors, then the ``_quantization_metadata`` entry for the others."""
    configs: dict[str, dict[str, Any]] = {}
    source = None
    if quant_keys:
        source = "comfy_quant"
        raw = _read_small_tensors(path, quant_keys)
        for key in quant_keys:
            entry = entries[key]
            if entry["dtype"] not in ("U8", "I8") or len(entry["shape"]) != 1:
                raise UserInputError(f"{path}: {strip(key)} is {entry['dtype']}{entry['shape']}, not a uint8 JSON blob")
            try:
                conf = json.loads(raw[key].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise UserInputError(f"{path}: {strip(key)} is not a JSON quantization config ({error})") from error
            configs[strip(key)[: -len(COMFY_QUANT_SUFFIX)]] = _normalize_conf(path, strip(key), conf)
    if "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"])["layers"]
            assert isinstance(layers, dict)
        except (TypeError, KeyError, AssertionError, json.JSONDecodeError) as error:
            raise UserInputError(f"{path}: unreadable _quantization_metadata in the safetensors metadata "
                                 f"(expected JSON {{\"layers\": {{...}}}}): {error}") from error
        source = source or "_quantization_metadata"
        for name, conf in layers.items():
            configs.setdefault(strip(name), _normalize_conf(path, f"_quantization_metadata[{name}]", conf))
    return configs, source


def _normalize_conf(path: Path, where: str, conf: Any) -> dict[str, Any]:
    if isinstance(conf, str):  # some tools write the format name alone
        conf = {"format": conf}
    if not isinstance(conf, dict):
        raise UserInputError(f"{path}: {where} is {conf!r}, not a quantization config object")
    return conf


def _read_small_tensors(path: Path, keys: list[str]) -> dict[str, bytes]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key).view(torch.uint8).numpy().tobytes() for key in keys}
    except Exception as error:  # safetensors raises its own error types
        raise UserInputError(f"{path}: could not read the safetensors file: {error}") from error


# ----------------------------------------------------------------------------------------------
# streaming


def check_mode(path: Path | str, info: Fp8ScaledInfo | None, mode: str) -> None:
    """Whether ``iter_state`` can stream this file in ``mode``; call it early (host side) to refuse
    before any worker starts: ``iter_state`` is a generator and checks only when first advanced."""
    if mode not in ("bf16", "fp8"):
        raise ValueError(f"mode must be 'bf16' or 'fp8', got {mode!r}")
    if mode == "fp8" and info is not None and torch.float8_e5m2 in info.storage_dtypes:
        raise UserInputError(
            f"{path}: float8_e5m2 weights cannot be used as stored (the pack's fp8 matmuls take e4m3fn "
            "weights); load this file dequantized (bf16), or quantize the bf16 file with the FP8 Quantize node"
        )


def iter_state(
    path: Path | str,
    info: Fp8ScaledInfo | None,
    mode: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    keep_fp32: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, torch.Tensor | Fp8Weight]]:
    """Yield ``(original_key, value)`` one tensor at a time (``safe_open``; the host never holds
    more than one weight, its scale and its dequantized copy). Keys have the prefix stripped;
    scales, input scales, ``.comfy_quant`` and the ``scaled_fp8`` marker are consumed.

    ``mode="bf16"``: fp8 weights are dequantized on ``device``, ``(W_fp8.float() * scale).to(dtype)``
    (``dtype`` is the compute dtype, bf16 or otherwise). ``mode="fp8"``: 2-D fp8 weights come as
    ``Fp8Weight(qdata, scale)``, the stored float8 bytes unchanged and a float32 0-d scale, on
    ``device`` (others are dequantized as in "bf16"); float8_e5m2 files are refused in this mode.
    Other floating tensors are cast to ``dtype`` as the loader does before ``keep_fp32_modules``,
    except stored-fp32 tensors whose original key satisfies ``keep_fp32``. ``info=None`` streams a
    plain original-layout file the same way.

    Input scales (``scale_input``/``input_scale``) are not used: ComfyUI's dequantized path ignores
    them and the fp8 path quantizes activations dynamically. A scale of 0 (an all-zero layer) is
    kept: the weight dequantizes to zeros, nothing divides by it.
    """
    path = Path(path)
    check_mode(path, info, mode)
    device = torch.device(device)
    layers = info.weight_keys if info is not None else {}
    consumed = info.consumed_keys if info is not None else frozenset()
    try:
        handle_context = safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise UserInputError(f"{path}: could not read the safetensors file: {error}") from error
    with handle_context as handle:
        for file_key in handle.keys():
            if file_key in consumed:
                continue
            key = file_key.removeprefix(PREFIX)
            layer = layers.get(key)
            # Built in helpers, so that this frame holds no tensor while it is suspended.
            if layer is None:
                yield key, _plain(handle, path, file_key, key, dtype, device, keep_fp32, _bias_storage(info, key))
            else:
                yield key, _fp8_layer(handle, path, layer, mode, dtype, device)


def read_original(path: Path | str, info: Fp8ScaledInfo | None, key: str, dtype: torch.dtype,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """One original-layout tensor (prefix stripped) as ``iter_state`` yields it in "bf16" mode:
    an fp8 weight dequantized, anything else cast to ``dtype``; read alone from the file."""
    path, device = Path(path), torch.device(device)
    layer = (info.weight_keys if info is not None else {}).get(key)
    file_key = (info.prefix if info is not None else "") + key
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        if layer is None:
            if file_key not in handle.keys():
                file_key = PREFIX + key
            return _plain(handle, path, file_key, key, dtype, device, None, _bias_storage(info, key))
        return _fp8_layer(handle, path, layer, "bf16", dtype, device)


def _bias_storage(info: Fp8ScaledInfo | None, key: str) -> torch.dtype | None:
    """ComfyUI stores a whole fp8 Linear in the float8 dtype, its bias too (a file's fp16 bias is
    rounded to float8 on load, then computed in the compute dtype); the pack does the same, so that
    its dequantized model is the one ComfyUI computes with."""
    if info is None or not key.endswith(".bias"):
        return None
    layer = info.layers.get(key.removesuffix(".bias"))
    return None if layer is None else layer.storage_dtype


def _plain(handle: Any, path: Path, file_key: str, key: str, dtype: torch.dtype, device: torch.device,
           keep_fp32: Callable[[str], bool] | None, storage: torch.dtype | None = None) -> torch.Tensor:
    tensor = _get(handle, path, file_key, device)
    if storage is not None:
        tensor = tensor.to(storage)
    if tensor.is_floating_point() and not (keep_fp32 is not None and tensor.dtype == torch.float32 and keep_fp32(key)):
        tensor = tensor.to(dtype)
    return tensor.to(device)


def _fp8_layer(handle: Any, path: Path, layer: Fp8Layer, mode: str, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor | Fp8Weight:
    qdata = _get(handle, path, layer.weight_key, device).to(device)
    raw = _get(handle, path, layer.scale_key, device)
    scale = raw.to(torch.float32).reshape(()) if raw.is_meta else _scale(raw, path, layer).to(device)
    if mode == "fp8" and qdata.ndim == 2:
        return Fp8Weight(qdata, scale)
    return dequantize(qdata, scale, dtype)


def _get(handle: Any, path: Path, key: str, device: torch.device | None = None) -> torch.Tensor:
    """The tensor as stored; on the meta device (an empty expert, for a worker that maps rank 0's
    host copy) only its shape and dtype, from the header: nothing is read."""
    try:
        if device is not None and device.type == "meta":
            view = handle.get_slice(key)
            return torch.empty(view.get_shape(), dtype=_ST_TORCH_DTYPES[view.get_dtype()], device="meta")
        return handle.get_tensor(key)
    except Exception as error:  # safetensors raises its own error types
        raise UserInputError(f"{path}: could not read tensor {key}: {error}") from error


def _scale(raw: torch.Tensor, path: Path, layer: Fp8Layer) -> torch.Tensor:
    scale = raw.to(torch.float32).reshape(())
    value = float(scale)
    if not math.isfinite(value):
        raise UserInputError(f"{path}: the scale of {layer.name} is {value}; the file is damaged")
    if value == 0.0:
        log.debug("%s: %s has scale 0 (an all-zero layer)", path, layer.name)
    return scale


def split_fp8(state: Mapping[str, torch.Tensor | Fp8Weight]) -> tuple[dict[str, torch.Tensor], dict[str, Fp8Weight]]:
    """Separate a (possibly key-converted) streamed state: plain tensors for ``load_state_dict``,
    and ``{module name: Fp8Weight}`` (".weight" dropped) for ``replace_linear_weights``."""
    plain: dict[str, torch.Tensor] = {}
    fp8: dict[str, Fp8Weight] = {}
    for key, value in state.items():
        if isinstance(value, Fp8Weight):
            fp8[key.removesuffix(".weight")] = value
        else:
            plain[key] = value
    return plain, fp8


# ----------------------------------------------------------------------------------------------
# torchao weights


def fp8_mm_compatible(shape: tuple[int, ...] | torch.Size) -> bool:
    """``torch._scaled_mm`` (and torchao's float8 configs) need both Linear dims divisible by 16."""
    return len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % 16 == 0


def as_float8_weight(
    qdata: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
    *,
    use_fast_accum: bool = True,
    activation_value_lb: float | None = ACTIVATION_SCALE_LB,
) -> torch.Tensor:
    """A torchao ``Float8Tensor`` from stored float8 bytes and their per-tensor scale, equal to
    what ``quantize_(linear, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()))``
    builds, without re-quantizing: ``qdata`` is used as is, ``scale`` becomes float32 ``[1, 1]``,
    so ``dequantize()`` is exactly ``qdata.float() * scale`` (rounded to ``dtype``).

    In ``F.linear`` each input is quantized per tensor to float8_e4m3fn (scale amax/448) and
    ``torch._scaled_mm(x_fp8, qdata.t(), scale_a, scale_b, bias, out_dtype=x.dtype,
    use_fast_accum=...)`` runs. ``activation_value_lb`` (a deviation from the config's default of
    None, which gives NaN for an all-zero input) bounds the activation amax from below; it changes
    nothing for any input with amax above it. A zero weight scale is fine: no division by it.
    """
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8Tensor
    from torchao.quantization.granularity import PerTensor
    from torchao.quantization.quantize_.common import KernelPreference
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import (
        QuantizeTensorToFloat8Kwargs,
    )

    if qdata.dtype != torch.float8_e4m3fn:
        raise ValueError(f"as_float8_weight takes float8_e4m3fn weights, got {qdata.dtype}")
    if qdata.ndim != 2:
        raise ValueError(f"as_float8_weight takes a 2-D Linear weight, got shape {tuple(qdata.shape)}")
    if scale.numel() != 1:
        raise ValueError(f"as_float8_weight takes a per-tensor scale, got shape {tuple(scale.shape)}")
    act = QuantizeTensorToFloat8Kwargs(
        float8_dtype=torch.float8_e4m3fn, granularity=PerTensor(), mm_config=None,
        hp_value_lb=activation_value_lb, hp_value_ub=None, kernel_preference=KernelPreference.AUTO,
    )
    return Float8Tensor(
        qdata,
        scale.to(device=qdata.device, dtype=torch.float32).reshape(1, 1),
        block_size=list(qdata.shape),
        mm_config=Float8MMConfig(use_fast_accum=use_fast_accum),
        act_quant_kwargs=act,
        kernel_preference=KernelPreference.AUTO,
        dtype=dtype,
    )


def replace_linear_weights(
    module: torch.nn.Module,
    fp8_weights: Mapping[str, Fp8Weight | tuple[torch.Tensor, torch.Tensor]],
    dtype: torch.dtype | None = None,
    **float8_kwargs: Any,
) -> dict[str, int]:
    """Swap the weights of the named ``nn.Linear`` submodules (names as in ``named_modules``; a
    trailing ".weight" is dropped) for ``Float8Tensor`` parameters (``requires_grad=False``), in
    place. ``dtype``: the compute dtype the weights report (default: the Linear's current dtype,
    which may be a meta tensor's). A Linear whose dims are not multiples of 16 (``_scaled_mm``
    cannot run it; torchao's config skips such layers too), or that computes in float32 (a float32
    bias), gets the dequantized weight instead. Returns counts {"float8": n, "dequantized": m}."""
    counts = {"float8": 0, "dequantized": 0}
    for name, (qdata, scale) in fp8_weights.items():
        name = name.removesuffix(".weight")
        try:
            linear = module.get_submodule(name)
        except AttributeError as error:
            raise UserInputError(f"fp8 weight for {name}, which the model does not have") from error
        if not isinstance(linear, torch.nn.Linear):
            raise UserInputError(f"fp8 weight for {name}, which is a {type(linear).__name__}, not a Linear")
        expected = (linear.out_features, linear.in_features)
        if tuple(qdata.shape) != expected:
            raise UserInputError(f"fp8 weight for {name} has shape {tuple(qdata.shape)}, the model expects {expected}")
        # A layer diffusers keeps in float32 in a bf16 / fp16 model (Wan's time embedder: its bias is
        # float32) computes in float32, which torch._scaled_mm cannot (its bias and output are bf16 /
        # fp16 only). Comfy-Org's files store those layers in float8 too: they get their dequantized
        # weight, in float32 as the "dequantize" mode has it (rounded to the compute dtype, upcast).
        target = dtype or linear.weight.dtype
        fp32_layer = target != torch.float32 and linear.bias is not None and linear.bias.dtype == torch.float32
        if not fp32_layer and qdata.dtype == torch.float8_e4m3fn and fp8_mm_compatible(qdata.shape):
            weight = as_float8_weight(qdata, scale, target, **float8_kwargs)
            counts["float8"] += 1
        else:
            weight = dequantize(qdata, scale, target)
            weight = weight.float() if fp32_layer else weight
            counts["dequantized"] += 1
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    if counts["dequantized"]:
        log.info("%d fp8 layers dequantized (float32 layers, dims not multiples of 16, or not e4m3fn), "
                 "%d kept as float8",
                 counts["dequantized"], counts["float8"])
    return counts


# ----------------------------------------------------------------------------------------------
# writer (tests, benchmarks)


def quantize_per_tensor(weight: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> Fp8Weight:
    """Per-tensor float8 as ComfyUI's files hold it: ``scale = amax(|W|) / fp8_max`` in float32,
    ``q = clamp(W.float() / scale, +-fp8_max)`` rounded to nearest. An all-zero tensor gets
    scale 1 (not 0/0)."""
    fp8_max = torch.finfo(fp8_dtype).max
    w = weight.float()
    amax = w.abs().amax()
    scale = torch.where(amax > 0, amax / fp8_max, torch.ones_like(amax)).to(torch.float32)
    qdata = (w / scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)
    return Fp8Weight(qdata, scale.reshape(()))


def write_fp8_scaled(
    path: Path | str,
    state_dict: Mapping[str, torch.Tensor],
    marker: bool = True,
    spelling: str = "scale_weight",
    *,
    prefix: str = "",
    comfy_quant: bool = False,
    quantization_metadata: bool = False,
    input_scale: bool = False,
    scale_dtype: torch.dtype = torch.float32,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    select: Callable[[str], bool] | None = None,
    return_weights: bool = True,
) -> dict[str, Fp8Weight]:
    """Write an fp8_scaled file from an original-layout state dict: the block Linear weights
    (``select``, default ``BLOCK_LINEAR``) are quantized per tensor (``quantize_per_tensor``) with a
    scalar ``<layer>.<spelling>`` scale; every other tensor keeps its dtype. Options add what the
    various ComfyUI writers add: the ``scaled_fp8`` marker (empty, storage dtype), per-layer
    ``.comfy_quant`` JSON tensors, ``_quantization_metadata``, input scales of 1, a key prefix.
    Tensors are converted and written one at a time, so ``state_dict`` may be a lazy Mapping
    (a benchmark can write an A14B-sized file without holding it). Returns the quantized weights
    by original key (empty with ``return_weights=False``, which keeps none of them in memory)."""
    if spelling not in ("scale_weight", "weight_scale"):
        raise ValueError(f"spelling must be 'scale_weight' or 'weight_scale', got {spelling!r}")
    select = select or (lambda key: BLOCK_LINEAR.match(key) is not None)
    input_spelling = "scale_input" if spelling == "scale_weight" else "input_scale"
    fmt = next(f for f, d in FLOAT8_FORMATS.items() if d == fp8_dtype)
    conf_bytes = json.dumps({"format": fmt}).encode("utf-8")
    selected = [key for key in state_dict if select(key)]

    # Plan the header from shapes alone, then produce each tensor when it is written.
    plan: list[tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]] = []
    quantized: dict[str, Fp8Weight] = {}

    pending: dict[str, Fp8Weight] = {}  # quantized weight between writing its data and its scale

    def qdata_of(key: str) -> torch.Tensor:
        pending[key] = quantize_per_tensor(state_dict[key], fp8_dtype)
        return pending[key].qdata

    def scale_of(key: str) -> torch.Tensor:
        weight = pending.pop(key)
        if return_weights:
            quantized[key] = weight
        return weight.scale.to(scale_dtype)

    if marker:
        plan.append((MARKER, fp8_dtype, (0,), lambda: torch.empty(0, dtype=fp8_dtype)))
    for key in state_dict:
        tensor = state_dict[key]
        if key in selected:
            layer = key.removesuffix(".weight")
            plan.append((key, fp8_dtype, tuple(tensor.shape), lambda k=key: qdata_of(k)))
            plan.append((f"{layer}.{spelling}", scale_dtype, (), lambda k=key: scale_of(k)))
            if input_scale:
                plan.append((f"{layer}.{input_spelling}", torch.float32, (), lambda: torch.ones(())))
            if comfy_quant:
                plan.append((f"{layer}.comfy_quant", torch.uint8, (len(conf_bytes),),
                             lambda: torch.frombuffer(bytearray(conf_bytes), dtype=torch.uint8)))
        else:
            plan.append((key, tensor.dtype, tuple(tensor.shape), lambda k=key: state_dict[k]))
    metadata = {"format": "pt"}
    if quantization_metadata:
        layers = {prefix + k.removesuffix(".weight"): {"format": fmt} for k in selected}
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    _write_safetensors(Path(path), [(prefix + key, *rest) for key, *rest in plan], metadata)
    return quantized


_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_ST_TORCH_DTYPES = {name: dtype for dtype, name in _ST_DTYPES.items()}


def _write_safetensors(path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]],
                       metadata: dict[str, str]) -> None:
    """A safetensors file written tensor by tensor (``safetensors.torch.save_file`` needs them all)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape, _ in plan:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for key, dtype, shape, make in plan:
            tensor = make().detach().to("cpu").contiguous()
            if tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise ValueError(f"{key}: produced {tensor.dtype}{tuple(tensor.shape)}, planned {dtype}{shape}")
            if tensor.numel():
                out.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
