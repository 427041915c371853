"""The pieces every sampler loop shares: calling the denoiser, reporting a step, and the basic steps
in sigma form (x = x0 + sigma * eps) that the samplers build on."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..callbacks import CancelToken, StepCallback, StepEvent

Denoise = Callable[..., torch.Tensor]
Sigmas = torch.Tensor | Sequence[float]


def floats(sigmas: Sigmas) -> list[float]:
    return [float(s) for s in sigmas]


def call(model: Denoise, x: torch.Tensor, sigma: float, extra_args: Optional[dict]) -> torch.Tensor:
    """model(x, sigma as a (B,) tensor, **extra_args): the denoised x0."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # sigma stays >= float32 with fp16 latents
    return model(x, torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device), **(extra_args or {}))


def report(i: int, total: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor,
           callback: Optional[StepCallback], cancel: Optional[CancelToken]) -> None:
    """Tell `callback` about step i, then stop if `cancel` says so."""
    if callback is not None:
        callback(StepEvent(step=i, total=total, sigma=sigma, x=x, denoised=denoised))
    if cancel is not None:
        cancel.raise_if_cancelled()


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x at sigma_next = denoised + sigma_next * eps with eps = (x - denoised) / sigma, written as
    (sigma_next / sigma) x + (1 - sigma_next / sigma) denoised: exact for a constant denoiser, and finite
    as sigma grows without bound (x / sigma stays the initial noise), as on a zero-terminal-SNR schedule.
    It is also DPM-Solver++(1) (Lu et al. 2022): the first-order step in data-prediction form."""
    ratio = sigma_next / sigma
    return x * ratio + denoised * (1 - ratio)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step goes to sigma_down, then noise of std sigma_up
    is added so the marginal at sigma_next is right (the DDPM ancestral step in sigma form)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def heun_step(model: Denoise, x: torch.Tensor, sigma: float, sigma_next: float,
              extra_args: Optional[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at sigma_next, the denoised prediction at sigma) by Heun's trapezoid on the ODE in
    data-prediction form (see `sample_heun`); a step to sigma = 0 is Euler's and returns x0."""
    denoised = call(model, x, sigma, extra_args)
    x_euler = ddim_step(x, denoised, sigma, sigma_next)
    if sigma_next == 0:
        return x_euler, denoised
    denoised_next = call(model, x_euler, sigma_next, extra_args)
    return ddim_step(x, (denoised + denoised_next) / 2, sigma, sigma_next), denoised
