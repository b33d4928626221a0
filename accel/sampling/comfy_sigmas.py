"""ComfyUI's flow-model sigma schedules, KSamplerAdvanced windows and Euler arithmetic (HOST-SAFE).

Written from the formulas ComfyUI uses (read in its source, none of its code copied: ComfyUI is
GPL-3.0) so that this pack can reproduce a ComfyUI Wan2.2 workflow number for number:

- ModelSamplingSD3(shift) makes a discrete flow model with 1000 training timesteps. Its sigma
  table is float32: t_i = ((i / 1000) * 1000) / 1000 for i = 1..1000 (float32 round trips kept),
  sigma_i = s(t_i) with s(t) = shift*t / (1 + (shift-1)*t). sigma_min = table[0] = s(0.001),
  sigma_max = table[-1] = 1. The model's timestep is sigma * 1000 (float32).
- Schedulers (comfy/samplers.py SCHEDULER_HANDLERS) read that table; their results are float32
  tensors, so every value here is the float32 number ComfyUI samples with, held in a Python float.
- The sampler runs on a float32 latent; only the diffusion model's forward runs in bf16/fp16 and
  its output is upcast to float32 before any of the arithmetic below.

Imports only stdlib, math and torch: safe in ComfyUI's own process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import torch

from ..errors import UserInputError

NUM_TIMESTEPS = 1000  # ModelSamplingDiscreteFlow's table length
MULTIPLIER = 1000.0  # ModelSamplingSD3: model timestep = sigma * multiplier

# SCHEDULER_HANDLERS order in comfy/samplers.py, so a ComfyUI combo value maps one to one.
COMFY_SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform",
    "beta", "normal", "linear_quadratic", "kl_optimal",
)

Number = TypeVar("Number", float, torch.Tensor)
SigmaLike = float | torch.Tensor


# ---------------------------------------------------------------------------------------------
# The flow time shift and ComfyUI's sigma table
# ---------------------------------------------------------------------------------------------

def flow_shift(t: Number, shift: float) -> Number:
    """ModelSamplingSD3's time shift s(t) = shift*t / (1 + (shift-1)*t), on a float or a tensor.

    The operation order is ComfyUI's (time_snr_shift): on a float32 tensor it rounds the same way.
    shift == 1 returns t untouched, as ComfyUI does (no 1*t/1 rounding).
    """
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


@functools.lru_cache(maxsize=32)
def _table(shift: float) -> torch.Tensor:
    # float32 throughout, exactly like ModelSamplingDiscreteFlow.set_parameters: the integer arange
    # divided by the count gives float32, the *multiplier and /multiplier round trips are kept
    # because they move some entries by an ulp.
    t = (torch.arange(1, NUM_TIMESTEPS + 1, 1) / NUM_TIMESTEPS) * MULTIPLIER
    return flow_shift(t / MULTIPLIER, shift)


def sigma_table(shift: float) -> torch.Tensor:
    """ComfyUI's float32 sigma table for ModelSamplingSD3(shift): 1000 values, ascending, last 1."""
    _check_shift(shift)
    return _table(float(shift)).clone()


def timestep_of_sigma(sigma: SigmaLike) -> SigmaLike:
    """The model's timestep input for a flow model: sigma * 1000 (float32 when sigma is a tensor)."""
    return sigma * MULTIPLIER


# ---------------------------------------------------------------------------------------------
# Schedulers, by ComfyUI's names. Each takes the float32 table and returns a float32 tensor.
# ---------------------------------------------------------------------------------------------

def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _simple(table: torch.Tensor, steps: int) -> torch.Tensor:
    # Every (1000/steps)-th table entry counted from the top; the stride is a float and the index
    # is truncated, which is why 8 steps land on 1000, 875, 750, ... (entries 999, 874, ...).
    stride = len(table) / steps
    picked = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def _linspace_timesteps(table: torch.Tensor, steps: int, shift: float, *, sgm: bool) -> torch.Tensor:
    # normal / sgm_uniform: evenly spaced model timesteps from timestep(sigma_max) down to
    # timestep(sigma_min), mapped back through s(t/1000). Both ends are float32 (table values *
    # 1000), the linspace is torch's float32 one, the mapping float32 again.
    start = float(timestep_of_sigma(table[-1]))
    end = float(timestep_of_sigma(table[0]))
    append_zero = True
    if sgm:
        ts = torch.linspace(start, end, steps + 1)[:-1]
    else:
        # ComfyUI's guard for tables that reach sigma 0 (never true for a flow table, sigma_min > 0).
        if math.isclose(float(flow_shift(torch.tensor(end) / MULTIPLIER, shift)), 0.0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        ts = torch.linspace(start, end, steps)
    sigmas = flow_shift(ts / MULTIPLIER, shift)
    return _with_zero(sigmas) if append_zero else sigmas


def _ddim_uniform(table: torch.Tensor, steps: int) -> torch.Tensor:
    # Table entries 1, 1+k, 1+2k, ... (k = 1000 // steps), reversed, with 0 at the end. As in
    # ComfyUI this can give more than steps+1 values and does not start at sigma_max.
    picked = [0.0]
    if math.isclose(float(table[1]), 0.0, abs_tol=1e-5):  # a table that reaches 0 (not a flow one)
        picked, steps = [], steps + 1
    stride = max(len(table) // steps, 1)
    picked += [float(table[i]) for i in range(1, len(table), stride)]
    return torch.tensor(picked[::-1], dtype=torch.float32)


def _beta(table: torch.Tensor, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    # ComfyUI: ts = 1 - linspace(0, 1, steps, endpoint=False) in float64 (numpy forms i*(1/steps)),
    # table index = rint(BetaDist(alpha, beta).ppf(ts) * 999), repeated indices dropped (so the
    # schedule can be shorter than steps+1 at large step counts), then 0.
    last = len(table) - 1
    step = 1.0 / steps
    picked: list[float] = []
    previous = None
    for i in range(steps):
        index = round(beta_ppf(1.0 - i * step, alpha, beta) * last)  # round(): half to even, as rint
        if index != previous:
            picked.append(float(table[index]))
        previous = index
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def _linear_quadratic(table: torch.Tensor, steps: int, threshold_noise: float = 0.025) -> torch.Tensor:
    # Mochi's schedule (float64 in Python): linear from 0 to threshold_noise over the first half of
    # the steps, then a quadratic up to 1; sigma = 1 - that, times sigma_max, as float32.
    if steps == 1:
        values = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        quadratic_steps = steps - linear_steps
        excess = linear_steps - threshold_noise * steps
        quad = excess / (linear_steps * quadratic_steps ** 2)
        lin = threshold_noise / linear_steps - 2 * excess / (quadratic_steps ** 2)
        const = quad * (linear_steps ** 2)
        ramp = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        ramp += [quad * (i ** 2) + lin * i + const for i in range(linear_steps, steps)]
        values = [1.0 - v for v in ramp + [1.0]]
    return torch.tensor(values, dtype=torch.float32) * table[-1]


def _karras(table: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    # Karras et al. (2022) between the table's float32 sigma_min and sigma_max (k-diffusion form).
    lo, hi = float(table[0]) ** (1 / rho), float(table[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def _exponential(table: torch.Tensor, steps: int) -> torch.Tensor:
    # Log-uniform from sigma_max to sigma_min.
    return _with_zero(torch.linspace(math.log(float(table[-1])), math.log(float(table[0])), steps).exp())


def _kl_optimal(table: torch.Tensor, steps: int) -> torch.Tensor:
    # tan of a linear blend of atan(sigma_max) and atan(sigma_min) (float32). ComfyUI divides by
    # steps-1 and gives NaN at 1 step; here 1 step is [sigma_max, 0].
    lo, hi = math.atan(float(table[0])), math.atan(float(table[-1]))
    w = torch.arange(steps, dtype=torch.float32)
    w = w.div_(steps - 1) if steps > 1 else w
    out = w.new_zeros(steps + 1)
    out[:-1] = (w * lo + (1 - w) * hi).tan_()
    return out


_SCHEDULER_FUNCTIONS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "simple": lambda table, steps, shift: _simple(table, steps),
    "sgm_uniform": lambda table, steps, shift: _linspace_timesteps(table, steps, shift, sgm=True),
    "karras": lambda table, steps, shift: _karras(table, steps),
    "exponential": lambda table, steps, shift: _exponential(table, steps),
    "ddim_uniform": lambda table, steps, shift: _ddim_uniform(table, steps),
    "beta": lambda table, steps, shift: _beta(table, steps),
    "normal": lambda table, steps, shift: _linspace_timesteps(table, steps, shift, sgm=False),
    "linear_quadratic": lambda table, steps, shift: _linear_quadratic(table, steps),
    "kl_optimal": lambda table, steps, shift: _kl_optimal(table, steps),
}
assert tuple(_SCHEDULER_FUNCTIONS) == COMFY_SCHEDULERS


def _check_shift(shift: float) -> None:
    if not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise UserInputError(f"shift must be a finite number above 0 (ModelSamplingSD3), got {shift!r}")


def _check_scheduler(scheduler: str) -> None:
    if scheduler not in _SCHEDULER_FUNCTIONS:
        raise UserInputError(
            f"unknown scheduler {scheduler!r}: choose one of {', '.join(COMFY_SCHEDULERS)}")


def comfy_sigmas(scheduler: str, steps: int, shift: float, *, denoise: float = 1.0) -> list[float]:
    """The sigmas a ComfyUI KSampler(Advanced) samples with, for a ModelSamplingSD3(shift) model.

    Length steps+1 ending in 0, except as in ComfyUI: `beta` drops repeated table indices and
    `ddim_uniform` can give a few more values. `denoise` < 1 follows KSampler: the schedule for
    int(steps/denoise) steps, last steps+1 values (KSamplerAdvanced always uses 1.0); denoise <= 0
    gives [] (ComfyUI then returns the latent untouched).
    """
    _check_scheduler(scheduler)
    _check_shift(shift)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"steps must be a whole number of at least 1, got {steps!r}")
    if denoise > 0.9999:
        return _schedule(scheduler, steps, float(shift))
    if denoise <= 0.0:
        return []
    return _schedule(scheduler, int(steps / denoise), float(shift))[-(steps + 1):]


def _schedule(scheduler: str, steps: int, shift: float) -> list[float]:
    return _SCHEDULER_FUNCTIONS[scheduler](_table(shift), steps, shift).to(torch.float32).tolist()


# ---------------------------------------------------------------------------------------------
# The regularized incomplete beta function and its inverse (scipy.stats.beta.ppf without scipy)
# ---------------------------------------------------------------------------------------------

def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    # The continued fraction of I_x(a, b) * a*B(a,b) / (x^a (1-x)^b), evaluated with the modified
    # Lentz method; converges quickly for x < (a+1)/(a+b+2).
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 10_000):
        two_m = 2 * m
        for numerator in (m * (b - m) * x / ((a + two_m - 1) * (a + two_m)),
                          -(a + m) * (a + b + m) * x / ((a + two_m) * (a + two_m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            value *= delta
        if abs(delta - 1.0) < 1e-16:
            return value
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b), the beta distribution's CDF (float64, ~1e-15)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    # The other side converges fast through the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse of I_x(a, b) in x (the beta distribution's quantile), to about 1e-15 absolute.

    Safeguarded Newton: the bracket [lo, hi] always holds the root; a Newton step that leaves it
    (the density is infinite at 0 and 1 when a or b < 1) is replaced by bisection.
    """
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if a == b and p == 0.5:
        # Exact median of a symmetric beta: beta's rint(ppf * 999) lands on the tie 499.5 at every
        # even step count (ComfyUI rounds it to 500), so 0.5 must come out exactly, not 0.5 - ulp.
        return 0.5
    if p > 0.5:
        # Solve in the lower tail of the mirrored distribution: keeps the target away from 1.
        return 1.0 - beta_ppf(1.0 - p, b, a)
    log_b = _log_beta(a, b)
    lo, hi = 0.0, 1.0
    # Start from the small-x expansion I_x ~ x^a / (a B(a, b)).
    x = min(max(math.exp((math.log(p) + math.log(a) + log_b) / a), 1e-300), 0.5)
    for _ in range(300):
        f = regularized_incomplete_beta(x, a, b) - p
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        density = math.exp((a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_b)
        candidate = x - f / density
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
        if abs(candidate - x) <= 1e-16 * max(1.0, x) or hi - lo <= 4e-16:
            return candidate
        x = candidate
    return x


# ---------------------------------------------------------------------------------------------
# Noise, the initial latent and the Euler step of a flow (CONST) model, in ComfyUI's float32 ops
# ---------------------------------------------------------------------------------------------

def comfy_noise(seed: int, shape: Sequence[int], batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """KSampler's initial noise: float32 N(0, 1) on the CPU from torch's CPU generator at `seed`.

    Same numbers as ComfyUI's torch.manual_seed(seed) + torch.randn(shape) (prepare_noise), from a
    private generator so the global RNG is left alone. With a latent's "batch_index", ComfyUI draws
    one [1, ...] sample per index 0..max(batch_index) in turn and hands each batch entry the draw
    of its index (so a batch entry's noise doesn't depend on the batch it is in).
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = tuple(int(n) for n in shape)
    if batch_index is None:
        return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
    indices = [int(i) for i in batch_index]
    if not indices or min(indices) < 0:
        raise UserInputError(f"batch_index must be a non-empty list of indices >= 0, got {batch_index!r}")
    wanted = set(indices)
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(indices) + 1):
        draw = torch.randn((1,) + shape[1:], dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = draw
    return torch.cat([draws[i] for i in indices], dim=0)


def latent_is_empty(latent: torch.Tensor) -> bool:
    """ComfyUI skips process_latent_in (Wan: (x - mean) / std) for an all-zero latent."""
    return int(torch.count_nonzero(latent)) == 0


def _sigma_on(sigma: SigmaLike, like: torch.Tensor) -> torch.Tensor:
    # ComfyUI's sigmas are a float32 tensor on the sampling device; a 0-dim tensor there (not a
    # Python scalar) keeps CUDA from dividing by a host scalar as a multiply by its reciprocal.
    return torch.as_tensor(sigma, dtype=torch.float32, device=like.device)


def noise_scaling(sigma: SigmaLike, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The start of sampling for a flow model (CONST.noise_scaling): sigma*noise + (1-sigma)*latent."""
    s = _sigma_on(sigma, noise)
    return s * noise + (1.0 - s) * latent


def inverse_noise_scaling(sigma: SigmaLike, x: torch.Tensor) -> torch.Tensor:
    """The end of sampling (CONST.inverse_noise_scaling): x / (1 - sigma_last); x itself at sigma 0.

    With leftover noise this is what KSamplerAdvanced returns (before the latent format's
    process_out); the next KSamplerAdvanced (add_noise disabled) multiplies by (1 - sigma) again.
    """
    return x / (1.0 - _sigma_on(sigma, x))


def flow_denoised(x: torch.Tensor, velocity: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """CONST.calculate_denoised: x0 = x - v*sigma, v being the model output upcast to float32."""
    return x - velocity * _sigma_on(sigma, x)


def uses_uncond(cfg: float) -> bool:
    """ComfyUI skips the negative forward when math.isclose(cfg, 1.0) (not when cfg <= 1)."""
    return not math.isclose(cfg, 1.0)


def cfg_denoised(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """ComfyUI's CFG, on the denoised (x0) predictions: uncond + (cond - uncond) * cfg.

    With the negative skipped (cfg close to 1) ComfyUI's uncond is zeros, which leaves cond * cfg.
    """
    if uncond is None:
        return cond * cfg
    return uncond + (cond - uncond) * cfg


def euler_step(x: torch.Tensor, model_out: torch.Tensor, sigma: SigmaLike, sigma_next: SigmaLike, *,
               kind: Literal["velocity", "denoised"] = "velocity") -> torch.Tensor:
    """One step of ComfyUI's sample_euler (no churn) for a flow model, in its float32 op order.

    kind="velocity": model_out is the model's v (cfg 1); kind="denoised": model_out is already x0
    (e.g. cfg_denoised of two flow_denoised). Then d = (x - x0)/sigma, x' = x + d*(sigma_next - sigma).
    Mathematically d == v; in float32 it is not bit-identical, which matters at the last steps.
    """
    s, s_next = _sigma_on(sigma, x), _sigma_on(sigma_next, x)
    denoised = model_out if kind == "denoised" else x - model_out * s
    d = (x - denoised) / s
    return x + d * (s_next - s)


def comfy_flow_step(x: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor | None, cfg: float,
                    sigma: SigmaLike, sigma_next: SigmaLike) -> torch.Tensor:
    """A whole ComfyUI euler step from the two model outputs (v_uncond None when cfg is ~1)."""
    d_cond = flow_denoised(x, v_cond.float(), sigma)
    d_uncond = None if v_uncond is None else flow_denoised(x, v_uncond.float(), sigma)
    return euler_step(x, cfg_denoised(d_cond, d_uncond, cfg), sigma, sigma_next, kind="denoised")
