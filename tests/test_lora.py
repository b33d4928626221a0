"""LoRA files: every key layout maps onto the same diffusers parameters, ComfyUI's merge math,
clear errors for files that do not fit."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from accel.errors import UserInputError
from accel.job.settings import LoraSpec, chain_from_json, chain_to_json
from accel.model.files import TINY_CONFIG
from accel.model.lora import (
    collect_patches,
    merge_into,
    merged_weight,
    plan_chain,
    read_lora,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
RANK, ALPHA, STRENGTH = 4, 2.0, 0.8

# original Wan module path -> the diffusers parameter it must change (written out by hand, as an
# independent check of the translation the module borrows from diffusers)
LAYERS = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q.weight",
    "blocks.1.self_attn.o": "blocks.1.attn1.to_out.0.weight",
    "blocks.0.cross_attn.k": "blocks.0.attn2.to_k.weight",
    "blocks.1.cross_attn.v": "blocks.1.attn2.to_v.weight",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj.weight",
    "blocks.1.ffn.2": "blocks.1.ffn.net.2.weight",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1.weight",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2.weight",
    "time_projection.1": "condition_embedder.time_proj.weight",
    "head.head": "proj_out.weight",
    "patch_embedding": "patch_embedding.weight",  # Conv3d: conv-shaped factors
}

DOTTED = ".lora_up.weight", ".lora_down.weight"
PEFT = ".lora_B.weight", ".lora_A.weight"
# format -> (module key from (original path, diffusers module path), up/down suffixes)
FORMATS = {
    "diffusion_model": (lambda o, d: f"diffusion_model.{o}", DOTTED),
    "model.diffusion_model": (lambda o, d: f"model.diffusion_model.{o}", PEFT),
    "kohya lora_unet_": (lambda o, d: "lora_unet_" + o.replace(".", "_"), DOTTED),
    "wan-fun lora_unet__": (lambda o, d: "lora_unet__" + o.replace(".", "_"), DOTTED),
    "peft transformer.": (lambda o, d: f"transformer.{d}", PEFT),
    "lightx2v bare": (lambda o, d: o, PEFT),
    "diffsynth pipe.dit.": (lambda o, d: f"pipe.dit.{o}", PEFT),
    "lycoris_": (lambda o, d: "lycoris_" + d.replace(".", "_"), DOTTED),
    "onetrainer lora_transformer_": (lambda o, d: "lora_transformer_" + d.replace(".", "_"), DOTTED),
    "_lora.up spelling": (lambda o, d: f"diffusion_model.{o}", ("_lora.up.weight", "_lora.down.weight")),
    ".lora.up spelling": (lambda o, d: f"diffusion_model.{o}", (".lora.up.weight", ".lora.down.weight")),
    "lora_linear_layer spelling": (
        lambda o, d: f"diffusion_model.{o}", (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight")),
    "lora_B.default spelling": (
        lambda o, d: f"diffusion_model.{o}", (".lora_B.default.weight", ".lora_A.default.weight")),
    "bare lora_B spelling": (lambda o, d: f"diffusion_model.{o}", (".lora_B", ".lora_A")),
}


@pytest.fixture(scope="module")
def expert() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return WanTransformer3DModel(**TINY_CONFIG).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def shapes(expert) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in expert.named_parameters()}


@pytest.fixture(scope="module")
def factors(shapes) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(up, down) per original layer; conv-shaped for the Conv3d patch embedding (kohya LoCon)."""
    generator = torch.Generator().manual_seed(1)
    out = {}
    for original, param in LAYERS.items():
        shape = shapes[param]
        kernel = (1,) * (len(shape) - 2)
        up = torch.randn(shape[0], RANK, *kernel, generator=generator) * 0.1
        down = torch.randn(RANK, *shape[1:], generator=generator) * 0.1
        out[original] = (up, down)
    return out


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return path


def lora_file(path: Path, fmt: str, factors, alpha: float | None = ALPHA) -> Path:
    module_key, (up_suffix, down_suffix) = FORMATS[fmt]
    tensors = {}
    for original, (up, down) in factors.items():
        stem = module_key(original, LAYERS[original].removesuffix(".weight"))
        tensors[stem + up_suffix], tensors[stem + down_suffix] = up, down
        if alpha is not None:
            tensors[stem + ".alpha"] = torch.tensor(alpha)
    return write(path, tensors)


def merged(expert, plan, strength=STRENGTH) -> dict[str, torch.Tensor]:
    params = dict(expert.named_parameters())
    return {name: merged_weight(params[name], patches) for name, patches in collect_patches([(plan, strength)]).items()}


def test_every_key_format_changes_the_same_parameters_by_the_same_amount(tmp_path, expert, shapes, factors):
    path = lora_file(tmp_path / "ref.safetensors", "diffusion_model", factors)
    reference = merged(expert, resolve(read_lora(path), shapes))
    assert set(reference) == set(LAYERS.values())
    params = dict(expert.named_parameters())
    for original, param in LAYERS.items():  # against the math written out in float64
        up, down = (t.double().flatten(1) for t in factors[original])
        expected = params[param].double() + (STRENGTH * ALPHA / RANK * (up @ down)).reshape(shapes[param])
        torch.testing.assert_close(reference[param].double(), expected, rtol=0, atol=1e-6)
    for index, fmt in enumerate(FORMATS):
        plan = resolve(read_lora(lora_file(tmp_path / f"{index}.safetensors", fmt, factors)), shapes)
        assert plan.skipped == [], fmt
        weights = merged(expert, plan)
        assert set(weights) == set(reference), fmt
        for name in reference:
            assert torch.equal(weights[name], reference[name]), (fmt, name)


def test_conv_factors_flattened_or_not_give_the_same_patch_embedding(tmp_path, expert, shapes, factors):
    up, down = factors["patch_embedding"]
    conv = write(tmp_path / "conv.safetensors", {"diffusion_model.patch_embedding.lora_up.weight": up,
                                                 "diffusion_model.patch_embedding.lora_down.weight": down})
    flat = write(tmp_path / "flat.safetensors", {"diffusion_model.patch_embedding.lora_up.weight": up.flatten(1),
                                                 "diffusion_model.patch_embedding.lora_down.weight": down.flatten(1)})
    a, b = (merged(expert, resolve(read_lora(p), shapes), 1.0)["patch_embedding.weight"] for p in (conv, flat))
    assert a.shape == (24, 16, 1, 2, 2) and torch.equal(a, b)


@pytest.mark.parametrize("alpha, scale", [(8.0, 2.0), (ALPHA, ALPHA / RANK), (None, 1.0)])
def test_alpha_scales_by_alpha_over_rank_and_no_alpha_means_one(tmp_path, expert, shapes, factors, alpha, scale):
    plan = resolve(read_lora(lora_file(tmp_path / "a.safetensors", "kohya lora_unet_", factors, alpha)), shapes)
    adapter = plan.targets["blocks.0.attn1.to_q.weight"]
    weight = dict(expert.named_parameters())["blocks.0.attn1.to_q.weight"]
    up, down = factors["blocks.0.self_attn.q"]
    delta = merged_weight(weight, [(adapter, 0.5)]) - weight
    torch.testing.assert_close(delta, 0.5 * scale * up @ down, rtol=0, atol=1e-6)


def test_diff_and_diff_b_are_full_deltas_including_the_swapped_norm(tmp_path, expert, shapes):
    generator = torch.Generator().manual_seed(2)
    deltas = {
        "diffusion_model.blocks.0.self_attn.q.diff": ("blocks.0.attn1.to_q.weight", (24, 24)),
        "diffusion_model.blocks.0.self_attn.q.diff_b": ("blocks.0.attn1.to_q.bias", (24,)),
        "diffusion_model.head.head.diff_b": ("proj_out.bias", (64,)),
        # the original affine cross-attention norm is norm3; diffusers calls it norm2
        "diffusion_model.blocks.1.norm3.diff": ("blocks.1.norm2.weight", (24,)),
        "diffusion_model.blocks.1.norm3.diff_b": ("blocks.1.norm2.bias", (24,)),
        "lora_unet_blocks_1_cross_attn_norm_k.diff": ("blocks.1.attn2.norm_k.weight", (24,)),
        "transformer.blocks.1.ffn.net.0.proj.lora_B.bias": ("blocks.1.ffn.net.0.proj.bias", (32,)),  # diffusers' diff_b
    }
    tensors = {key: torch.randn(shape, generator=generator) for key, (_, shape) in deltas.items()}
    plan = resolve(read_lora(write(tmp_path / "diff.safetensors", tensors)), shapes)
    assert {name: adapter.keys[0] for name, adapter in plan.targets.items()} == {p: k for k, (p, _) in deltas.items()}
    weights, params = merged(expert, plan, 0.25), dict(expert.named_parameters())
    for key, (param, _) in deltas.items():
        assert torch.equal(weights[param], params[param] + 0.25 * tensors[key]), key


def test_diff_m_changes_the_block_and_head_modulation(tmp_path, expert, shapes):
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "diffusion_model.blocks.1.diff_m": torch.randn(1, 6, 24, generator=generator),  # lightx2v
        "diffusion_model.head.diff_m": torch.randn(1, 2, 24, generator=generator),
        # WanVideoWrapper's rename of diff_m, which ComfyUI itself then maps
        "diffusion_model.blocks.0.modulation.diff": torch.randn(1, 6, 24, generator=generator),
    }
    plan = resolve(read_lora(write(tmp_path / "m.safetensors", tensors)), shapes)
    assert {name: a.keys[0] for name, a in plan.targets.items()} == {
        "blocks.1.scale_shift_table": "diffusion_model.blocks.1.diff_m",
        "scale_shift_table": "diffusion_model.head.diff_m",
        "blocks.0.scale_shift_table": "diffusion_model.blocks.0.modulation.diff",
    }
    params = dict(expert.named_parameters())
    assert torch.equal(merged(expert, plan, 1.0)["scale_shift_table"],
                       params["scale_shift_table"] + tensors["diffusion_model.head.diff_m"])
    bare = write(tmp_path / "bare.safetensors", {"blocks.1.diff_m": tensors["diffusion_model.blocks.1.diff_m"]})
    bare = resolve(read_lora(bare), shapes)
    assert list(bare.targets) == ["blocks.1.scale_shift_table"]


def test_two_loras_on_one_weight_add_in_chain_order_in_fp32_then_cast_once(tmp_path, shapes, factors):
    a = resolve(read_lora(lora_file(tmp_path / "a.safetensors", "diffusion_model", factors)), shapes)
    b_factors = {k: (up.flip(0), down * 3) for k, (up, down) in factors.items()}
    b = resolve(read_lora(lora_file(tmp_path / "b.safetensors", "kohya lora_unet_", b_factors, alpha=None)), shapes)
    patches = collect_patches([(a, 0.7), (b, -1.3)])
    name = "blocks.1.ffn.net.2.weight"
    assert [strength for _, strength in patches[name]] == [0.7, -1.3]
    weight = torch.randn(shapes[name], generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    (up_a, down_a), (up_b, down_b) = factors["blocks.1.ffn.2"], b_factors["blocks.1.ffn.2"]
    expected = weight.float()
    expected += (0.7 * (ALPHA / RANK)) * (up_a @ down_a)
    expected += (-1.3 * 1.0) * (up_b @ down_b)
    out = merged_weight(weight, patches[name])
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.to(torch.bfloat16))
    fp32 = merged_weight(weight.float(), patches[name])
    up_a, down_a, up_b, down_b = (t.double() for t in (up_a, down_a, up_b, down_b))
    exact = weight.double() + 0.7 * ALPHA / RANK * (up_a @ down_a) - 1.3 * (up_b @ down_b)
    torch.testing.assert_close(fp32.double(), exact, rtol=0, atol=1e-5)


def test_strength_zero_leaves_the_weight_bit_identical(tmp_path, shapes, factors):
    plan = resolve(read_lora(lora_file(tmp_path / "a.safetensors", "diffusion_model", factors)), shapes)
    weight = torch.tensor([[-0.0, 1e-30], [float("inf"), -3.0]], dtype=torch.bfloat16)
    adapter = plan.targets["blocks.0.attn1.to_q.weight"]
    assert merged_weight(weight, [(adapter, 0.0), (adapter, -0.0)]) is weight
    assert collect_patches([(plan, 0.0)]) == {}
    # a strength of 0 on one expert does not even open the file (as ComfyUI's loader node)
    chain = (LoraSpec(str(tmp_path / "missing.safetensors"), strength_high=1.0, strength_low=0.0),)
    assert plan_chain(chain, "low", shapes) == ({}, [])
    with pytest.raises(UserInputError, match="missing.safetensors"):
        plan_chain(chain, "high", shapes)


def test_a_wan21_lora_on_wan22_skips_and_counts_the_image_keys(tmp_path, shapes, factors):
    up, down = factors["blocks.0.cross_attn.k"]
    tensors = {
        "diffusion_model.blocks.0.cross_attn.k.lora_up.weight": up,
        "diffusion_model.blocks.0.cross_attn.k.lora_down.weight": down,
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": up,
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": down,
        "diffusion_model.blocks.0.cross_attn.k_img.alpha": torch.tensor(4.0),
        "diffusion_model.blocks.0.cross_attn.v_img.lora_up.weight": up,
        "diffusion_model.blocks.0.cross_attn.v_img.lora_down.weight": down,
        "diffusion_model.blocks.0.cross_attn.norm_k_img.diff": torch.ones(24),
        "diffusion_model.img_emb.proj.1.lora_up.weight": up,
        "diffusion_model.img_emb.proj.1.lora_down.weight": down,
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
    }
    plan = resolve(read_lora(write(tmp_path / "wan21_i2v.safetensors", tensors)), shapes)
    assert list(plan.targets) == ["blocks.0.attn2.to_k.weight"]
    assert len(plan.skipped) == 9 and all("img" in k or "lora_te" in k for k in plan.skipped)
    assert plan.skipped_summary().startswith("wan21_i2v.safetensors: 9 LoRA keys match no parameter")


def test_a_file_that_matches_nothing_is_an_error_naming_it(tmp_path, shapes):
    path = write(tmp_path / "sdxl_style.safetensors", {
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(8, 4),
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 8),
        "diffusion_model.blocks.0.cross_attn.k_img.diff": torch.zeros(24, 24),
    })
    with pytest.raises(UserInputError, match=r"sdxl_style\.safetensors: none of its 3 keys match"):
        resolve(read_lora(path), shapes)


def test_a_lora_for_another_width_is_an_error_naming_key_and_shapes(tmp_path, shapes):
    path = write(tmp_path / "wide.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(32, 4),
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 32),
    })
    with pytest.raises(UserInputError) as error:
        resolve(read_lora(path), shapes)
    message = str(error.value)
    for part in ("wide.safetensors", "diffusion_model.blocks.0.self_attn.q.lora_up.weight", "(32, 32)", "(24, 24)"):
        assert part in message
    diff = write(tmp_path / "wide_diff.safetensors",
                 {"diffusion_model.blocks.0.modulation.diff": torch.zeros(1, 6, 32)})
    with pytest.raises(UserInputError, match=r"\(1, 6, 32\).*\(1, 6, 24\)"):
        resolve(read_lora(diff), shapes)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".pth", ".bin"])
def test_pickled_loras_are_refused_without_being_opened(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"lora{suffix}"
    torch.save({"diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(24, 24)}, path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    with pytest.raises(UserInputError, match=rf"lora\{suffix}: only \.safetensors"):
        read_lora(path)


@pytest.mark.parametrize("key, what", [
    ("diffusion_model.patch_embedding.lora_mid.weight", "lora_mid"),
    ("diffusion_model.blocks.0.self_attn.q.dora_scale", "DoRA"),
    ("lora_unet_blocks_0_self_attn_q.hada_w1_a", "LoHa"),
    ("lycoris_blocks_0_attn1_to_q.lokr_w1", "LoKr"),
])
def test_other_adapter_kinds_are_refused(tmp_path, key, what):
    path = write(tmp_path / "other.safetensors", {key: torch.zeros(4, 4)})
    with pytest.raises(UserInputError, match=what):
        read_lora(path)


def test_half_a_pair_is_an_error(tmp_path):
    path = write(tmp_path / "half.safetensors",
                 {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(24, 4)})
    with pytest.raises(UserInputError, match="half.safetensors.*incomplete LoRA pair"):
        read_lora(path)


def test_merge_into_changes_the_module_like_merged_weight(tmp_path, expert, shapes, factors):
    plan = resolve(read_lora(lora_file(tmp_path / "a.safetensors", "lightx2v bare", factors)), shapes)
    patches = collect_patches([(plan, 1.0)])
    copy = type(expert).from_config(expert.config).requires_grad_(False)
    copy.load_state_dict(expert.state_dict())
    expected = merged(expert, plan, 1.0)
    assert sorted(merge_into(copy, patches)) == sorted(expected)
    assert merge_into(copy, collect_patches([(plan, 0.0)])) == []
    params = dict(copy.named_parameters())
    for name, weight in expected.items():
        assert torch.equal(params[name], weight)
    untouched = "blocks.0.attn1.to_k.weight"
    assert torch.equal(params[untouched], dict(expert.named_parameters())[untouched])


def test_lora_spec_is_frozen_json_and_validated():
    chain = (LoraSpec("/loras/a.safetensors", 1, 0.5), LoraSpec("/loras/b.safetensors", strength_low=-2.0))
    assert chain_from_json(json.loads(json.dumps(chain_to_json(chain)))) == chain
    assert chain[0].strength_high == 1.0 and isinstance(chain[0].strength_high, float)
    assert (chain[0].strength("high"), chain[0].strength("low")) == (1.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chain[0].strength_high = 2.0
    for bad in (math.nan, 101.0, "1", True):
        with pytest.raises(UserInputError, match="strength_high"):
            LoraSpec("/loras/a.safetensors", strength_high=bad)
    with pytest.raises(UserInputError, match="path"):
        LoraSpec("")
    with pytest.raises(UserInputError, match="unknown fields strength"):
        LoraSpec.from_json({"path": "a.safetensors", "strength": 1.0})


def test_the_module_is_host_safe():
    code = (
        "import sys; import accel.model.lora; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'torchao', 'cache_dit', 'comfy')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
