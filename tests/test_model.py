"""Loading the experts: diffusers directory, original-layout single files, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import TINY
from safetensors.torch import load_file, save_file

from accel.errors import UserInputError
from accel.job.settings import ModelSpec
from accel.model.files import model_config_for, to_original_layout
from accel.model.fp8_scaled import write_fp8_scaled
from accel.model.loading import load_experts, save_random_experts


@pytest.fixture(scope="module")
def tiny_experts():
    return load_experts(TINY)


@pytest.fixture()
def original_files(tmp_path, tiny_experts):
    paths = []
    for name in ("high", "low"):
        path = tmp_path / f"wan2.2_t2v_{name}_noise_tiny.safetensors"
        save_file(to_original_layout(tiny_experts.expert(name).state_dict()), str(path))
        paths.append(path)
    return paths


def forward(module):
    torch.manual_seed(0)
    x, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 6, 32)
    dtype = module.patch_embedding.weight.dtype
    with torch.no_grad():
        return module(hidden_states=x.to(dtype), timestep=torch.tensor([500.0]), encoder_hidden_states=text.to(dtype),
                      return_dict=False)[0]


def assert_same_model(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    """Every weight equal bit for bit; the forwards only closely: a reloaded tensor's memory
    alignment differs from the original's, and CPU kernels may round differently for it."""
    loaded_state, original_state = loaded.state_dict(), original.state_dict()
    assert loaded_state.keys() == original_state.keys()
    for key, tensor in original_state.items():
        assert loaded_state[key].dtype == tensor.dtype and torch.equal(loaded_state[key], tensor), key
    torch.testing.assert_close(forward(loaded), forward(original), rtol=1e-5, atol=1e-6)


def test_single_files_in_original_layout_load_to_the_same_model(original_files, tiny_experts):
    spec = ModelSpec(source="single-file", high_path=str(original_files[0]), low_path=str(original_files[1]), dtype="fp32")
    loaded = load_experts(spec)
    for name in ("high", "low"):
        assert_same_model(loaded.expert(name), tiny_experts.expert(name))


def test_single_file_in_bf16_keeps_norms_in_fp32(original_files):
    spec = ModelSpec(source="single-file", high_path=str(original_files[0]), low_path=str(original_files[1]), dtype="bf16")
    model = load_experts(spec).high
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == torch.float32


def test_diffusers_directory_loads(tmp_path, tiny_experts):
    tiny_experts.high.save_pretrained(tmp_path / "transformer")
    tiny_experts.low.save_pretrained(tmp_path / "transformer_2")
    loaded = load_experts(ModelSpec(source="diffusers", path=str(tmp_path), dtype="fp32"))
    assert_same_model(loaded.low, tiny_experts.low)


def single(high, low):
    return ModelSpec(source="single-file", high_path=str(high), low_path=str(low), dtype="fp32")


def test_missing_file_names_the_file(original_files, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserInputError, match=rf"{missing}: file not found"):
        load_experts(single(original_files[0], missing))


def test_truncated_file_names_the_file(original_files):
    data = original_files[1].read_bytes()
    original_files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=rf"{original_files[1]}: truncated"):
        load_experts(single(*original_files))


def test_pickled_checkpoints_are_refused(original_files, tmp_path):
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not read")
    with pytest.raises(UserInputError, match="only .safetensors"):
        load_experts(single(pickled, original_files[1]))


def test_wrong_shaped_tensor_names_the_file_and_the_model(original_files, tiny_experts):
    state = to_original_layout(tiny_experts.high.state_dict())
    state["blocks.1.self_attn.q.weight"] = torch.zeros(24, 20)
    save_file(state, str(original_files[0]))
    with pytest.raises(UserInputError, match=rf"{original_files[0]}: tensors do not match a Wan2.2 expert with 2 layers"):
        load_experts(single(*original_files))


def i2v_files(tmp_path, experts) -> tuple:
    paths = []
    for name in ("high", "low"):
        state = to_original_layout(experts.expert(name).state_dict())
        generator = torch.Generator().manual_seed(len(paths))
        state["patch_embedding.weight"] = torch.randn(24, 36, 1, 2, 2, generator=generator) * 0.1
        path = tmp_path / f"wan2.2_i2v_{name}_noise_tiny.safetensors"
        save_file(state, str(path))
        paths.append(path)
    return tuple(paths)


def test_image_to_video_experts_load_with_36_input_channels(tmp_path, tiny_experts):
    high, low = i2v_files(tmp_path, tiny_experts)
    loaded = load_experts(single(high, low))
    assert loaded.high.config.in_channels == 36 and loaded.high.patch_embedding.weight.shape[1] == 36
    assert loaded.high.condition_embedder.image_embedder is None  # Wan2.2 I2V has no CLIP image branch
    assert model_config_for(single(high, low))["in_channels"] == 36


def test_a_t2v_and_an_i2v_expert_together_are_refused_naming_both(tmp_path, original_files, tiny_experts):
    high, _ = i2v_files(tmp_path, tiny_experts)
    with pytest.raises(UserInputError, match=rf"high-noise expert {high} is image-to-video.*low-noise expert "
                                             rf"{original_files[1]} is text-to-video"):
        load_experts(single(high, original_files[1]))


def test_other_models_are_refused(original_files, tiny_experts):
    state = to_original_layout(tiny_experts.high.state_dict())
    state["patch_embedding.weight"] = torch.zeros(24, 20, 1, 2, 2)
    save_file(state, str(original_files[0]))
    with pytest.raises(UserInputError, match="16 in for text-to-video or 36 for image-to-video"):
        load_experts(single(*original_files))
    state["patch_embedding.weight"] = torch.zeros(24, 36, 1, 2, 2)
    state["img_emb.proj.0.weight"] = torch.zeros(4)
    save_file(state, str(original_files[0]))
    with pytest.raises(UserInputError, match="Wan2.1 image-to-video checkpoint with a CLIP image branch"):
        load_experts(single(*original_files))
    save_file({"decoder.conv.weight": torch.zeros(2, 2)}, str(original_files[1]))
    with pytest.raises(UserInputError, match="not a Wan2.2 diffusion model"):
        load_experts(single(original_files[1], original_files[1]))


@pytest.fixture(scope="module")
def fp8_ready_experts(tmp_path_factory):
    """Widths that FP8 matmuls take (multiples of 16)."""
    spec = save_random_experts(tmp_path_factory.mktemp("fp8-ready"), attention_head_dim=16, ffn_dim=64)
    return load_experts(dataclasses.replace(spec, dtype="bf16"))


def fp8_scaled_pair(tmp_path, experts, spelling="scale_weight"):
    paths = []
    for name in ("high", "low"):
        path = tmp_path / f"wan2.2_t2v_{name}_noise_tiny_fp8_scaled.safetensors"
        write_fp8_scaled(path, to_original_layout(experts.expert(name).state_dict()), spelling=spelling)
        paths.append(path)
    return paths


@pytest.mark.parametrize("spelling", ["scale_weight", "weight_scale"])
def test_fp8_scaled_files_load_dequantized_as_comfyui_computes(tmp_path, fp8_ready_experts, spelling):
    high, low = fp8_scaled_pair(tmp_path, fp8_ready_experts, spelling)
    loaded = load_experts(ModelSpec(source="single-file", high_path=str(high), low_path=str(low), dtype="bf16"))
    weights = write_fp8_scaled(tmp_path / "again.safetensors", to_original_layout(fp8_ready_experts.high.state_dict()))
    qdata, scale = weights["blocks.1.ffn.0.weight"]
    expected = (qdata.float() * scale).to(torch.bfloat16)  # W = W_fp8 * scale, rounded once
    assert torch.equal(loaded.high.blocks[1].ffn.net[0].proj.weight, expected)
    assert loaded.high.scale_shift_table.dtype == torch.float32
    torch.testing.assert_close(forward(loaded.high).float(), forward(fp8_ready_experts.high).float(),
                               rtol=0.1, atol=0.1)


def test_fp8_scaled_files_used_as_stored_keep_the_files_bytes(tmp_path, fp8_ready_experts):
    from torchao.quantization import Float8Tensor

    high, low = fp8_scaled_pair(tmp_path, fp8_ready_experts)
    spec = ModelSpec(source="single-file", high_path=str(high), low_path=str(low), dtype="bf16", fp8_scaled="as_stored")
    stored = load_experts(spec)
    dequantized = load_experts(dataclasses.replace(spec, fp8_scaled="dequantize"))
    weight = stored.low.blocks[0].attn1.to_q.weight
    assert isinstance(weight, Float8Tensor) and weight.qdata.dtype == torch.float8_e4m3fn
    assert torch.equal(weight.dequantize(), dequantized.low.blocks[0].attn1.to_q.weight)
    fp8_linears = sum(isinstance(m.weight, Float8Tensor) for m in stored.low.modules() if isinstance(m, torch.nn.Linear))
    assert fp8_linears == 2 * 10  # self- and cross-attention q, k, v, o and the two ffn layers of each block
    torch.testing.assert_close(forward(stored.low).float(), forward(dequantized.low).float(), rtol=0.1, atol=0.1)


def test_float32_layers_of_an_all_linear_fp8_scaled_file_are_dequantized_to_float32(tmp_path, fp8_ready_experts):
    """Comfy-Org's files store every Linear in float8, Wan's time embedder too, which diffusers
    computes in float32: torch._scaled_mm takes no float32 bias (the GPU run failed so), so those
    layers get their dequantized weight in float32, and the rest stay float8."""
    from torchao.quantization import Float8Tensor

    paths = []
    for name in ("high", "low"):
        state = to_original_layout(fp8_ready_experts.expert(name).state_dict())
        path = tmp_path / f"{name}_all_linear_fp8_scaled.safetensors"
        write_fp8_scaled(path, state, select=lambda key, s=state: key.endswith(".weight") and s[key].dim() == 2)
        paths.append(path)
    spec = ModelSpec(source="single-file", high_path=str(paths[0]), low_path=str(paths[1]), dtype="bf16",
                     fp8_scaled="as_stored")
    stored = load_experts(spec)
    dequantized = load_experts(dataclasses.replace(spec, fp8_scaled="dequantize"))
    embedder = stored.high.condition_embedder
    for linear in (embedder.time_embedder.linear_1, embedder.time_embedder.linear_2):
        assert type(linear.weight) is torch.nn.Parameter and linear.weight.dtype == torch.float32
        assert linear.bias.dtype == torch.float32
    assert torch.equal(embedder.time_embedder.linear_1.weight,
                       dequantized.high.condition_embedder.time_embedder.linear_1.weight.float())
    assert isinstance(embedder.text_embedder.linear_1.weight, Float8Tensor)
    assert isinstance(stored.high.blocks[0].ffn.net[2].weight, Float8Tensor)
    torch.testing.assert_close(forward(stored.high).float(), forward(dequantized.high).float(), rtol=0.1, atol=0.1)


def test_damaged_fp8_scaled_file_names_the_file_before_any_worker_starts(tmp_path, fp8_ready_experts):
    high, low = fp8_scaled_pair(tmp_path, fp8_ready_experts)
    state = load_file(str(high))
    del state["blocks.0.self_attn.q.scale_weight"]
    save_file(state, str(high))
    with pytest.raises(UserInputError, match=rf"{high}.*blocks.0.self_attn.q.*scale"):
        model_config_for(ModelSpec(source="single-file", high_path=str(high), low_path=str(low)))


def test_mismatched_experts_are_refused(original_files, tiny_experts):
    state = {k: v for k, v in to_original_layout(tiny_experts.high.state_dict()).items() if not k.startswith("blocks.1.")}
    save_file(state, str(original_files[1]))
    with pytest.raises(UserInputError, match="differ in architecture"):
        load_experts(single(*original_files))


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="gguf"), "source"), (dict(dtype="int4"), "dtype"), (dict(source="diffusers"), "directory"),
    (dict(source="single-file", high_path="a.safetensors"), "both"),
])
def test_bad_model_specs(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        ModelSpec(**kwargs)
