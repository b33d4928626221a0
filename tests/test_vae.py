"""The Wan2.1 VAE in the worker group (accel/model/vae.py, WorkerGroup.decode/encode, the decode node),
on a tiny random VAE (width 8) written in ComfyUI's original key layout. CPU only.

ComfyUI's own decode of the same file is compared in tests/integration/test_vae_parity.py (ComfyUI
builds only the released width 96, so that test writes a full-width random VAE)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import psnr, sub, tiny_job
from safetensors.torch import save_file

from accel.errors import UserInputError
from accel.job.settings import ModelSpec
from accel.model import vae as V
from accel.parallel.group import WorkerGroup
from accel.parallel.layout import ParallelLayout

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelSpec(source="tiny-random", dtype="fp32")
LATENT_SHAPE = (1, 16, 2, 8, 8)  # 5 frames of 64x64
SMALL_TILES = (48, 32)  # pixels: 2x2 tiles of <= 6x6 latent pixels over an 8x8 latent (the default is 256/192)
FP16_STEP = 2.0 ** -11  # the frames travel in fp16: values in 0..1 round by at most half of this


def latent(seed: int = 0, shape=LATENT_SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory) -> Path:
    return V.save_random_vae(tmp_path_factory.mktemp("vae") / "tiny_wan_2.1_vae.safetensors", seed=0)


@pytest.fixture(scope="module")
def vae(vae_file):
    return V.load_vae(vae_file)


# --- the file: layout, conversion, config ----------------------------------------------------------

def test_the_original_layout_round_trips_through_diffusers_single_file_conversion(vae_file, vae):
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors import safe_open

    # the conversion load_vae applies is the one from_single_file uses for AutoencoderKLWan
    assert SINGLE_FILE_LOADABLE_CLASSES["AutoencoderKLWan"]["checkpoint_mapping_fn"] is convert_wan_vae_to_diffusers
    with safe_open(str(vae_file), "pt") as handle:
        keys = set(handle.keys())
    assert keys == set(V.original_keys())  # the names ComfyUI's WanVAE has (checked in the integration test)
    assert {"decoder.middle.0.residual.0.gamma", "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.4.shortcut.weight",
            "encoder.downsamples.3.shortcut.weight", "encoder.head.2.weight", "conv1.weight", "conv2.bias"} <= keys
    built = V.random_vae(seed=0).state_dict()
    loaded = vae.state_dict()
    assert built.keys() == loaded.keys() and all(torch.equal(built[k], loaded[k]) for k in built)


def test_the_config_comes_from_the_header_and_other_files_are_refused(tmp_path, vae_file):
    config = V.vae_config(vae_file)
    assert (config["base_dim"], config["decoder_base_dim"], config["z_dim"]) == (8, 8, 16)
    wan22 = tmp_path / "wan2.2_vae.safetensors"
    save_file({V.WAN22_KEY: torch.zeros(1), V.WAN21_KEY: torch.zeros(1)}, str(wan22))
    with pytest.raises(UserInputError, match="Wan2.2 VAE"):
        V.vae_config(wan22)
    other = tmp_path / "sdxl_vae.safetensors"
    save_file({"decoder.mid.block_1.norm1.weight": torch.zeros(1)}, str(other))
    with pytest.raises(UserInputError, match="not a Wan VAE"):
        V.vae_config(other)
    pickle = tmp_path / "wan_vae.pth"
    pickle.write_bytes(b"not read")
    with pytest.raises(UserInputError, match="only .safetensors"):
        V.vae_config(pickle)
    # the diffusers layout loads too (as diffusers' own vae/ folder stores it)
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(V.random_vae(seed=1).state_dict(), str(diffusers_file))
    assert V.vae_config(diffusers_file)["base_dim"] == 8
    assert torch.equal(V.load_vae(diffusers_file).decoder.conv_in.weight, V.random_vae(seed=1).decoder.conv_in.weight)


# --- ComfyUI's layout of the frames ----------------------------------------------------------------

def test_decoded_frames_follow_comfyuis_vaedecode(vae):
    """ComfyUI's VAEDecode on a Wan latent: [B*T, H, W, 3] float32 in 0..1, the batch's videos one after
    another, T = 1 + 4 (t - 1), clamp((x + 1) / 2) of the VAE's output."""
    z = latent(1, (2, 16, 2, 4, 6))
    frames = V.decode(vae, z, tiling=False)
    assert frames.shape == (2 * 5, 32, 48, 3) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    assert 0.15 < frames.std() and ((frames == 0) | (frames == 1)).float().mean() < 0.2  # not clamped flat
    with torch.no_grad():
        video = vae.decode(z[1:]).sample  # [1, 3, T, H, W] in -1..1
    expected = torch.clamp((video + 1) / 2, 0, 1)[0].permute(1, 2, 3, 0)
    torch.testing.assert_close(frames[5:], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(frames[:5], V.decode(vae, z[:1], tiling=False), rtol=0, atol=1e-6)
    with pytest.raises(UserInputError, match="16"):
        V.decode(vae, torch.zeros(1, 48, 2, 4, 4))


def test_encode_gives_comfyuis_vaeencode_latent(vae):
    frames = V.decode(vae, latent(2, (1, 16, 2, 4, 4)), tiling=False)  # 5 frames of 32x32
    z = V.encode(vae, frames, tiling=False)
    assert z.shape == (1, 16, 2, 4, 4) and z.dtype == torch.float32
    with torch.no_grad():
        mean = vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z, mean, rtol=0, atol=1e-6)
    # ComfyUI crops to multiples of 8 around the centre and drops an alpha channel
    padded = torch.nn.functional.pad(frames.permute(0, 3, 1, 2), (2, 3, 1, 1), value=0.3).permute(0, 2, 3, 1)
    padded = torch.cat([padded, torch.ones_like(padded[..., :1])], dim=-1)  # RGBA, 34 x 37
    torch.testing.assert_close(V.encode(vae, padded, tiling=False), z, rtol=0, atol=1e-6)


# --- tiling ---------------------------------------------------------------------------------------

def local_vae(damp: float = 0.1):
    """The tiny random VAE with its 3x3 convs' off-centre taps scaled by ``damp``: a decoder whose
    pixels depend mostly on nearby latents, as a trained VAE's do (the random one's do not)."""
    model = V.random_vae(seed=0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.kernel_size[-1] == 3:
                mask = torch.full(module.kernel_size[-2:], damp)
                mask[1, 1] = 1.0
                module.weight.mul_(mask)
    return model


def test_tiled_decode_is_close_to_the_untiled_one(vae):
    z = latent(3, (1, 16, 2, 12, 16))  # 96 x 128 pixels: 3 x 4 tiles of 48 every 32
    # a latent within one tile takes diffusers' untiled path: identical
    torch.testing.assert_close(V.decode(vae, z, tiling=True), V.decode(vae, z, tiling=False), rtol=0, atol=0)
    local = local_vae()
    untiled, tiled = V.decode(local, z, tiling=False), V.decode(local, z, tiling=True, tile=SMALL_TILES)
    local_psnr = psnr(tiled, untiled)
    plain_psnr = psnr(V.decode(vae, z, tiling=True, tile=SMALL_TILES), V.decode(vae, z, tiling=False))
    print(f"\ntiled (48 px every 32) vs untiled: {local_psnr:.1f} dB on a local random VAE (mean |diff| "
          f"{(tiled - untiled).abs().mean():.4f}); {plain_psnr:.1f} dB on the plain random VAE")
    assert local_psnr > 30  # a misplaced or unblended tile would be far off
    assert tiled.shape == untiled.shape
    with pytest.raises(UserInputError, match="multiples of 8"):
        V.decode(vae, z, tiling=True, tile=(50, 32))


def test_auto_tiling_tiles_where_tiles_are_faster_or_whole_frames_do_not_fit():
    """480 x 832 (15 tiles of 256 every 192): whole frames on 1-2 ranks, tiles from 3 ranks on (each
    then decodes at most 5 tiles, fewer pixels than a whole frame), or when memory is short."""
    frames, tile = (480, 832), V.DEFAULT_TILE
    assert V.tile_count(frames, tile) == 15 and V.tile_count((256, 256), tile) == 0
    need = V.untiled_bytes((1, 16, 21, 60, 104), torch.bfloat16)
    assert 5e9 < need < 7e9  # measured on an H200: 5.0 GB peak
    chosen = {world: V.resolve_tiling("auto", frames, tile, world, need, 100 * 2**30)[0] for world in (1, 2, 3, 8)}
    assert chosen == {1: False, 2: False, 3: True, 8: True}
    tiled, reason = V.resolve_tiling("auto", frames, tile, 1, need, 4 * 2**30)
    assert tiled and "GiB free" in reason
    assert V.resolve_tiling("auto", (256, 256), tile, 8, need, 1)[0] is False  # one tile: nothing to split
    assert V.resolve_tiling("on", frames, tile, 1) == (True, "tiling on")
    assert V.resolve_tiling(False, frames, tile, 8) == (False, "tiling off")
    with pytest.raises(UserInputError, match="tiling"):
        V.resolve_tiling("maybe", frames, tile, 1)


# --- in the worker group --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[1, 2], ids=["1-rank", "2-ranks"])
def group(request):
    with WorkerGroup(TINY, ParallelLayout(ulysses=request.param)) as warm:
        yield warm


def test_group_decode_equals_the_in_process_decode(group, vae_file, vae):
    z = latent(4)
    for tiling, tile in ((True, SMALL_TILES), (False, None)):
        expected = V.decode(vae, z, tiling=tiling, tile=tile)
        frames = group.decode(z, vae_file, tiling, tile=tile)
        info = group.last_vae_info
        assert frames.shape == expected.shape == (5, 64, 64, 3) and frames.dtype == torch.float32
        difference = (frames - expected).abs().max().item()
        print(f"\n{group.layout.world} rank(s), tiling {tiling}: max |diff| {difference:.2e} "
              f"(fp16 transfer), {info['seconds']:.1f} s, load {info['load_s']:.2f} s")
        assert difference <= FP16_STEP / 2 + 1e-6
        assert info["world"] == group.layout.world and info["dtype"] == "torch.float32"
    assert info["load_s"] == 0.0  # the second request found the VAE warm
    # auto, 4 tiles of 40 every 32 over 64 x 64: whole frames on 1 rank (4 x 40^2 > 64^2 pixels), tiles on 2
    frames = group.decode(z, vae_file, "auto", tile=(40, 32))
    info = group.last_vae_info
    assert (info["tiles"] > 0) == (group.layout.world > 1), info
    expected = V.decode(vae, z, tiling=info["tiles"] > 0, tile=(40, 32))
    assert (frames - expected).abs().max() <= FP16_STEP / 2 + 1e-6
    with pytest.raises(UserInputError, match="tiling"):
        group.decode(z, vae_file, "sometimes")


def test_group_encode_equals_the_in_process_encode(group, vae_file, vae):
    frames = V.decode(vae, latent(5), tiling=False)
    expected = V.encode(vae, frames, tiling=True, tile=SMALL_TILES)
    z = group.encode(frames, vae_file, True, tile=SMALL_TILES)
    assert z.shape == (1, 16, 2, 8, 8)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)


def test_the_last_jobs_latent_is_decoded_where_the_workers_kept_it(group, vae_file, vae, monkeypatch):
    from accel.job.settings import JobSettings, SamplerSettings
    from accel.parallel import group as group_module

    sent = []
    real_send = group_module.send
    monkeypatch.setattr(group_module, "send", lambda conn, message: (sent.append(message), real_send(conn, message)))
    with torch.inference_mode():  # as ComfyUI runs nodes: inference tensors, no version counter
        result = group.run(tiny_job(JobSettings(sampler=SamplerSettings(steps=2))))
        frames = group.decode(result.latent, vae_file, False)
    request = sent[-1]
    assert request.kind == "decode" and request.tensors == {} and request.payload["latent_of_job"] >= 1
    assert (frames - V.decode(vae, result.latent, tiling=False)).abs().max() <= FP16_STEP / 2 + 1e-6
    # changed in place since, or another tensor: sent as it is now
    with torch.inference_mode():
        halved = result.latent.mul_(0.5)
    for changed in (halved, result.latent.clone()):
        frames = group.decode(changed, vae_file, False)
        assert list(sent[-1].tensors) == ["latent"] and "latent_of_job" not in sent[-1].payload
        assert (frames - V.decode(vae, changed, tiling=False)).abs().max() <= FP16_STEP / 2 + 1e-6


def test_group_refuses_bad_requests_and_stays_usable(group, vae_file, tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        group.decode(latent(), tmp_path / "missing.safetensors")
    with pytest.raises(UserInputError, match="16"):
        group.decode(torch.zeros(1, 4, 1, 8, 8), vae_file)
    with pytest.raises(UserInputError, match="dtype"):
        group.decode(latent(), vae_file, dtype="int8")
    # another file replaces the warm VAE (a replaced file too: it is keyed by size and mtime)
    other = V.save_random_vae(tmp_path / "other.safetensors", seed=7)
    frames = group.decode(latent(6, (1, 16, 1, 4, 4)), other, False)
    assert group.last_vae_info["load_s"] > 0 and frames.shape == (1, 32, 32, 3)
    expected = V.decode(V.load_vae(other), latent(6, (1, 16, 1, 4, 4)), tiling=False)
    assert (frames - expected).abs().max() <= FP16_STEP / 2 + 1e-6
    assert group.alive


# --- the node -------------------------------------------------------------------------------------

def decode_node(pack):
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return nodes["CacheDiT_WanVAEDecode"]


@pytest.fixture
def vae_list(pack, tmp_path, monkeypatch, vae_file):
    """ComfyUI's folder_paths, faked: models/vae under tmp_path holding the tiny VAE and a non-VAE file."""
    folder = tmp_path / "models" / "vae"
    (folder / "wan").mkdir(parents=True)
    (folder / "wan" / "tiny_wan_2.1_vae.safetensors").write_bytes(vae_file.read_bytes())
    save_file({"decoder.mid.block_1.norm1.weight": torch.zeros(1)}, str(folder / "sdxl_vae.safetensors"))

    def get_filename_list(name):  # the other folders are empty
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if name == "vae" else []

    def get_full_path(name, entry):
        path = folder / entry
        return str(path) if name == "vae" and path.is_file() else None

    fake = SimpleNamespace(get_filename_list=get_filename_list, get_full_path=get_full_path,
                           get_folder_paths=lambda name: [str(folder)], get_user_directory=lambda: str(tmp_path / "user"))
    monkeypatch.setattr(sub(pack, "nodes.comfy"), "folder_paths", fake)
    return folder


UNLISTED = ("/etc/hostname", "../../etc/passwd", "no_such_vae.safetensors", "../vae/wan/tiny_wan_2.1_vae.safetensors")


def test_the_node_is_registered_with_tooltips_on_every_input(pack):
    schema = decode_node(pack).define_schema()
    assert schema.category == "cache-dit" and schema.description
    assert [i.id for i in schema.inputs] == ["samples", "vae_name", "tiling", "gpus", "dtype", "model"]
    assert all(i.tooltip for i in schema.inputs)
    assert [o.io_type for o in schema.outputs] == ["IMAGE"]
    tiling = next(i for i in schema.inputs if i.id == "tiling")
    assert tiling.default == "auto" and tiling.options == ["auto", "on", "off"]
    assert next(i for i in schema.inputs if i.id == "model").optional


def test_the_node_refuses_any_vae_name_outside_the_list_with_one_text(pack, vae_list):
    node, errors = decode_node(pack), sub(pack, "accel.errors")
    assert node.define_schema().inputs[1].options == ["sdxl_vae.safetensors", "wan/tiny_wan_2.1_vae.safetensors"]
    texts = set()
    for name in UNLISTED:
        message = node.validate_inputs(vae_name=name, tiling="auto", gpus="cpu", dtype="auto")
        assert message is not True and "/etc" not in message and str(vae_list) not in message
        with pytest.raises(errors.UserInputError) as error:
            node.execute(samples={"samples": latent()}, vae_name=name, tiling="auto", gpus="cpu", dtype="auto")
        assert str(error.value) == message
        texts.add(message)
    assert texts == {("vae_name: not in ComfyUI's 'vae' list: pick an entry of the list (after adding a model, "
                      "refresh the page)")}
    # a listed file that is not a Wan VAE: named by its entry, never by its path
    message = node.validate_inputs(vae_name="sdxl_vae.safetensors", tiling="auto", gpus="cpu", dtype="auto")
    assert "not a Wan VAE" in message and "sdxl_vae.safetensors" in message and str(vae_list) not in message
    listed = dict(vae_name="wan/tiny_wan_2.1_vae.safetensors", tiling="auto", gpus="cpu", dtype="auto")
    assert node.validate_inputs(**listed) is True
    assert "not one of the choices" in node.validate_inputs(**{**listed, "dtype": "int8"})
    assert "not one of the choices" in node.validate_inputs(**{**listed, "tiling": True})
    assert "gpus" in node.validate_inputs(**{**listed, "gpus": "zero"})


def test_the_node_decodes_in_the_warm_group_or_starts_one_for_the_model(pack, vae_list, vae):
    node, errors = decode_node(pack), sub(pack, "accel.errors")
    registry = sub(pack, "accel.parallel.registry").REGISTRY
    registry.release()
    args = dict(vae_name="wan/tiny_wan_2.1_vae.safetensors", tiling="auto", gpus="cpu", dtype="auto")
    z = latent(8, (1, 16, 2, 4, 4))
    with pytest.raises(errors.UserInputError, match="no warm worker group"):
        node.execute(samples={"samples": z}, **args)
    handles = sub(pack, "nodes.handles")
    model = handles.ModelHandle(spec=sub(pack, "accel.job.settings").ModelSpec(source="tiny-random", dtype="fp32"))
    images = node.execute(samples={"samples": z}, model=model, **args)[0]
    expected = V.decode(vae, z, tiling=True)
    assert images.shape == (5, 32, 32, 3) and images.dtype == torch.float32
    assert (images - expected).abs().max() <= FP16_STEP / 2 + 1e-6
    started = registry.current
    # the warm group serves the next decode whatever its model (a sampler's group on the same ranks)
    again = node.execute(samples={"samples": z}, **args)[0]
    assert registry.current is started and torch.equal(again, images)
    assert started.last_vae_info["load_s"] == 0.0
    # other ranks: without a model there is nothing to start
    with pytest.raises(errors.UserInputError, match="no warm worker group on 2 CPU"):
        node.execute(samples={"samples": z}, **{**args, "gpus": "cpu:2"})
    assert registry.current is started and started.alive
    registry.release()


def test_validating_the_node_imports_nothing_heavy(vae_file):
    """ComfyUI's process builds the schema and validates the prompt: no diffusers / cache-dit there."""
    from test_host_import import (
        IMPORT_AS_COMFYUI,
        REPORT,
        heavy_roots,
        run_in_fresh_python,
    )

    calls = textwrap.dedent(f"""
        import asyncio
        nodes = {{c.define_schema().node_id: c for c in asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())}}
        node = nodes["CacheDiT_WanVAEDecode"]
        assert node.validate_inputs(vae_name={str(vae_file)!r}, tiling="auto", gpus="cpu", dtype="auto") is True
    """)
    report = run_in_fresh_python(IMPORT_AS_COMFYUI + calls + REPORT)
    assert not heavy_roots(report), f"validating the decode node imported {sorted(heavy_roots(report))}"
    assert json.dumps(report)
