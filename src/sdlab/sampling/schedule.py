"""The discrete DDPM noise schedule seen in k-diffusion's sigma parameterization.

A DDPM model trained with `alphas_cumprod[t]` (Ho et al. 2020) sees x_t = sqrt(a) x0 + sqrt(1-a) eps.
Dividing by sqrt(a) gives x = x0 + sigma eps with sigma = sqrt((1 - a) / a), the variance-exploding
form that Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
Models") and k-diffusion sample in. `NoiseSchedule` holds both, converts sigma <-> t (continuous t
by interpolation in log-sigma). `discrete_sigmas` gives the sigmas of N sampling steps at the
scheduler's own timestep spacing ("leading", "trailing", "linspace"; Lin et al. 2023, Table 2), the
same timesteps diffusers' EulerDiscreteScheduler uses; `sdlab.sampling.sigmas` the other named
sigma sequences (Karras, exponential, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24  # diffusers' clamp for the last alpha_cumprod under zero SNR


def _betas(schedule: "NoiseSchedule", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    n = schedule.num_train_timesteps
    if schedule.beta_schedule == "linear":
        return torch.linspace(schedule.beta_start, schedule.beta_end, n, dtype=dtype)
    if schedule.beta_schedule == "scaled_linear":  # the latent-diffusion schedule
        lo, hi = math.sqrt(schedule.beta_start), math.sqrt(schedule.beta_end)
        return torch.linspace(lo, hi, n, dtype=dtype) ** 2
    # squaredcos_cap_v2: cosine schedule of Nichol & Dhariwal 2021, betas capped at 0.999
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(betas, dtype=dtype)


def _rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root**2


def _training_alphas_cumprod(schedule: "NoiseSchedule") -> torch.Tensor:
    """alpha_bar as diffusers' DDPMScheduler computes it for training: float32 throughout and, under
    zero terminal SNR, back through the betas (alpha_bar_T = 0 exactly, no clamp), so the training
    side noises latents with the very numbers diffusers-trained models saw, bit for bit."""
    alphas = 1.0 - _betas(schedule, torch.float32)
    if schedule.rescale_betas_zero_snr:
        bar = _rescale_zero_terminal_snr(torch.cumprod(alphas, dim=0))
        alphas = 1.0 - (1.0 - torch.cat([bar[:1], bar[1:] / bar[:-1]]))
    return torch.cumprod(alphas, dim=0)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete noise schedule; build it with `NoiseSchedule.from_config(scheduler.config)`.

    `alphas_cumprod` and `sigmas` (both float64, index = training timestep t) are derived; sampling
    reads them. Training reads `add_noise`, `target` and `min_snr_weights` (the DDPM forward
    process, k-diffusion's `loss` side), on `training_alphas_cumprod` (float32, as diffusers').
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    rescale_betas_zero_snr: bool = False
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sigmas: torch.Tensor = field(init=False, repr=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False)
    training_alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        acp = torch.cumprod(1.0 - _betas(self), dim=0)
        if self.rescale_betas_zero_snr:
            acp = _rescale_zero_terminal_snr(acp)
            acp[-1] = ZERO_SNR_ALPHA_CUMPROD  # keeps sigma_max finite, as diffusers does
        sigmas = ((1 - acp) / acp).sqrt()
        object.__setattr__(self, "alphas_cumprod", acp)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())
        object.__setattr__(self, "training_alphas_cumprod", _training_alphas_cumprod(self))

    def _validate(self) -> None:
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
        for name in ("beta_start", "beta_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{name} must be a number in (0, 1), got {v!r}")
        if self.beta_start > self.beta_end:
            raise ConfigError(f"beta_start must be <= beta_end, got {self.beta_start} > {self.beta_end}")
        for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                              ("timestep_spacing", TIMESTEP_SPACINGS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not isinstance(self.rescale_betas_zero_snr, bool):
            raise ConfigError(f"rescale_betas_zero_snr must be a bool, got {self.rescale_betas_zero_snr!r}")
        off = self.steps_offset
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            raise ConfigError(f"steps_offset must be an integer >= 0, got {off!r}")

    @classmethod
    def from_config(cls, config: Any) -> "NoiseSchedule":
        """From a diffusers scheduler config (dict, FrozenDict, or a scheduler with `.config`).

        Keys this class does not model (clip_sample, set_alpha_to_one, ...) are ignored; a non-empty
        `trained_betas` is refused because the schedule would silently differ.
        """
        config = getattr(config, "config", config)
        if not isinstance(config, Mapping):
            raise ConfigError(f"scheduler config must be a mapping, got {type(config).__name__}")
        if config.get("trained_betas") is not None:
            raise ConfigError("trained_betas is not supported; use beta_schedule/beta_start/beta_end")
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in config.items() if k in names})

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Continuous timestep for `sigma`, linear in log-sigma between training timesteps (k-diffusion).

        Sigmas outside [sigma_min, sigma_max] clamp to t = 0 or T - 1. Returns float32 on sigma's device.
        """
        s = torch.as_tensor(sigma)
        device = s.device
        log_s = s.detach().to("cpu", torch.float64).clamp(min=1e-300).log()
        ls = self.log_sigmas
        low = (torch.searchsorted(ls, log_s.reshape(-1), right=True) - 1).clamp(0, len(ls) - 2).reshape(log_s.shape)
        w = ((log_s - ls[low]) / (ls[low + 1] - ls[low])).clamp(0, 1)
        return (low + w).to(device=device, dtype=torch.float32)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Sigma at continuous timestep `t` (log-sigma interpolation, the inverse of `sigma_to_t`)."""
        tt = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        low = tt.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = tt - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    # --- the training side: the forward process x_t = sqrt(a) x0 + sqrt(1 - a) eps -------------
    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(a_t), sqrt(1 - a_t)) at integer timesteps `t`, shaped to broadcast over `like`'s
        batch, in its dtype and on its device (the operations of diffusers' add_noise)."""
        acp = self.training_alphas_cumprod.to(device=like.device, dtype=like.dtype)
        a = acp[torch.as_tensor(t, device=like.device)].reshape(-1, *([1] * (like.ndim - 1)))
        return a**0.5, (1 - a) ** 0.5

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (Ho et al. 2020, eq. 4)."""
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (Salimans & Ho 2022)."""
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model learns to predict at `t`: the noise (epsilon) or the velocity (v)."""
        return noise if self.prediction_type == "epsilon" else self.velocity(x0, noise, t)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t) at integer timesteps `t` (float64, on the CPU)."""
        a = self.training_alphas_cumprod[torch.as_tensor(t).cpu()].double()
        return a / (1 - a)

    def min_snr_weights(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023): each timestep's loss weighted by min(SNR, gamma) / SNR
        for epsilon targets (/ (SNR + 1) for v), so the nearly clean, easy timesteps stop
        dominating the gradient. float32, on the CPU."""
        snr = self.snr(t)
        capped = snr.clamp(max=gamma)
        return (capped / (snr + 1) if self.prediction_type == "v_prediction" else capped / snr).float()

    def timesteps(self, steps: int) -> np.ndarray:
        """The `steps` training timesteps (descending, float64) of this schedule's spacing."""
        check_steps(steps)
        n = self.num_train_timesteps
        if steps > n:
            raise ConfigError(f"steps must be <= num_train_timesteps ({n}) for the discrete spacing, got {steps}")
        if self.timestep_spacing == "linspace":
            return np.linspace(0, n - 1, steps, dtype=np.float64)[::-1].copy()
        if self.timestep_spacing == "leading":
            ratio = n // steps
            return (np.arange(steps)[::-1] * ratio + self.steps_offset).astype(np.float64)
        ratio = n / steps  # trailing
        return np.round(n - np.arange(steps) * ratio) - 1.0


def check_steps(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")


def discrete_sigmas(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Sigmas at the scheduler's own timestep spacing, then 0: `steps + 1` values, float64, descending.

    For integer timesteps these are exactly diffusers' EulerDiscreteScheduler sigmas; for fractional
    "linspace" timesteps sigma is interpolated in log-sigma (diffusers: linear in sigma), a relative
    difference below 1e-4 that keeps `sigma_to_t` an exact inverse.
    """
    sig = schedule.t_to_sigma(torch.from_numpy(schedule.timesteps(steps)))
    return torch.cat([sig, sig.new_zeros(1)])
