"""Loading the experts: diffusers directory, original-layout single files, clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from accel.job.settings import ModelSpec
from accel.errors import UserInputError
from accel.model.loading import load_experts

from helpers import TINY

# diffusers name -> original Wan name, for the keys a WanTransformer3DModel has (inverse of
# diffusers' convert_wan_transformer_to_diffusers), to write files as ComfyUI users keep them.
TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
]


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state.items():
        for new, old in TO_ORIGINAL:
            key = key.replace(new, old)
        key = re.sub(r"\.norm([23])\.", lambda m: f".norm{5 - int(m.group(1))}.", key)  # diffusers swaps them
        key = "head.modulation" if key == "scale_shift_table" else key.replace("scale_shift_table", "modulation")
        converted[key] = tensor.contiguous()
    return converted


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
    with torch.no_grad():
        return module(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]


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


def test_image_to_video_or_other_models_are_refused(original_files, tiny_experts):
    state = to_original_layout(tiny_experts.high.state_dict())
    state["patch_embedding.weight"] = torch.zeros(24, 36, 1, 2, 2)
    save_file(state, str(original_files[0]))
    with pytest.raises(UserInputError, match="16 latent channels"):
        load_experts(single(*original_files))
    save_file({"decoder.conv.weight": torch.zeros(2, 2)}, str(original_files[1]))
    with pytest.raises(UserInputError, match="not a Wan2.2 diffusion model"):
        load_experts(single(original_files[1], original_files[1]))


def test_fp8_scaled_files_are_refused(original_files, tiny_experts):
    state = to_original_layout(tiny_experts.high.state_dict())
    state["blocks.0.self_attn.q.weight"] = state["blocks.0.self_attn.q.weight"].to(torch.float8_e4m3fn)
    state["blocks.0.self_attn.q.scale_weight"] = torch.ones(1)
    save_file(state, str(original_files[0]))
    with pytest.raises(UserInputError, match="fp8-scaled"):
        load_experts(single(*original_files))


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
