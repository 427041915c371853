"""Sigma sequences for N sampling steps: AUTOMATIC1111's schedule types ("Schedule type" in infotext).

Each has N + 1 values (float64, descending, ending with 0). The kinds, by A1111's names:

- uniform, sgm_uniform, ddim: the model's timesteps at the linspace, trailing or leading spacing
  (`discrete_sigmas`); "default" is the model's own spacing;
- karras: Karras et al. 2022, eq. 5, rho = 7;
- exponential: evenly spaced in log sigma (k-diffusion's get_sigmas_exponential);
- polyexponential: log sigma along ramp**rho, rho = 1 as A1111's default (where it equals exponential);
- align_your_steps: the SD 1.5 sigmas that Align Your Steps (Sabour et al. 2024) optimised for 10
  steps, log-linearly interpolated to N values (A1111's convention: N values, then 0);
- lcm: diffusers' LCMScheduler timesteps, N of the LCM_GRID-step skipping grid that `sdlab train lcm`
  distils on (Luo et al. 2023), so a distilled model is sampled at the timesteps it learned.

The ramps (karras, exponential, polyexponential, align_your_steps) start from sigma_max, which under
zero terminal SNR stands in for infinity (clamped to ~4096): a ramp from there spends most steps where
the image is still pure noise (Karras: 13 of 20 above sigma 20, 0 of 20 from SD's 14.6). There the
sequence starts at the SNR-0 sigma (Lin et al. 2023: sample from the last timestep), takes the
trailing spacing's first step, to t = T (1 - 1/N) - 1 (a sigma that grows with N), and ramps from
there over the other N - 1 steps (the Align Your Steps table from its own first sigma).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..io.metadata import SCHEDULE_LABELS
from .schedule import NoiseSchedule, check_steps, discrete_sigmas

Ramp = Callable[[int, float, float], torch.Tensor]   # (n, sigma_min, sigma_max) -> n sigmas, descending
AUTOMATIC = "automatic"
# Align Your Steps, SD 1.5, 10 steps (NVIDIA's published table, as A1111 and ComfyUI ship it)
AYS_SD15 = (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582)


def _karras_ramp(n: int, lo: float, hi: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_hi, inv_lo = hi ** (1 / rho), lo ** (1 / rho)
    return (inv_hi + ramp * (inv_lo - inv_hi)) ** rho


def _polyexponential_ramp(n: int, lo: float, hi: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo))


def _ays_ramp(n: int, lo: float, hi: float) -> torch.Tensor:
    """The AYS table log-linearly interpolated to n values (its own range: lo and hi are not used)."""
    xs = np.linspace(0, 1, len(AYS_SD15))
    return torch.from_numpy(np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(AYS_SD15))))


def ramp_sigmas(schedule: NoiseSchedule, steps: int, ramp: Ramp, sigma_min: Optional[float] = None,
                sigma_max: Optional[float] = None) -> torch.Tensor:
    """`ramp` over `steps` steps from sigma_max to sigma_min (the schedule's unless given), then 0;
    under zero terminal SNR (and no `sigma_max` given) after a first step from the SNR-0 sigma (above)."""
    check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    if sigma_max is None and schedule.rescale_betas_zero_snr:
        n = schedule.num_train_timesteps
        first = float(schedule.t_to_sigma(float(np.round(n - n / steps) - 1)))
        rest = ramp_sigmas(schedule, steps - 1, ramp, lo, first) if steps > 1 else schedule.sigmas.new_zeros(1)
        return torch.cat([schedule.sigmas[-1:], rest])
    hi = schedule.sigma_max if sigma_max is None else sigma_max
    sig = ramp(steps, lo, hi)
    return torch.cat([sig, sig.new_zeros(1)])


def karras_sigmas(schedule: NoiseSchedule, steps: int, rho: float = 7.0,
                  sigma_min: Optional[float] = None, sigma_max: Optional[float] = None) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    return ramp_sigmas(schedule, steps, lambda n, lo, hi: _karras_ramp(n, lo, hi, rho), sigma_min, sigma_max)


def exponential_sigmas(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    return ramp_sigmas(schedule, steps, _polyexponential_ramp)


def polyexponential_sigmas(schedule: NoiseSchedule, steps: int, rho: float = 1.0) -> torch.Tensor:
    """log sigma = log sigma_min + ramp**rho (log sigma_max - log sigma_min), ramp from 1 to 0, then 0."""
    return ramp_sigmas(schedule, steps, lambda n, lo, hi: _polyexponential_ramp(n, lo, hi, rho))


def ays_sigmas(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Align Your Steps' SD 1.5 sigmas, log-linearly interpolated to `steps` values, then 0."""
    return ramp_sigmas(schedule, steps, _ays_ramp)


LCM_GRID = 50      # Luo et al. 2023: the teacher's DDIM grid, N = 50 of 1000 timesteps (skip k = 20)


def lcm_grid(num_train_timesteps: int, grid: int = LCM_GRID) -> np.ndarray:
    """The distillation grid, ascending: t_i = (i + 1) * (T // grid) - 1 (19, 39, ..., 999 for T = 1000)."""
    grid = min(grid, num_train_timesteps)
    return np.arange(1, grid + 1) * (num_train_timesteps // grid) - 1


def lcm_timesteps(schedule: NoiseSchedule, steps: int, grid: int = LCM_GRID) -> np.ndarray:
    """LCMScheduler.set_timesteps (original_inference_steps = grid): `steps` timesteps of the grid,
    from its top down at evenly spaced indices (4 steps: 999, 759, 499, 259). Past `grid` steps the
    grid grows to `steps` (diffusers refuses those)."""
    check_steps(steps)
    ts = lcm_grid(schedule.num_train_timesteps, max(grid, steps))[::-1]
    index = np.floor(np.linspace(0, len(ts), min(steps, len(ts)), endpoint=False)).astype(np.int64)
    return ts[index].astype(np.float64)


def lcm_sigmas(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """The sigmas of `lcm_timesteps`, then 0."""
    sig = schedule.t_to_sigma(torch.from_numpy(lcm_timesteps(schedule, steps)))
    return torch.cat([sig, sig.new_zeros(1)])


def _spacing(spacing: str) -> Callable[[NoiseSchedule, int], torch.Tensor]:
    def sigmas(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
        return discrete_sigmas(dataclasses.replace(schedule, timestep_spacing=spacing), steps)

    return sigmas


SIGMA_FUNCTIONS: dict[str, Callable[[NoiseSchedule, int], torch.Tensor]] = {
    "default": discrete_sigmas, "uniform": _spacing("linspace"), "sgm_uniform": _spacing("trailing"),
    "ddim": _spacing("leading"), "karras": karras_sigmas, "exponential": exponential_sigmas,
    "polyexponential": polyexponential_sigmas, "align_your_steps": ays_sigmas, "lcm": lcm_sigmas,
}
SIGMA_KINDS = tuple(SIGMA_FUNCTIONS)


def get_sigmas(schedule: NoiseSchedule, steps: int, kind: str = "default") -> torch.Tensor:
    """The sigma sequence of `kind` (one of SIGMA_KINDS) for `steps` steps."""
    if kind not in SIGMA_FUNCTIONS:
        raise ConfigError(f"sigma kind must be one of {', '.join(SIGMA_KINDS)}; got {kind!r}")
    return SIGMA_FUNCTIONS[kind](schedule, steps)


def schedule_names() -> list[str]:
    """The schedule types a generation may choose, by A1111's labels ("Automatic" first)."""
    return list(SCHEDULE_LABELS.values())


def schedule_kind(name: str) -> str:
    """"automatic" or the sigma kind of a schedule type, by A1111's label or name ("SGM Uniform",
    "sgm_uniform"; case and spaces ignored)."""
    if isinstance(name, str):
        wanted = "_".join(name.split()).casefold()
        for key, label in SCHEDULE_LABELS.items():
            if wanted in (key, "_".join(label.split()).casefold()):
                return key
    raise ConfigError(f"unknown schedule {name!r}; known schedules: {', '.join(schedule_names())}")
