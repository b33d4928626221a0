"""Image-to-video: ComfyUI's WanImageToVideo conditioning becomes the experts' 36 input channels,
bad combinations are refused before any work, and parallel runs decide as one process."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from accel.errors import UserInputError
from accel.job.image_to_video import conditioning_image, image_channels
from accel.job.job import Job, check_job
from accel.job.settings import CacheSettings, JobSettings, ModelSpec, SamplerSettings
from accel.job.smoke import smoke_embeddings
from accel.model.latent import WAN21_MEAN, WAN21_STD
from accel.parallel.group import WorkerGroup
from accel.parallel.layout import ParallelLayout
from accel.sampling.loop import run_job
from accel.sampling.runtime import Runtime

TINY_I2V = ModelSpec(source="tiny-random-i2v", dtype="fp32")
LATENT = (1, 16, 3, 8, 8)


def wan_image_to_video(seed: int = 0, known_frames: int = 1):
    """What ComfyUI's WanImageToVideo puts on both conditionings (synthetic: no VAE needed)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 16, LATENT[2], *LATENT[3:], generator=generator)
    mask = torch.ones(1, 1, LATENT[2], *LATENT[3:])
    mask[:, :, :known_frames] = 0.0
    return image, mask


def i2v_job(image: torch.Tensor | None, steps: int = 6, **sampler) -> Job:
    settings = JobSettings(sampler=SamplerSettings(steps=steps, switch_step=steps // 2, shift=5.0, **sampler),
                           cache=CacheSettings())
    return Job(cond=smoke_embeddings(1, 32), uncond=smoke_embeddings(2, 32), latent=torch.zeros(LATENT),
               settings=settings, image=image)


def test_image_channels_are_the_inverted_mask_then_the_normalised_image():
    image, mask = wan_image_to_video(known_frames=1)
    channels = image_channels(image, mask, LATENT)
    assert channels.shape == (1, 20, *LATENT[2:])
    assert torch.equal(channels[:, :4, 0], torch.ones(1, 4, *LATENT[3:]))  # the known frame: 1 - 0
    assert torch.equal(channels[:, :4, 1:], torch.zeros(1, 4, 2, *LATENT[3:]))
    mean = torch.tensor(WAN21_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_STD).view(1, 16, 1, 1, 1)
    assert torch.equal(channels[:, 4:], (image - mean) / std)
    first_last = torch.ones(1, 4, 2, *LATENT[3:])  # WanFirstLastFrameToVideo: 4 channels, fewer frames
    padded = image_channels(image, first_last, LATENT)[:, :4]
    assert torch.equal(padded, torch.zeros(1, 4, *LATENT[2:]))  # 1 - 1 on its frames, 0 padded after


def test_conditioning_image_is_read_from_comfyuis_conditioning_dicts():
    image, mask = wan_image_to_video()
    positive = [[smoke_embeddings(1, 32), {"concat_latent_image": image, "concat_mask": mask}]]
    assert conditioning_image(positive)[0] is image
    assert conditioning_image([[smoke_embeddings(1, 32), {"pooled_output": None}]]) is None


def test_i2v_sampling_follows_the_start_image(runtime_i2v):
    one, two = (image_channels(*wan_image_to_video(seed), LATENT) for seed in (0, 1))
    first = run_job(runtime_i2v, i2v_job(one))
    assert torch.equal(first.latent, run_job(runtime_i2v, i2v_job(one)).latent)
    assert not torch.equal(first.latent, run_job(runtime_i2v, i2v_job(two)).latent)


@pytest.fixture(scope="module")
def runtime_i2v() -> Runtime:
    return Runtime.load(TINY_I2V)


@pytest.mark.parametrize("spec, image, message", [
    (TINY_I2V, None, "image-to-video model \\(36 input channels\\).*WanImageToVideo"),
    (TINY, torch.zeros(1, 20, *LATENT[2:]), "carries an image.*text-to-video model"),
    (TINY_I2V, torch.zeros(1, 20, 2, 8, 8), r"image channels are \[1, 20, 2, 8, 8\].*need \[1, 20, 3, 8, 8\]"),
], ids=["t2v-conditioning-into-i2v", "image-into-t2v", "frames-mismatch"])
def test_bad_image_conditioning_is_refused_before_any_work(spec, image, message):
    with pytest.raises(UserInputError, match=message):
        check_job(spec, i2v_job(image))


def test_a_concat_latent_of_another_size_names_what_was_expected():
    image, mask = wan_image_to_video()
    with pytest.raises(UserInputError, match=r"concat_latent_image is \[1, 16, 3, 8, 8\]; this latent needs "
                                             r"\[batch, 16, 3, 6, 8\]"):
        image_channels(image, mask, (1, 16, 3, 6, 8))


@pytest.mark.parametrize("layout", [ParallelLayout(ulysses=2), ParallelLayout(cfg=2)], ids=["ulysses2", "cfg2"])
def test_i2v_in_a_worker_group_decides_and_samples_as_one_process(runtime_i2v, layout):
    job = i2v_job(image_channels(*wan_image_to_video(), LATENT), steps=8)
    single = run_job(runtime_i2v, job)
    with WorkerGroup(TINY_I2V, layout) as group:
        parallel = group.run(job)
    assert parallel.trace.summary()["ranks_agreed"]
    ours = sorted((r.step, r.expert, r.branch, r.decision) for r in parallel.trace.records)
    assert ours == sorted((r.step, r.expert, r.branch, r.decision) for r in single.trace.records)
    torch.testing.assert_close(parallel.latent, single.latent, rtol=1e-5, atol=1e-6)
