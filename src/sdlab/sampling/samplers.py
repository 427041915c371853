"""Samplers as plain functions over a denoiser, k-diffusion style.

Every sampler has the signature

    sampler(model, x, sigmas, *, extra_args=None, callback=None, cancel=None, generator=None) -> x

where `model(x, sigma, **extra_args)` returns the denoised x0 for x = x0 + sigma * eps, `x` starts
at noise * sigmas[0] (or a noised image for img2img), and `sigmas` is descending and ends with 0.
After each step the sampler reports `StepEvent(step=i, total=len(sigmas) - 1, sigma, x, denoised)`
to `callback` and then checks `cancel.raise_if_cancelled()`. Ancestral noise comes from
`generator` on the CPU (see `noise.randn_like`), so a seed reproduces across devices; a list of
generators, one per batch row, makes each row reproducible on its own.
Samplers run under `torch.no_grad()`; a guidance wrapper that needs gradients enables them itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from numpy.polynomial import polynomial as P

from ..callbacks import CancelToken, StepCallback, StepEvent
from ..errors import ConfigError
from .noise import Generators, randn_like
from .schedule import NoiseSchedule, get_sigmas

Denoise = Callable[..., torch.Tensor]
Sigmas = torch.Tensor | Sequence[float]


def _floats(sigmas: Sigmas) -> list[float]:
    return [float(s) for s in sigmas]


def _call(model: Denoise, x: torch.Tensor, sigma: float, extra_args: Optional[dict]) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)  # sigma stays >= float32 with fp16 latents
    return model(x, torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device), **(extra_args or {}))


def _report(i: int, total: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor,
            callback: Optional[StepCallback], cancel: Optional[CancelToken]) -> None:
    if callback is not None:
        callback(StepEvent(step=i, total=total, sigma=sigma, x=x, denoised=denoised))
    if cancel is not None:
        cancel.raise_if_cancelled()


def _d(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4)."""
    return (x - denoised) / sigma


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x at sigma_next = denoised + sigma_next * eps with eps = (x - denoised) / sigma, written as
    (sigma_next / sigma) x + (1 - sigma_next / sigma) denoised: exact for a constant denoiser, and finite
    as sigma grows without bound (x / sigma stays the initial noise), as on a zero-terminal-SNR schedule."""
    ratio = sigma_next / sigma
    return x * ratio + denoised * (1 - ratio)


@torch.no_grad()
def sample_euler(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                 callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                 generator: Generators = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn)."""
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        x = x + _d(x, denoised, s[i]) * (s[i + 1] - s[i])
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step goes to sigma_down, then noise of std sigma_up
    is added so the marginal at sigma_next is right (the DDPM ancestral step in sigma form)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                           callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                           generator: Generators = None, eta: float = 1.0) -> torch.Tensor:
    """Euler ancestral ("Euler a"): an Euler step to sigma_down plus fresh noise of std sigma_up."""
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = x + _d(x, denoised, s[i]) * (down - s[i])
        if up > 0:
            x = x + randn_like(x, generator) * up
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_heun(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                generator: Generators = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1) on the ODE in data-prediction form.

    With y = x / sigma and u = 1 / sigma the ODE dx/dsigma = (x - D) / sigma reads dy/du = D(x, sigma)
    (Lu et al. 2022, DPM-Solver++), and the trapezoid rule there averages the two predictions:
    x' = ddim_step(x, (D(x, s) + D(x_e, s')) / 2, s, s'), x_e = ddim_step(x, D(x, s), s, s') (the Euler step).
    Algorithm 1 takes the trapezoid in sigma instead, which adds (s - s') / (2 s') * (D(x_e, s') - D(x, s))
    to the Euler step: a weight without bound in the step ratio s / s' (113 on the first step 4096 -> 18 of a
    zero-terminal-SNR schedule, whose s is infinity in truth, so every image came out wrong), where this form
    weighs it (s - s') / (2 s) <= 1/2. Same order, same model calls; on ordinary steps the two differ by
    O(h^3) per step (not bit-identical to k-diffusion's or diffusers' Heun). The last step to sigma = 0 is Euler.
    """
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        x_euler = ddim_step(x, denoised, s[i], s[i + 1])
        if s[i + 1] == 0:
            x = x_euler
        else:
            denoised_next = _call(model, x_euler, s[i + 1], extra_args)
            x = ddim_step(x, (denoised + denoised_next) / 2, s[i], s[i + 1])
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_ddim(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                generator: Generators = None) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eta = 0) in sigma form: x' = x0 + sigma' * eps.

    Dividing DDIM's x_t = sqrt(a) x0 + sqrt(1-a) eps by sqrt(a) gives exactly this update, which is
    algebraically the Euler step of the probability-flow ODE (Karras et al. 2022, Sec. 4); DDIM and
    Euler differ in practice only by the sigmas they are given.
    """
    s = _floats(sigmas)
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        x = ddim_step(x, denoised, s[i], s[i + 1])
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


def lms_coefficient(sigmas: Sequence[float], i: int, order: int, j: int) -> float:
    """Integral over [sigmas[i], sigmas[i+1]] of the Lagrange basis polynomial of node sigmas[i-j]
    among the nodes sigmas[i], ..., sigmas[i-order+1] (exact polynomial integration)."""
    shift = sigmas[i]  # integrate in tau - sigmas[i] for conditioning
    node = sigmas[i - j] - shift
    others = [sigmas[i - k] - shift for k in range(order) if k != j]
    poly = P.polyfromroots(others) / np.prod([node - o for o in others]) if others else np.array([1.0])
    antideriv = P.polyint(poly)
    return float(P.polyval(sigmas[i + 1] - shift, antideriv) - P.polyval(0.0, antideriv))


@torch.no_grad()
def sample_lms(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
               callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
               generator: Generators = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma, as in k-diffusion's `sample_lms`), order 4.

    The ODE derivatives of the last `order` steps are extrapolated with a Lagrange polynomial over
    sigma and integrated exactly; the first steps use the orders available. The last step to sigma = 0
    returns the denoised prediction, as every sampler here does (the Euler step to 0): the derivative has
    no value at 0, and the cubic extrapolated over a trailing schedule's last, widest step has
    coefficients 17 times the step in sum, which amplifies the model's step-to-step noise
    (k-diffusion extrapolates there; the results differ only in that step).
    """
    s = _floats(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        ds = (ds + [_d(x, denoised, s[i])])[-order:]
        if s[i + 1] == 0:
            x = denoised
        else:
            x = x + sum(lms_coefficient(s, i, len(ds), j) * ds[-1 - j] for j in range(len(ds)))
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                    callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                    generator: Generators = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep second order in
    lambda = -log(sigma); the first step is first order and the last step to sigma = 0 returns x0.
    """
    s = _floats(sigmas)
    old_denoised: Optional[torch.Tensor] = None
    h_last = 0.0
    for i in range(len(s) - 1):
        denoised = _call(model, x, s[i], extra_args)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            if old_denoised is None:
                d = denoised
            else:
                r = h_last / h
                d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = x * (s[i + 1] / s[i]) - d * math.expm1(-h)
            h_last = h
        old_denoised = denoised
        _report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


# --- registry under the names AUTOMATIC1111 users know ---------------------------------------

@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: the function and which sigmas it runs on ("default" or "karras")."""

    name: str
    fn: Callable[..., torch.Tensor]
    sigma_kind: str

    def __iter__(self):  # unpacks as (fn, sigma_kind)
        return iter((self.fn, self.sigma_kind))


def _registry() -> dict[str, SamplerSpec]:
    base = {"Euler": sample_euler, "Euler a": sample_euler_ancestral, "Heun": sample_heun,
            "LMS": sample_lms, "DPM++ 2M": sample_dpmpp_2m}
    out = {}
    for name, fn in base.items():
        out[name] = SamplerSpec(name, fn, "default")
        out[f"{name} Karras"] = SamplerSpec(f"{name} Karras", fn, "karras")
    out["DDIM"] = SamplerSpec("DDIM", sample_ddim, "default")
    return out


SAMPLERS: dict[str, SamplerSpec] = _registry()


def sampler_names() -> list[str]:
    """All registered sampler names, in registry order."""
    return list(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    """The sampler called `name` (case-insensitive, surrounding spaces ignored)."""
    if isinstance(name, str):
        wanted = " ".join(name.split()).casefold()
        for key, spec in SAMPLERS.items():
            if key.casefold() == wanted:
                return spec
    raise ConfigError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")


def sample(name: str, denoiser: Denoise, noise: torch.Tensor, steps: int, schedule: NoiseSchedule, *,
           extra_args: Optional[dict] = None, callback: Optional[StepCallback] = None,
           cancel: Optional[CancelToken] = None, generator: Generators = None) -> torch.Tensor:
    """Run sampler `name` for `steps` steps from unit-variance `noise` (scaled here by sigmas[0])."""
    fn, kind = get_sampler(name)
    sigmas = get_sigmas(schedule, steps, kind)
    x = noise * float(sigmas[0])
    return fn(denoiser, x, sigmas, extra_args=extra_args, callback=callback, cancel=cancel,
              generator=generator)
