"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"), as
AUTOMATIC1111's "Restart" sampler runs it: Heun steps down the schedule and, once the main pass reaches
the sigma nearest RESTART_MIN, noise back up to the sigma nearest RESTART_MAX and Heun down again over a
Karras ramp, which contracts the errors accumulated so far (the stochastic restarts) while the ODE
keeps its accuracy elsewhere.

Below 20 steps there is no restart (plain Heun). From 20 steps, K = 9 restart steps once (K = N // 4
twice from 36) between the main pass's sigmas nearest RESTART_MAX and RESTART_MIN (above 0: a trailing
schedule's last sigma, 0.23 at 20 steps, not the final 0, which would restart to 0), and the main pass takes the other N - K R steps over the given sigmas at evenly spaced
indices (first and last kept): N steps of two model calls in all, as in A1111, which takes a Karras
ramp for the main pass instead (here the chosen schedule is kept, e.g. zero-SNR's first step).
The Heun step is sdlab's (the trapezoid on the prediction, see `sample_heun`); restart noise comes
from `generator` on the CPU.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..callbacks import CancelToken, StepCallback
from .noise import Generators, randn_like
from .steps import Denoise, Sigmas, floats, heun_step, report

RESTART_MIN, RESTART_MAX = 0.1, 2.0    # A1111's restart interval, in sigma


def _karras(n: int, lo: float, hi: float, rho: float = 7.0) -> list[float]:
    return [(hi ** (1 / rho) + k / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for k in range(n)]


def restart_plan(sigmas: Sigmas) -> list[tuple[float, float]]:
    """The (sigma, sigma') steps Restart takes for these sigmas (N = len - 1 steps; see the module)."""
    s = floats(sigmas)
    n = len(s) - 1
    if n < 20:
        return list(zip(s[:-1], s[1:]))
    k, times = (9, 1) if n < 36 else (n // 4, 2)
    main = [s[j] for j in np.round(np.linspace(0, n - 1, n - k * times)).astype(int)] + [s[-1]]
    lo = int(np.argmin([abs(v - RESTART_MIN) for v in main[:-1]]))    # among the sigmas above 0
    hi = int(np.argmin([abs(v - RESTART_MAX) for v in main[:-1]]))
    restart = _karras(k + 1, main[lo], main[hi]) if hi < lo else []
    plan = []
    for i in range(len(main) - 1):
        plan.append((main[i], main[i + 1]))
        if i + 1 == lo:
            plan += list(zip(restart[:-1], restart[1:])) * times
    return plan


@torch.no_grad()
def sample_restart(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                   callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                   generator: Generators = None) -> torch.Tensor:
    """Restart: Heun over `restart_plan(sigmas)`, with fresh noise up to each restart's top sigma."""
    plan = restart_plan(sigmas)
    last = None
    for i, (sigma, sigma_next) in enumerate(plan):
        if last is not None and sigma > last:
            x = x + randn_like(x, generator) * math.sqrt(sigma**2 - last**2)
        x, denoised = heun_step(model, x, sigma, sigma_next, extra_args)
        report(i, len(plan), sigma, x, denoised, callback, cancel)
        last = sigma_next
    return x
