"""ComfyUI-compatible sigmas, KSamplerAdvanced windows, noise and Euler arithmetic (CPU, fast).

Reference lists marked "ComfyUI 0.3.64" were printed by ComfyUI's own calculate_sigmas for a
ModelSamplingSD3(shift) model; the module reproduced every scheduler bit for bit there (steps
1..100 and up to 1500, shifts 0.5..100), so they pin the behaviour without ComfyUI installed.
"""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import pytest
import torch
from comfy_reference import (
    SamplerWindow,
    ksampler_advanced_window,
    percent_to_sigma,
    run_ksampler_advanced,
)

from accel.errors import UserInputError
from accel.sampling.comfy_sigmas import (
    COMFY_SCHEDULERS,
    beta_ppf,
    cfg_denoised,
    comfy_flow_step,
    comfy_noise,
    comfy_sigmas,
    euler_step,
    flow_denoised,
    flow_shift,
    inverse_noise_scaling,
    latent_is_empty,
    noise_scaling,
    regularized_incomplete_beta,
    sigma_table,
    timestep_of_sigma,
    uses_uncond,
)

MODULE = Path(__file__).resolve().parents[1] / "accel" / "sampling" / "comfy_sigmas.py"


def rounded(values, digits=3):
    return [round(v, digits) for v in values]


# --- host safety -------------------------------------------------------------------------------

def test_module_imports_only_stdlib_math_and_torch():
    allowed = {"__future__", "functools", "itertools", "math", "collections", "dataclasses", "typing", "torch",
               "errors"}
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert {alias.name.split(".")[0] for alias in node.names} <= allowed
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] in allowed, node.module


# --- the flow shift and the sigma table ----------------------------------------------------------

def test_flow_shift_formula_and_identity_at_shift_1():
    assert flow_shift(0.5, 8.0) == pytest.approx(8 * 0.5 / (1 + 7 * 0.5))
    assert flow_shift(1.0, 5.0) == 1.0 and flow_shift(0.0, 5.0) == 0.0
    t = torch.rand(7)
    assert flow_shift(t, 1.0) is t


def test_sigma_table_is_float32_ascending_and_ends_at_one():
    table = sigma_table(8.0)
    assert table.dtype == torch.float32 and table.shape == (1000,)
    assert bool((table[1:] > table[:-1]).all())
    assert float(table[-1]) == 1.0
    assert float(table[0]) == pytest.approx(flow_shift(0.001, 8.0), rel=1e-6)
    assert float(timestep_of_sigma(table[-1])) == 1000.0
    table[0] = 5.0  # a copy: the cached table is untouched
    assert float(sigma_table(8.0)[0]) < 0.01


def test_percent_to_sigma():
    assert percent_to_sigma(0.0, 8.0) == 1.0 and percent_to_sigma(1.0, 8.0) == 0.0
    assert percent_to_sigma(0.25, 8.0) == pytest.approx(flow_shift(0.75, 8.0))


# --- schedulers --------------------------------------------------------------------------------

def test_simple_8_steps_shift_8():
    assert rounded(comfy_sigmas("simple", 8, 8.0)) == [1, .982, .960, .930, .889, .828, .727, .533, 0]


def test_simple_4_steps_shift_5():
    sigmas = comfy_sigmas("simple", 4, 5.0)
    assert rounded(sigmas, 4) == [1, .9375, .8333, .625, 0]
    assert sigmas[-1] == 0.0 and sigmas[0] == 1.0


def test_simple_is_every_nth_table_entry():
    table = sigma_table(8.0).tolist()
    assert comfy_sigmas("simple", 20, 8.0)[:-1] == [table[999 - 50 * k] for k in range(20)]


def test_normal_8_steps_shift_8():
    assert rounded(comfy_sigmas("normal", 8, 8.0)) == [1, .980, .953, .915, .859, .767, .585, .060, 0]
    # ComfyUI 0.3.64; the values the notes give for diffusers at 4 steps, shift 5
    assert rounded(comfy_sigmas("normal", 4, 5.0)) == [1, .910, .717, .024, 0]


@pytest.mark.parametrize("steps", [4, 8, 20, 30])
@pytest.mark.parametrize("shift", [5.0, 8.0, 12.0])
def test_normal_is_diffusers_flow_match_euler(steps, shift):
    # ComfyUI's "normal" = linspace of timesteps between the (shifted) table ends, shifted again:
    # the same schedule as diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(steps).
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    theirs = [float(s) for s in scheduler.sigmas]
    ours = comfy_sigmas("normal", steps, shift)
    assert len(ours) == len(theirs)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 2e-7


def test_sgm_uniform():
    sigmas = comfy_sigmas("sgm_uniform", 8, 8.0)
    assert rounded(sigmas, 7) == [1.0, 0.9826124, 0.9604058, 0.9310544, 0.8904485, 0.8305804,
                                  0.7334815, 0.5487514, 0.0]  # ComfyUI 0.3.64
    # steps+1 evenly spaced timesteps from 1 to sigma_min, the last dropped, shifted
    end = flow_shift(0.001, 8.0)
    expected = [flow_shift(1 - k * (1 - end) / 8, 8.0) for k in range(8)] + [0.0]
    assert sigmas == pytest.approx(expected, abs=1e-6)


def test_beta_endpoints_monotonic_and_comfy_values():
    for steps in (1, 2, 3, 4, 8, 20, 30, 40):
        sigmas = comfy_sigmas("beta", steps, 8.0)
        assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
        assert len(sigmas) == steps + 1
        assert all(a > b for a, b in itertools.pairwise(sigmas))
    assert rounded(comfy_sigmas("beta", 8, 8.0), 7) == [
        1.0, 0.992501, 0.9739953, 0.9422503, 0.8892833, 0.797583, 0.6324252, 0.3300142, 0.0]  # ComfyUI
    # Even step counts hit ppf(0.5) * 999 = 499.5 exactly; ComfyUI's rint gives index 500.
    table = sigma_table(8.0).tolist()
    assert comfy_sigmas("beta", 8, 8.0)[4] == table[500]
    # Many steps repeat table indices, which ComfyUI drops.
    assert len(comfy_sigmas("beta", 1000, 8.0)) == 848


def test_other_schedulers_match_comfy():
    expected = {  # ComfyUI 0.3.64
        ("karras", 8): [1.0, 0.5960286, 0.3408674, 0.1857107, 0.0955024, 0.0457976, 0.020146, 0.0079444, 0.0],
        ("exponential", 4): [1.0, 0.1995355, 0.0398144, 0.0079444, 0.0],
        ("ddim_uniform", 8): [0.9827707, 0.9604087, 0.9307849, 0.8896765, 0.8287991, 0.7293777,
                              0.5378507, 0.0157791, 0.0],
        ("linear_quadratic", 8): [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0],
        ("kl_optimal", 4): [1.0, 0.5808864, 0.2736337, 0.0079444, 0.0],
    }
    for (name, steps), values in expected.items():
        assert rounded(comfy_sigmas(name, steps, 8.0), 7) == values, name
    assert len(comfy_sigmas("ddim_uniform", 30, 8.0)) == 32  # as ComfyUI: not steps+1


@pytest.mark.parametrize("name", COMFY_SCHEDULERS)
def test_every_scheduler_is_finite_decreasing_and_ends_at_zero(name):
    for steps in (1, 2, 5, 20):
        sigmas = comfy_sigmas(name, steps, 5.0)
        assert sigmas[-1] == 0.0 and all(math.isfinite(s) for s in sigmas)
        assert all(a > b for a, b in itertools.pairwise(sigmas)), (name, steps, sigmas)


def test_denoise_takes_the_tail_of_a_longer_schedule():
    assert comfy_sigmas("simple", 10, 8.0, denoise=0.5) == comfy_sigmas("simple", 20, 8.0)[-11:]
    assert comfy_sigmas("simple", 10, 8.0, denoise=0.0) == []


def test_unknown_scheduler_names_the_choices():
    with pytest.raises(UserInputError) as info:
        comfy_sigmas("karras_plus", 8, 8.0)
    message = str(info.value)
    assert "karras_plus" in message
    assert all(name in message for name in COMFY_SCHEDULERS)


@pytest.mark.parametrize("steps, shift", [(0, 8.0), (2.5, 8.0), (True, 8.0), (8, 0.0), (8, -1.0), (8, math.nan)])
def test_bad_steps_or_shift(steps, shift):
    with pytest.raises(UserInputError):
        comfy_sigmas("simple", steps, shift)


# --- the incomplete beta function and its inverse ----------------------------------------------

def beta_cdf_by_quadrature(x: float, a: float, b: float, n: int = 20_000) -> float:
    # I_x(a, b) by Simpson's rule after t = u^(1/a), which removes the t^(a-1) singularity at 0:
    # integral_0^x t^(a-1) (1-t)^(b-1) dt = (1/a) integral_0^(x^a) (1 - u^(1/a))^(b-1) du.
    upper = x ** a
    h = upper / n
    f = lambda u: (1.0 - u ** (1.0 / a)) ** (b - 1.0)
    total = f(0.0) + f(upper) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    integral = total * h / 3.0 / a
    return integral / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


@pytest.mark.parametrize("x", [0.01, 0.1, 0.25, 0.4, 0.5])
def test_incomplete_beta_against_quadrature(x):
    reference = beta_cdf_by_quadrature(x, 0.6, 0.6)
    assert regularized_incomplete_beta(x, 0.6, 0.6) == pytest.approx(reference, abs=1e-11)
    # the upper half through the symmetry I_{1-x}(a, a) = 1 - I_x(a, a)
    assert regularized_incomplete_beta(1 - x, 0.6, 0.6) == pytest.approx(1 - reference, abs=1e-11)


def test_incomplete_beta_closed_forms():
    for x in (1e-6, 0.03, 0.3, 0.5, 0.77, 0.999):
        assert regularized_incomplete_beta(x, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-14)
        assert regularized_incomplete_beta(x, 1.0, 1.0) == pytest.approx(x, abs=1e-14)
        assert regularized_incomplete_beta(x, 0.6, 1.0) == pytest.approx(x ** 0.6, abs=1e-14)
        poly = sum(math.comb(4, j) * x ** j * (1 - x) ** (4 - j) for j in range(2, 5))
        assert regularized_incomplete_beta(x, 2.0, 3.0) == pytest.approx(poly, abs=1e-14)
    assert regularized_incomplete_beta(0.0, 0.6, 0.6) == 0.0 and regularized_incomplete_beta(1.0, 0.6, 0.6) == 1.0


def test_beta_ppf_inverts_to_1e_12():
    assert beta_ppf(0.5, 0.6, 0.6) == 0.5  # exactly: the scheduler rounds 499.5
    assert beta_ppf(0.0, 0.6, 0.6) == 0.0 and beta_ppf(1.0, 0.6, 0.6) == 1.0
    for x in (1e-9, 1e-4, 0.01, 0.2, 0.37, 0.5, 0.63, 0.9, 0.9999, 1 - 1e-9):
        assert beta_ppf(regularized_incomplete_beta(x, 0.6, 0.6), 0.6, 0.6) == pytest.approx(x, abs=1e-12)
    for p in (1e-6, 0.05, 0.3, 0.7, 0.875, 0.99):
        x = beta_ppf(p, 0.6, 0.6)
        assert regularized_incomplete_beta(x, 0.6, 0.6) == pytest.approx(p, abs=1e-13)
        assert beta_ppf(1 - p, 0.6, 0.6) == pytest.approx(1 - x, abs=1e-13)  # symmetric a == b
        # arcsine distribution: ppf(p) = sin(pi p / 2)^2
        assert beta_ppf(p, 0.5, 0.5) == pytest.approx(math.sin(math.pi * p / 2) ** 2, abs=1e-13)
    assert beta_ppf(0.3, 2.0, 3.0) == pytest.approx(0.2723839, abs=1e-7)
    for p in (0.1, 0.5, 0.9):  # an asymmetric pair, through the quadrature
        assert beta_cdf_by_quadrature(beta_ppf(p, 0.6, 1.7), 0.6, 1.7) == pytest.approx(p, abs=1e-10)


# --- KSamplerAdvanced windows ------------------------------------------------------------------

def test_split_window_20_steps_10_10():
    full = comfy_sigmas("simple", 20, 8.0)
    high = ksampler_advanced_window(full, 0, 10, return_with_leftover_noise=True)
    low = ksampler_advanced_window(full, 10, 10000, return_with_leftover_noise=False)
    assert high == SamplerWindow(tuple(full[0:11]), skipped=False)
    assert high.steps == 10 and high.leftover_noise and high.sigmas[-1] == full[10] > 0
    assert low == SamplerWindow(tuple(full[10:21]), skipped=False)
    assert low.steps == 10 and not low.leftover_noise and low.sigmas[0] == high.sigmas[-1]
    # without leftover noise the high expert's last step jumps to 0 (force_full_denoise)
    forced = ksampler_advanced_window(full, 0, 10, return_with_leftover_noise=False)
    assert forced.sigmas[:-1] == high.sigmas[:-1] and forced.sigmas[-1] == 0.0
    # end_at_step = 20 (the last step) or more changes nothing: leftover noise is moot
    assert ksampler_advanced_window(full, 10, 20, True) == low


def test_window_edge_cases():
    full = comfy_sigmas("simple", 20, 8.0)
    assert ksampler_advanced_window(full, 10, 10, True).skipped  # start >= end: latent passes through
    assert ksampler_advanced_window(full, 20, 10000, False).skipped
    assert ksampler_advanced_window(full, 25, 10000, False) == SamplerWindow((), skipped=True)
    one = ksampler_advanced_window(full, 9, 10, True)
    assert one.sigmas == (full[9], full[10])
    assert ksampler_advanced_window(full, 0, 10000).sigmas == tuple(full)


# --- noise, latent scaling and the Euler step ---------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 16, 3, 4, 5), (2, 3), (1, 16, 21, 80, 80)])
def test_noise_is_torch_manual_seed_randn(shape):
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(987654321)
        expected = torch.randn(shape, dtype=torch.float32, device="cpu")
    finally:
        torch.random.set_rng_state(state)
    before = torch.random.get_rng_state()
    noise = comfy_noise(987654321, shape)
    assert torch.equal(noise, expected) and noise.dtype == torch.float32
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone


def test_noise_batch_index():
    shape = (3, 16, 2, 4, 4)
    draws = comfy_noise(5, (4,) + shape[1:])  # one [1, ...] draw per index, in turn, is the same stream
    noise = comfy_noise(5, shape, batch_index=[3, 0, 3])
    assert torch.equal(noise[0], draws[3]) and torch.equal(noise[1], draws[0]) and torch.equal(noise[2], draws[3])
    assert torch.equal(comfy_noise(5, shape, batch_index=[0, 1, 2]), comfy_noise(5, shape))


def test_noise_scaling_and_its_inverse():
    noise, latent = comfy_noise(1, (1, 16, 2, 4, 4)), comfy_noise(2, (1, 16, 2, 4, 4))
    assert torch.equal(noise_scaling(1.0, noise, torch.zeros_like(noise)), noise)  # sigma0 = 1: x is the noise
    x = noise_scaling(0.25, noise, latent)
    assert torch.allclose(x, 0.25 * noise + 0.75 * latent)
    assert torch.allclose(inverse_noise_scaling(0.25, x), x / 0.75)
    assert torch.equal(inverse_noise_scaling(0.0, x), x)
    assert latent_is_empty(torch.zeros(1, 16, 2, 4, 4)) and not latent_is_empty(latent)


def test_euler_step_arithmetic():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, 2, 8, 8, generator=g)
    s, s_next = torch.tensor(0.8888889, dtype=torch.float32), torch.tensor(0.8674699, dtype=torch.float32)
    denoised = x - v * s
    expected = x + ((x - denoised) / s) * (s_next - s)  # ComfyUI: to_d, then x + d * dt
    assert torch.equal(euler_step(x, v, s, s_next), expected)
    assert torch.equal(euler_step(x, denoised, float(s), float(s_next), kind="denoised"), expected)
    assert torch.allclose(euler_step(x, v, s, s_next), x + (s_next - s) * v, atol=1e-6)  # d == v in exact math
    assert torch.equal(flow_denoised(x, v, s), denoised)


def test_cfg_is_applied_to_denoised_and_skipped_near_1():
    g = torch.Generator().manual_seed(1)
    x, vc, vu = (torch.randn(1, 16, 2, 8, 8, generator=g) for _ in range(3))
    s, s_next, cfg = 0.9, 0.8, 3.5
    dc, du = flow_denoised(x, vc, s), flow_denoised(x, vu, s)
    assert torch.equal(cfg_denoised(dc, du, cfg), du + (dc - du) * cfg)
    step = comfy_flow_step(x, vc, vu, cfg, s, s_next)
    assert torch.equal(step, euler_step(x, du + (dc - du) * cfg, s, s_next, kind="denoised"))
    # linear: the same as CFG on v, up to float32 rounding
    assert torch.allclose(step, euler_step(x, vu + cfg * (vc - vu), s, s_next), atol=1e-5)
    assert not uses_uncond(1.0) and not uses_uncond(1.0 + 1e-12) and uses_uncond(0.9) and uses_uncond(3.5)
    assert torch.equal(comfy_flow_step(x, vc, None, 1.0, s, s_next), euler_step(x, dc, s, s_next, kind="denoised"))


def wan_like_format():
    mean = torch.linspace(-0.9, 1.5, 16).view(1, 16, 1, 1, 1)
    std = torch.linspace(1.1, 3.2, 16).view(1, 16, 1, 1, 1)
    return (lambda z: (z - mean) / std), (lambda z: z * std + mean)


def toy_denoiser(cfg: float):
    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        vc = torch.tanh(0.7 * x + sigma) * 1.3
        vu = torch.tanh(-0.4 * x + sigma) * 0.9
        return cfg_denoised(flow_denoised(x, vc, sigma), flow_denoised(x, vu, sigma) if uses_uncond(cfg) else None, cfg)
    return denoise


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_two_ksampler_advanced_chain_equals_one_sampler(cfg):
    # high: [0, 10) add_noise + return_with_leftover_noise; low: [10, 20) add_noise disabled.
    process_in, process_out = wan_like_format()
    full = comfy_sigmas("simple", 20, 8.0)
    empty = torch.zeros(1, 16, 3, 6, 5)
    noise = comfy_noise(42, empty.shape)
    denoise = toy_denoiser(cfg)
    high = run_ksampler_advanced(denoise, empty, ksampler_advanced_window(full, 0, 10, True), noise,
                                 process_in=process_in, process_out=process_out)
    low = run_ksampler_advanced(denoise, high, ksampler_advanced_window(full, 10, 10000, False), None,
                                process_in=process_in, process_out=process_out)
    whole = run_ksampler_advanced(denoise, empty, ksampler_advanced_window(full, 0, 10000), noise,
                                  process_in=process_in, process_out=process_out)
    # the hand-over divides by (1 - sigma_10), leaves and re-enters the latent format, multiplies back
    assert torch.allclose(low, whole, atol=1e-5, rtol=0)
    # the hand-over latent is x / (1 - sigma_10) in the latent format's output space
    x = noise_scaling(full[0], noise, empty)
    for s, s_next in itertools.pairwise(full[:11]):
        x = euler_step(x, denoise(x, s), s, s_next, kind="denoised")
    assert torch.equal(high, process_out(x / (1.0 - torch.tensor(full[10]))))


def test_run_ksampler_advanced_pass_through_and_empty_latent():
    latent = torch.ones(1, 16, 1, 2, 2)
    full = comfy_sigmas("simple", 4, 5.0)
    assert run_ksampler_advanced(toy_denoiser(1.0), latent, ksampler_advanced_window(full, 4, 10000), None) is latent
    def refuse(_):
        raise AssertionError("process_in must not run on an all-zero latent")
    out = run_ksampler_advanced(toy_denoiser(1.0), torch.zeros(1, 16, 1, 2, 2), ksampler_advanced_window(full, 0, 10000),
                                comfy_noise(0, (1, 16, 1, 2, 2)), process_in=refuse)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
