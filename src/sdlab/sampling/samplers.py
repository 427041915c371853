"""Samplers as plain functions over a denoiser, k-diffusion style.

Every sampler has the signature

    sampler(model, x, sigmas, *, extra_args=None, callback=None, cancel=None, generator=None) -> x

where `model(x, sigma, **extra_args)` returns the denoised x0 for x = x0 + sigma * eps, `x` starts
at noise * sigmas[0] (or a noised image for img2img), and `sigmas` is descending and ends with 0.
After each step the sampler reports `StepEvent(step=i, total=len(sigmas) - 1, sigma, x, denoised)`
to `callback` and then checks `cancel.raise_if_cancelled()`. Ancestral noise comes from
`generator` on the CPU (see `noise.randn_like`), so a seed reproduces across devices; a list of
generators, one per batch row, makes each row reproducible on its own (the DPM++ SDE family draws
Brownian-tree noise from it, sdlab.sampling.brownian). A sampler may take more keywords (eta, order).
Samplers run under `torch.no_grad()`; a guidance wrapper that needs gradients enables them itself.

The ODE samplers and DDPM, LCM and TCD live here, the DPM++ SDE family in `sde`, UniPC in `unipc`, Restart
in `restart`, the steps they share in `steps`. `SAMPLERS` registers them under AUTOMATIC1111's names;
the sigma schedule is chosen apart (sdlab.sampling.sigmas, A1111's "Schedule type"), and a name such as
"DPM++ 2M Karras" carries its schedule (`resolve_sampler`).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from numpy.polynomial import polynomial as P

from ..callbacks import CancelToken, StepCallback
from ..errors import ConfigError
from ..io.metadata import SCHEDULE_LABELS
from .noise import Generators, randn_like
from .restart import sample_restart
from .schedule import NoiseSchedule
from .sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from .sigmas import AUTOMATIC, get_sigmas, schedule_kind
from .steps import Denoise, Sigmas, ancestral_step, call, ddim_step, floats, heun_step, report
from .unipc import sample_unipc

def _d(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4)."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                 callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                 generator: Generators = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn)."""
    s = floats(sigmas)
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        x = x + _d(x, denoised, s[i]) * (s[i + 1] - s[i])
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                           callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                           generator: Generators = None, eta: float = 1.0) -> torch.Tensor:
    """Euler ancestral ("Euler a"): an Euler step to sigma_down plus fresh noise of std sigma_up."""
    s = floats(sigmas)
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = x + _d(x, denoised, s[i]) * (down - s[i])
        if up > 0:
            x = x + randn_like(x, generator) * up
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
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
    s = floats(sigmas)
    for i in range(len(s) - 1):
        x, denoised = heun_step(model, x, s[i], s[i + 1], extra_args)
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
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
    s = floats(sigmas)
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        x = ddim_step(x, denoised, s[i], s[i + 1])
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
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
    s = floats(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        ds = (ds + [_d(x, denoised, s[i])])[-order:]
        if s[i + 1] == 0:
            x = denoised
        else:
            x = x + sum(lms_coefficient(s, i, len(ds), j) * ds[-1 - j] for j in range(len(ds)))
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                    callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                    generator: Generators = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep second order in
    lambda = -log(sigma); the first step is first order and the last step to sigma = 0 returns x0.
    """
    s = floats(sigmas)
    old_denoised: Optional[torch.Tensor] = None
    h_last = 0.0
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
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
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_ddpm(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                generator: Generators = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7; diffusers' DDPMScheduler, fixed_small variance,
    no clipping) on any sigmas. Divided by sqrt(alpha_bar'), the posterior q(x' | x, x0) is
    N(D + (s'^2 / s^2) (x - D), s'^2 (1 - s'^2 / s^2)): the ancestral step at eta = 1, so this is "Euler a"
    (DDIM at eta 1) in exact arithmetic."""
    return sample_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, cancel=cancel,
                                  generator=generator, eta=1.0)


@torch.no_grad()
def sample_lcm(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
               callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
               generator: Generators = None) -> torch.Tensor:
    """Latent-consistency sampling (Luo et al. 2023; Song et al. 2023, Algorithm 1, multistep consistency
    sampling): at each step predict x0, then noise it afresh to the next sigma, x' = x0 + sigma' z, with z
    from `generator`. Works with any denoiser; a distilled LCM applies its boundary condition (c_skip,
    c_out of the consistency parameterisation) in its denoiser, as ComfyUI does, not here."""
    s = floats(sigmas)
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        x = denoised + randn_like(denoised, generator) * s[i + 1] if s[i + 1] > 0 else denoised
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


@torch.no_grad()
def sample_tcd(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
               callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
               generator: Generators = None, schedule: NoiseSchedule, gamma: float = 0.3) -> torch.Tensor:
    """Trajectory consistency sampling (Zheng et al. 2024, strategic stochastic sampling; diffusers'
    TCDScheduler, its eta = gamma): from x0 and eps predicted at sigma, a DDIM step to the timestep
    s' = floor((1 - gamma) s) below the next one s, then fresh noise back up to s. gamma 0 is DDIM, gamma 1
    nearly LCM. Needs the model's `schedule` for the timestep <-> sigma map (SamplerSpec.bind gives it)."""
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"TCD's gamma must be in [0, 1], got {gamma}")
    s = floats(sigmas)
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        if s[i + 1] > 0:
            t_next = round(float(schedule.sigma_to_t(s[i + 1])), 3)     # on the grid: an integer timestep
            below = float(schedule.sigmas[math.floor((1.0 - gamma) * t_next)])
            x = denoised + (x - denoised) * (below / s[i])
            if gamma > 0:
                x = x + randn_like(denoised, generator) * math.sqrt(max(s[i + 1] ** 2 - below**2, 0.0))
        else:
            x = denoised
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x


# --- registry under the names AUTOMATIC1111 users know ---------------------------------------

@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: the function and the sigma kind its name carries ("default", or the
    schedule of a name such as "DPM++ 2M Karras": sdlab.sampling.sigmas.SIGMA_KINDS)."""

    name: str
    fn: Callable[..., torch.Tensor]
    sigma_kind: str

    def bind(self, schedule: NoiseSchedule) -> Callable[..., torch.Tensor]:
        """The sampler function to call for a model on `schedule` (TCD needs the schedule itself)."""
        takes_schedule = "schedule" in inspect.signature(self.fn).parameters
        return functools.partial(self.fn, schedule=schedule) if takes_schedule else self.fn

    def __iter__(self):  # unpacks as (fn, sigma_kind)
        return iter((self.fn, self.sigma_kind))

    @property
    def base(self) -> str:
        """The sampler without the schedule its name carries ("DPM++ 2M Karras" -> "DPM++ 2M")."""
        return self.name.removesuffix(f" {SCHEDULE_LABELS[self.sigma_kind]}") if self.sigma_kind != "default" \
            else self.name


# Samplers registered with a Karras variant ("Euler Karras", ...), then those without one.
WITH_KARRAS = {"Euler": sample_euler, "Euler a": sample_euler_ancestral, "Heun": sample_heun, "LMS": sample_lms,
               "DPM++ 2M": sample_dpmpp_2m, "DPM++ SDE": sample_dpmpp_sde, "DPM++ 2M SDE": sample_dpmpp_2m_sde,
               "DPM++ 3M SDE": sample_dpmpp_3m_sde}
PLAIN = {"DDIM": sample_ddim, "UniPC": sample_unipc, "DDPM": sample_ddpm, "LCM": sample_lcm, "Restart": sample_restart,
         "TCD": sample_tcd}


# "Automatic" schedules of samplers whose name carries none: LCM visits the timesteps LCMs learn (sigmas.lcm_sigmas)
AUTOMATIC_KINDS = {"LCM": "lcm", "TCD": "lcm"}     # TCDScheduler's timesteps are LCMScheduler's


def _registry() -> dict[str, SamplerSpec]:
    out = {}
    for name, fn in WITH_KARRAS.items():
        out[name] = SamplerSpec(name, fn, "default")
        out[f"{name} Karras"] = SamplerSpec(f"{name} Karras", fn, "karras")
    out.update({name: SamplerSpec(name, fn, "default") for name, fn in PLAIN.items()})
    return out


SAMPLERS: dict[str, SamplerSpec] = _registry()


def sampler_names() -> list[str]:
    """All registered sampler names, in registry order."""
    return list(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    """The sampler called `name` (case-insensitive, surrounding spaces ignored). As in A1111, a
    registered sampler followed by a schedule label ("DPM++ 2M SDE Exponential") names both."""
    if isinstance(name, str):
        wanted = " ".join(name.split()).casefold()
        for key, spec in SAMPLERS.items():
            if key.casefold() == wanted:
                return spec
        for kind, label in SCHEDULE_LABELS.items():
            base = wanted.removesuffix(f" {label.casefold()}")
            spec = next((v for k, v in SAMPLERS.items() if k.casefold() == base), None)
            if kind != AUTOMATIC and base != wanted and spec is not None and spec.sigma_kind == "default":
                return SamplerSpec(f"{spec.name} {label}", spec.fn, kind)
    raise ConfigError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")


def resolve_sampler(name: str, schedule: str = "Automatic") -> tuple[SamplerSpec, str]:
    """(the sampler, the sigma kind it runs on) for a sampler name and a schedule type (A1111 >= 1.9
    chooses them apart). "Automatic" takes the schedule the name carries ("DPM++ 2M Karras": Karras),
    LCM's distillation timesteps for LCM, else the model's own timestep spacing ("default"); a name's
    schedule and another one conflict."""
    spec, kind = get_sampler(name), schedule_kind(schedule)
    if kind == AUTOMATIC:
        return spec, AUTOMATIC_KINDS.get(spec.name, spec.sigma_kind)
    if kind == spec.sigma_kind:
        return spec, kind
    if spec.sigma_kind != "default":
        raise ConfigError(f"sampler {spec.name!r} runs on the {SCHEDULE_LABELS[spec.sigma_kind]} schedule, not "
                          f"{SCHEDULE_LABELS[kind]}: use sampler {spec.base!r} with schedule {schedule!r}")
    return spec, kind


def sample(name: str, denoiser: Denoise, noise: torch.Tensor, steps: int, schedule: NoiseSchedule, *,
           extra_args: Optional[dict] = None, callback: Optional[StepCallback] = None,
           cancel: Optional[CancelToken] = None, generator: Generators = None,
           schedule_type: str = "Automatic") -> torch.Tensor:
    """Run sampler `name` for `steps` steps from unit-variance `noise` (scaled here by sigmas[0]),
    on the sigmas of `schedule_type` (see `resolve_sampler`)."""
    spec, kind = resolve_sampler(name, schedule_type)
    sigmas = get_sigmas(schedule, steps, kind)
    x = noise * float(sigmas[0])
    return spec.bind(schedule)(denoiser, x, sigmas, extra_args=extra_args, callback=callback, cancel=cancel,
                               generator=generator)
