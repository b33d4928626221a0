"""ComfyUI fp8_scaled checkpoints: detection, streaming (dequantized and as stored), torchao
Float8Tensor weights, refusals of damaged or foreign files, and the test/benchmark writer."""

from __future__ import annotations

import gc
import inspect
import json
import re
import struct
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from accel.errors import UserInputError
from accel.model import fp8_scaled
from accel.model.files import read_safetensors_header, to_original_layout
from accel.model.fp8_scaled import (
    Fp8Weight,
    as_float8_weight,
    detect,
    iter_state,
    replace_linear_weights,
    split_fp8,
    write_fp8_scaled,
)

# Every dim a multiple of 16, so all block Linears can run torch._scaled_mm.
CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, rope_max_seq_len=32,
)
BLOCK_LINEARS = 2 * (8 + 2)  # per block: self/cross attention q, k, v, o and ffn.0, ffn.2

@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**CONFIG)
    state = {k: v.detach().clone() for k, v in to_original_layout(model.state_dict()).items()}
    # Real files keep most tensors in bf16; keep one fp32 tensor to see it cast too.
    return {k: (v if k.endswith("modulation") else v.to(torch.bfloat16)) for k, v in state.items()}


def write(tmp_path: Path, state, name="wan2.2_t2v_high_noise_fp8_scaled.safetensors", **options) -> Path:
    path = tmp_path / name
    write_fp8_scaled(path, state, **options)
    return path


def info_of(path: Path):
    return detect(path, read_safetensors_header(path))


def raw_file(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


# --------------------------------------------------------------------------------------------
# detection


def test_detects_the_legacy_marker_and_scale_weight(tmp_path, original):
    path = write(tmp_path, original)
    info = info_of(path)
    assert info is not None
    assert info.marker_key == "scaled_fp8" and info.marker_dtype == torch.float8_e4m3fn
    assert info.spellings == {"scale_weight"} and info.prefix == "" and info.config_source == "scaled_fp8"
    assert info.storage_dtypes == {torch.float8_e4m3fn}
    assert len(info.layers) == BLOCK_LINEARS
    layer = info.layers["blocks.1.ffn.0"]
    assert (layer.weight_key, layer.scale_key, layer.input_scale_key) == (
        "blocks.1.ffn.0.weight", "blocks.1.ffn.0.scale_weight", None)
    assert layer.shape == (64, 32) and layer.scale_shape == () and layer.format == "float8_e4m3fn"
    assert not info.full_precision_mm
    assert "scaled_fp8" in info.consumed_keys and "blocks.0.self_attn.q.scale_weight" in info.consumed_keys
    assert "20 float8_e4m3fn layers" in info.summary()


@pytest.mark.parametrize("options, source", [
    (dict(spelling="weight_scale", marker=False, comfy_quant=True), "comfy_quant"),
    (dict(spelling="weight_scale", marker=False, quantization_metadata=True, input_scale=True),
     "_quantization_metadata"),
    (dict(spelling="weight_scale", marker=False), "dtype"),
    (dict(spelling="scale_weight", input_scale=True, prefix="model.diffusion_model."), "scaled_fp8"),
    (dict(spelling="weight_scale", comfy_quant=True, prefix="model.diffusion_model."), "comfy_quant"),
])
def test_detects_both_spellings_prefixes_and_configs(tmp_path, original, options, source):
    info = info_of(write(tmp_path, original, **options))
    assert info is not None and info.config_source == source
    assert info.spellings == {options["spelling"]}
    assert info.prefix == options.get("prefix", "")
    assert set(info.weight_keys) == {k for k in original if fp8_scaled.BLOCK_LINEAR.match(k)}
    if options.get("input_scale"):
        assert all(layer.input_scale_key for layer in info.layers.values())
        assert all(layer.input_scale_key in info.consumed_keys for layer in info.layers.values())


def test_a_plain_file_is_not_fp8_scaled(tmp_path, original):
    path = tmp_path / "plain.safetensors"
    save_file(original, str(path))
    assert info_of(path) is None


def test_a_two_element_marker_asks_for_full_precision_matmuls(tmp_path):
    path = tmp_path / "m.safetensors"
    q = fp8_scaled.quantize_per_tensor(torch.randn(32, 32))
    save_file({"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn), "blocks.0.ffn.0.weight": q.qdata,
               "blocks.0.ffn.0.scale_weight": q.scale}, str(path))
    info = info_of(path)
    assert info.full_precision_mm and info.layers["blocks.0.ffn.0"].full_precision_mm
    assert "full-precision" in info.summary()


def test_a_comfy_quant_flag_is_read(tmp_path):
    path = tmp_path / "m.safetensors"
    q = fp8_scaled.quantize_per_tensor(torch.randn(32, 32))
    conf = json.dumps({"format": "float8_e4m3fn", "full_precision_matrix_mult": True}).encode()
    save_file({"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.weight_scale": q.scale,
               "blocks.0.ffn.0.comfy_quant": torch.tensor(list(conf), dtype=torch.uint8)}, str(path))
    assert info_of(path).layers["blocks.0.ffn.0"].full_precision_mm


def test_scales_shaped_1_or_bf16_are_accepted(tmp_path):
    path = tmp_path / "m.safetensors"
    q = fp8_scaled.quantize_per_tensor(torch.randn(32, 32))
    save_file({"a.weight": q.qdata, "a.scale_weight": q.scale.reshape(1).to(torch.bfloat16)}, str(path))
    info = info_of(path)
    assert info.layers["a"].scale_shape == (1,)
    ((_, value),) = iter_state(path, info, "bf16", torch.float32)
    assert torch.equal(value, q.qdata.float() * q.scale.to(torch.bfloat16).float())


# --------------------------------------------------------------------------------------------
# streaming


def stored(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bf16_mode_is_fp32_product_rounded_once(tmp_path, original, dtype):
    path = write(tmp_path, original, prefix="model.diffusion_model.")
    info = info_of(path)
    state = dict(iter_state(path, info, "bf16", dtype))
    assert set(state) == set(original)  # prefix stripped, scales and marker consumed
    for key, value in state.items():
        assert value.dtype == dtype, key
        if key in info.weight_keys:
            layer = info.weight_keys[key]
            qdata, scale = stored(path, layer.weight_key), stored(path, layer.scale_key)
            assert qdata.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == ()
            assert torch.equal(value, (qdata.float() * scale).to(dtype)), key
        elif key.endswith(".bias") and key.removesuffix(".bias") in info.layers:
            # An fp8 layer's bias is stored in float8 too, as ComfyUI keeps it.
            assert torch.equal(value, original[key].to(torch.float8_e4m3fn).to(dtype)), key
        else:
            assert torch.equal(value, original[key].to(dtype)), key


def test_keep_fp32_leaves_chosen_fp32_tensors_alone(tmp_path, original):
    path = write(tmp_path, original)
    state = dict(iter_state(path, info_of(path), "bf16", torch.bfloat16, keep_fp32=lambda k: k.endswith("modulation")))
    assert state["head.modulation"].dtype == torch.float32
    assert torch.equal(state["blocks.0.modulation"], original["blocks.0.modulation"])
    assert state["head.head.weight"].dtype == torch.bfloat16


def test_fp8_mode_yields_the_stored_bytes(tmp_path, original):
    path = write(tmp_path, original, spelling="weight_scale", comfy_quant=True)
    info = info_of(path)
    header, data = raw_file(path)
    state = dict(iter_state(path, info, "fp8", torch.bfloat16))
    assert set(state) == set(original)
    for key, layer in info.weight_keys.items():
        record = state[key]
        assert isinstance(record, Fp8Weight)
        start, end = header[layer.weight_key]["data_offsets"]
        assert record.qdata.dtype == torch.float8_e4m3fn
        assert record.qdata.contiguous().view(torch.uint8).numpy().tobytes() == data[start:end]
        assert record.scale.dtype == torch.float32 and record.scale.shape == ()
        assert torch.equal(record.scale, stored(path, layer.scale_key))
    assert not isinstance(state["head.head.weight"], Fp8Weight)


def counted_reads(monkeypatch) -> list[str]:
    """The keys of the tensors the loader reads from here on (``safe_open`` wrapped)."""
    reads: list[str] = []

    class CountingHandle:
        def __init__(self, handle):
            self.handle = handle

        def keys(self):
            return self.handle.keys()

        def get_slice(self, key):
            return self.handle.get_slice(key)

        def get_tensor(self, key):
            reads.append(key)
            return self.handle.get_tensor(key)

    class CountingOpen:
        def __init__(self, *args, **kwargs):
            self.context = safe_open(*args, **kwargs)

        def __enter__(self):
            return CountingHandle(self.context.__enter__())

        def __exit__(self, *exc):
            return self.context.__exit__(*exc)

    monkeypatch.setattr(fp8_scaled, "safe_open", CountingOpen)
    return reads


@pytest.mark.parametrize("mode", ["bf16", "fp8"])
def test_an_empty_expert_comes_from_the_header_alone(tmp_path, monkeypatch, mode):
    """On the meta device (a worker that maps rank 0's host copy) the stream yields the same keys,
    shapes and dtypes as on the CPU, and reads no tensor."""
    state = {"blocks.0.ffn.0.weight": torch.randn(64, 32, dtype=torch.bfloat16), "blocks.0.ffn.0.bias": torch.randn(64),
             "head.head.weight": torch.randn(16, 64, dtype=torch.bfloat16)}
    path = write(tmp_path, state)
    info = info_of(path)

    def layout(stream):
        return {key: [(tuple(t.shape), t.dtype) for t in (value if isinstance(value, Fp8Weight) else (value,))]
                for key, value in stream}

    loaded = layout(iter_state(path, info, mode, torch.bfloat16))
    reads = counted_reads(monkeypatch)
    assert layout(iter_state(path, info, mode, torch.bfloat16, "meta")) == loaded
    assert reads == []


def test_iter_state_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    # A few MB: eight 512x512 block weights (fp8) and their fp32 biases.
    state = {}
    for i in range(8):
        state[f"blocks.{i}.ffn.0.weight"] = torch.randn(512, 512, dtype=torch.bfloat16)
        state[f"blocks.{i}.ffn.0.bias"] = torch.randn(512)
    path = write(tmp_path, state)
    info = info_of(path)
    reads = counted_reads(monkeypatch)
    stream = iter_state(path, info, "bf16", torch.bfloat16)
    assert inspect.isgenerator(stream) and reads == []  # nothing read before the first tensor is asked for
    seen = 0
    for key, tensor in stream:
        new = reads[seen:]
        seen = len(reads)
        expected = [key, f"{key[:-len('.weight')]}.scale_weight"] if key in info.weight_keys else [key]
        assert new == expected  # one tensor (and its scale) per yielded tensor
        ref = weakref.ref(tensor)
        del tensor
        gc.collect()
        assert ref() is None  # the stream keeps nothing it has handed out
    assert seen == len(state) + len(info.layers)


def test_yielded_keys_go_through_the_diffusers_conversion(tmp_path, original):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = write(tmp_path, original, prefix="model.diffusion_model.", input_scale=True)
    info = info_of(path)
    for mode in ("bf16", "fp8"):
        streamed = dict(iter_state(path, info, mode, torch.float32))
        assert not any(k.endswith(("scale_weight", "weight_scale", "scale_input", "input_scale", "comfy_quant"))
                       or k == "scaled_fp8" for k in streamed)
        plain, fp8 = split_fp8(convert_wan_transformer_to_diffusers(streamed))
        assert (len(fp8) == BLOCK_LINEARS) == (mode == "fp8")
        with torch.device("meta"):
            model = WanTransformer3DModel(**CONFIG)
        missing, unexpected = model.load_state_dict(plain, strict=False, assign=True)
        assert unexpected == [] and sorted(missing) == sorted(f"{name}.weight" for name in fp8)
        assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in fp8)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (float8 matmuls: SM 8.9+)")


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), pytest.param("cuda", torch.bfloat16, marks=CUDA)])
def test_fp8_model_runs_close_to_the_dequantized_one(tmp_path, original, device, dtype):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = write(tmp_path, original)
    info = info_of(path)
    outputs = {}
    for mode in ("bf16", "fp8"):
        streamed = dict(iter_state(path, info, mode, dtype, device))
        plain, fp8 = split_fp8(convert_wan_transformer_to_diffusers(streamed))
        with torch.device("meta"):
            model = WanTransformer3DModel(**CONFIG)
        model.load_state_dict(plain, strict=False, assign=True)
        counts = replace_linear_weights(model, fp8, dtype=dtype)
        assert counts == {"float8": len(fp8), "dequantized": 0}
        with torch.device(device):
            model.rope = type(model.rope)(attention_head_dim=16, patch_size=(1, 2, 2), max_seq_len=32)
        if mode == "fp8":
            weight = model.blocks[0].attn1.to_q.weight
            assert type(weight).__name__ == "Float8Tensor" and not weight.requires_grad
            assert weight.device.type == device
        torch.manual_seed(1)
        x, text = torch.randn(1, 16, 2, 4, 4, dtype=dtype), torch.randn(1, 5, 32, dtype=dtype)
        with torch.no_grad():
            outputs[mode] = model.eval()(hidden_states=x.to(device), timestep=torch.tensor([500.0], device=device),
                                         encoder_hidden_states=text.to(device), return_dict=False)[0].float().cpu()
    error = (outputs["fp8"] - outputs["bf16"]).norm() / outputs["bf16"].norm()
    assert torch.isfinite(outputs["fp8"]).all() and error < 0.1, error


# --------------------------------------------------------------------------------------------
# torchao Float8Tensor


def test_float8_weight_dequantizes_exactly(tmp_path):
    q = fp8_scaled.quantize_per_tensor(torch.randn(48, 32))
    weight = as_float8_weight(q.qdata, q.scale, torch.bfloat16)
    assert type(weight).__name__ == "Float8Tensor" and weight.dtype == torch.bfloat16
    assert weight.qdata is q.qdata  # the stored bytes, not a re-quantized copy
    assert weight.scale.shape == (1, 1) and weight.scale.dtype == torch.float32
    assert torch.equal(weight.dequantize(torch.float32), q.qdata.float() * q.scale)
    assert torch.equal(weight.dequantize(), (q.qdata.float() * q.scale).to(torch.bfloat16))


def test_float8_weight_matches_torchaos_per_tensor_config(monkeypatch):
    """What Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()) builds, rebuilt from
    its qdata and scale. quantize_ refuses CPUs (hardware check), so its tensor function is called
    with the check bypassed: the construction itself is device-independent."""
    import torchao.quantization.quant_api as quant_api
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerTensor,
    )

    if not hasattr(quant_api, "_float8_dynamic_activation_float8_weight_quantize_tensor"):
        pytest.skip("this torchao has no _float8_dynamic_activation_float8_weight_quantize_tensor to compare with")
    if not torch.cuda.is_available():
        monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())
    linear = torch.nn.Linear(32, 48).to(torch.bfloat16)
    theirs = quant_api._float8_dynamic_activation_float8_weight_quantize_tensor(linear.weight, config)
    ours = as_float8_weight(theirs.qdata, theirs.scale.reshape(()), torch.bfloat16, activation_value_lb=None)
    assert type(ours) is type(theirs)
    for name in ("block_size", "mm_config", "kernel_preference", "dtype", "act_quant_kwargs"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert torch.equal(ours.scale, theirs.scale) and ours.scale.shape == theirs.scale.shape
    x = torch.randn(3, 7, 32, dtype=torch.bfloat16)
    assert torch.equal(F.linear(x, ours, linear.bias), F.linear(x, theirs, linear.bias))
    # The pack's default differs only in the activation amax floor (zero-input guard).
    guarded = as_float8_weight(theirs.qdata, theirs.scale, torch.bfloat16)
    assert guarded.act_quant_kwargs.hp_value_lb == fp8_scaled.ACTIVATION_SCALE_LB
    assert torch.equal(F.linear(x, guarded, linear.bias), F.linear(x, theirs, linear.bias))


@CUDA
def test_cuda_linear_runs_scaled_mm_exactly_like_the_config():
    from torch.profiler import ProfilerActivity, profile
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerTensor,
        quantize_,
    )

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(512, 1024)).to("cuda", torch.bfloat16)
    quantize_(reference, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()))
    theirs = reference[0].weight
    assert type(theirs).__name__ == "Float8Tensor" and theirs.scale.shape == (1, 1)
    ours = as_float8_weight(theirs.qdata, theirs.scale.reshape(()), torch.bfloat16)
    for name in ("block_size", "mm_config", "kernel_preference", "dtype"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert torch.equal(ours.dequantize(torch.float32), theirs.qdata.float() * theirs.scale)
    x = torch.randn(2, 77, 512, device="cuda", dtype=torch.bfloat16)
    bias = reference[0].bias
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = F.linear(x, ours, bias)
        torch.cuda.synchronize()
    assert "aten::_scaled_mm" in {event.name for event in prof.events()}
    assert torch.equal(out, F.linear(x, theirs, bias))
    zero = as_float8_weight(torch.zeros(1024, 512, device="cuda", dtype=torch.float8_e4m3fn),
                            torch.zeros((), device="cuda"))
    assert torch.equal(F.linear(torch.zeros_like(x), zero, bias), bias.expand(2, 77, 1024))


def test_zero_scale_and_zero_input_stay_finite(tmp_path):
    path = tmp_path / "zero.safetensors"
    save_file({"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
               "blocks.0.ffn.2.weight": torch.zeros(32, 48, dtype=torch.float8_e4m3fn),
               "blocks.0.ffn.2.scale_weight": torch.zeros(()), "blocks.0.ffn.2.bias": torch.ones(32)}, str(path))
    info = info_of(path)
    state = dict(iter_state(path, info, "bf16", torch.bfloat16))
    assert torch.equal(state["blocks.0.ffn.2.weight"], torch.zeros(32, 48, dtype=torch.bfloat16))
    record = dict(iter_state(path, info, "fp8", torch.bfloat16))["blocks.0.ffn.2.weight"]
    weight = as_float8_weight(*record)
    bias = torch.ones(32, dtype=torch.bfloat16)
    for x in (torch.zeros(2, 48, dtype=torch.bfloat16), torch.randn(2, 48, dtype=torch.bfloat16)):
        out = F.linear(x, weight, bias)
        assert torch.equal(out, bias.expand(2, 32))  # zero weight: the bias alone, no NaN


def test_replace_linear_weights_guards_shapes():
    module = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(24, 40), torch.nn.LayerNorm(8),
                                 torch.nn.Linear(32, 32)).to(torch.bfloat16)
    module[3].float()  # a layer the bf16 model keeps in float32 (as diffusers keeps Wan's time embedder)
    weights = {"0": fp8_scaled.quantize_per_tensor(torch.randn(48, 32)),
               "1.weight": fp8_scaled.quantize_per_tensor(torch.randn(40, 24)),
               "3": fp8_scaled.quantize_per_tensor(torch.randn(32, 32))}
    counts = replace_linear_weights(module, weights, dtype=torch.bfloat16)
    assert counts == {"float8": 1, "dequantized": 2}
    assert module[3].weight.dtype == torch.float32  # torch._scaled_mm takes no float32 bias
    assert torch.equal(module[3].weight, weights["3"].dequantize(torch.bfloat16).float())
    assert type(module[0].weight).__name__ == "Float8Tensor" and not module[0].weight.requires_grad
    assert module[1].weight.dtype == torch.bfloat16 and not module[1].weight.requires_grad
    assert torch.equal(module[1].weight, weights["1.weight"].dequantize(torch.bfloat16))
    with pytest.raises(UserInputError, match="shape"):
        replace_linear_weights(module, {"0": weights["1.weight"]})
    with pytest.raises(UserInputError, match="LayerNorm, not a Linear"):
        replace_linear_weights(module, {"2": weights["0"]})
    with pytest.raises(UserInputError, match="does not have"):
        replace_linear_weights(module, {"7": weights["0"]})


# --------------------------------------------------------------------------------------------
# e5m2 and refusals


def test_e5m2_loads_dequantized_and_is_refused_as_stored(tmp_path, original):
    path = write(tmp_path, original, fp8_dtype=torch.float8_e5m2)
    info = info_of(path)
    assert info.storage_dtypes == {torch.float8_e5m2} and info.marker_dtype == torch.float8_e5m2
    state = dict(iter_state(path, info, "bf16", torch.bfloat16))
    layer = info.layers["blocks.0.self_attn.q"]
    assert torch.equal(state["blocks.0.self_attn.q.weight"],
                       (stored(path, layer.weight_key).float() * stored(path, layer.scale_key)).to(torch.bfloat16))
    with pytest.raises(UserInputError, match=rf"{re.escape(str(path))}: float8_e5m2 .* dequantized"):
        list(iter_state(path, info, "fp8", torch.bfloat16))
    with pytest.raises(UserInputError, match="float8_e5m2"):
        fp8_scaled.check_mode(path, info, "fp8")
    fp8_scaled.check_mode(path, info, "bf16")


def damaged(tmp_path, tensors, metadata=None, name="damaged_fp8_scaled.safetensors") -> Path:
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def q32():
    return fp8_scaled.quantize_per_tensor(torch.randn(32, 32))


def blob(conf) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)


@pytest.mark.parametrize("tensors, metadata, message", [
    (lambda q: {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn), "blocks.0.ffn.0.weight": q.qdata},
     None, r"1 float8 weights have no scale .* blocks\.0\.ffn\.0\.weight"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.scale_weight": torch.ones(32)},
     None, r"blocks\.0\.ffn\.0\.scale_weight has shape \[32\]: only per-tensor"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.weight_scale": q.scale,
                "blocks.0.ffn.0.comfy_quant": blob({"format": "nvfp4"})},
     None, r"layer blocks\.0\.ffn\.0 is quantized as 'nvfp4'"),
    (lambda q: {"model.diffusion_model.blocks.0.ffn.0.weight": q.qdata,
                "model.diffusion_model.blocks.0.ffn.0.weight_scale": q.scale},
     {"_quantization_metadata": json.dumps({"layers": {"model.diffusion_model.blocks.0.ffn.0": {"format": "mxfp8"}}})},
     r"layer blocks\.0\.ffn\.0 is quantized as 'mxfp8'"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata.view(torch.int8), "blocks.0.ffn.0.weight_scale": q.scale,
                "blocks.0.ffn.0.comfy_quant": blob({"format": "int8_tensorwise"})},
     None, r"quantized as 'int8_tensorwise'"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.weight_scale": q.scale,
                "blocks.0.ffn.0.comfy_quant": torch.tensor(list(b"{not json"), dtype=torch.uint8)},
     None, r"blocks\.0\.ffn\.0\.comfy_quant is not a JSON quantization config"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata.view(torch.uint8), "blocks.0.ffn.0.weight_scale": q.scale,
                "blocks.0.ffn.0.weight_scale_2": q.scale.clone()},
     None, r"non-float8 quantization format \(blocks\.0\.ffn\.0\.weight_scale_2"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata.float(), "blocks.0.ffn.0.scale_weight": q.scale},
     None, r"blocks\.0\.ffn\.0\.weight is stored as F32 but has a scale"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.scale_weight": q.scale,
                "blocks.0.ffn.2.scale_weight": q.scale.clone()},
     None, r"blocks\.0\.ffn\.2\.scale_weight has no weight blocks\.0\.ffn\.2\.weight"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.scale_weight": q.scale,
                "blocks.0.ffn.0.weight_scale": q.scale.clone()},
     None, r"layer blocks\.0\.ffn\.0 has two weight scales"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.weight_scale": q.scale,
                "blocks.0.ffn.0.comfy_quant": blob({"format": "float8_e5m2"})},
     None, r"stored as F8_E4M3 but its quantization config says float8_e5m2"),
    (lambda q: {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.scale_weight": q.scale},
     {"_quantization_metadata": "[1, 2]"}, r"unreadable _quantization_metadata"),
])
def test_damaged_or_foreign_files_are_refused_naming_the_file(tmp_path, tensors, metadata, message):
    path = damaged(tmp_path, tensors(q32()), metadata)
    with pytest.raises(UserInputError, match=re.escape(str(path)) + ": .*" + message):
        info_of(path)


def test_a_non_finite_scale_is_refused_on_load(tmp_path):
    q = q32()
    nan = torch.tensor(float("nan"))
    path = damaged(tmp_path, {"blocks.0.ffn.0.weight": q.qdata, "blocks.0.ffn.0.scale_weight": nan})
    with pytest.raises(UserInputError, match=re.escape(str(path)) + r": the scale of blocks\.0\.ffn\.0 is nan"):
        list(iter_state(path, info_of(path), "bf16", torch.bfloat16))


def test_a_truncated_file_is_refused_naming_the_file(tmp_path, original):
    path = write(tmp_path, original, spelling="weight_scale", comfy_quant=True)
    info = info_of(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(UserInputError, match=re.escape(str(path)) + ": truncated"):
        read_safetensors_header(path)  # the loader's header check, before detection
    header, _ = raw_file(path)
    with pytest.raises(UserInputError, match=re.escape(str(path)) + ": could not read the safetensors file"):
        detect(path, header)  # the comfy_quant tensors cannot be read
    with pytest.raises(UserInputError, match=re.escape(str(path)) + ": could not read the safetensors file"):
        list(iter_state(path, info, "fp8", torch.bfloat16))


# --------------------------------------------------------------------------------------------
# writer


def test_writer_quantizes_like_comfyui_and_writes_valid_safetensors(tmp_path, original):
    path = tmp_path / "w.safetensors"
    quantized = write_fp8_scaled(path, original, spelling="weight_scale", comfy_quant=True, quantization_metadata=True)
    loaded = load_file(str(path))  # safetensors' own reader accepts the file
    assert loaded["scaled_fp8"].dtype == torch.float8_e4m3fn and loaded["scaled_fp8"].numel() == 0
    for key, tensor in original.items():
        if key in quantized:
            layer = key.removesuffix(".weight")
            w = tensor.float()
            scale = w.abs().amax() / 448.0
            assert loaded[f"{layer}.weight_scale"].dtype == torch.float32
            assert torch.equal(loaded[f"{layer}.weight_scale"], scale)
            expected = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(loaded[key].view(torch.uint8), expected.view(torch.uint8))
            assert json.loads(bytes(loaded[f"{layer}.comfy_quant"].tolist())) == {"format": "float8_e4m3fn"}
        else:
            assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)
    assert set(quantized) == {k for k in original if fp8_scaled.BLOCK_LINEAR.match(k)}
    meta = json.loads(read_safetensors_header(path)["__metadata__"]["_quantization_metadata"])
    assert meta["layers"]["blocks.0.cross_attn.o"] == {"format": "float8_e4m3fn"}


def test_writer_gives_an_all_zero_tensor_scale_one(tmp_path):
    q = fp8_scaled.quantize_per_tensor(torch.zeros(16, 16))
    assert float(q.scale) == 1.0 and torch.equal(q.qdata.float(), torch.zeros(16, 16))
