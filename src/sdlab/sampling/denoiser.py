"""A diffusers UNet seen as a k-diffusion denoiser `D(x, sigma, cond) -> x0`.

Sampling happens in sigma space, x = x0 + sigma * eps (Karras et al. 2022). The UNet was trained on
the variance-preserving x_t = x / sqrt(sigma^2 + 1) at the timestep t(sigma); its output (epsilon or
v, Salimans & Ho 2022) is turned back into the predicted clean sample x0:

- epsilon: x0 = x - sigma * eps
- v:       x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .schedule import NoiseSchedule


def sigma_batch(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """`sigma` (a number, a 0-d tensor or a (B,) tensor) as a (B,) float tensor on x's device."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # never below float32, even for fp16 latents
    if torch.is_tensor(sigma):
        s = sigma.to(device=x.device, dtype=dtype)
    else:
        s = torch.tensor(sigma, device=x.device, dtype=dtype)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ConfigError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def broadcast_batch(cond: torch.Tensor, batch: int, name: str = "cond") -> torch.Tensor:
    """`cond` with batch size `batch` (a batch of 1 is expanded), or ConfigError naming `name`."""
    if cond.shape[0] == batch:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(batch, *cond.shape[1:])
    raise ConfigError(f"{name} batch size {cond.shape[0]} does not match the latent batch size {batch}")


class WrappedUNet:
    """Base of what the Denoiser calls in place of a UNet (an inpainting UNet with its mask, a
    UNet with ControlNets): `dtype` and `config` are the wrapped UNet's."""

    def __init__(self, unet):
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        dtype = getattr(self.unet, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.unet.parameters()).dtype

    @property
    def config(self):
        return self.unet.config


class Denoiser:
    """Wraps a `UNet2DConditionModel` (or any module called as `unet(x, t, encoder_hidden_states=c)`
    returning an object with `.sample`) into `denoiser(x, sigma, cond) -> x0`.

    The UNet runs in its own dtype/device; the result has x's dtype. `cond` is the encoder hidden
    states, batch-aligned with x (a batch of 1 is broadcast).
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise ConfigError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = schedule.prediction_type

    @property
    def _unet_dtype(self) -> torch.dtype:
        dtype = getattr(self.unet, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.unet.parameters()).dtype

    def model_input(self, x: torch.Tensor, sigma: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x scaled by c_in = 1/sqrt(sigma^2+1), timestep t(sigma), sigma as (B,)) for the UNet call."""
        s = sigma_batch(sigma, x)
        c_in = (s**2 + 1).rsqrt().reshape(-1, *([1] * (x.ndim - 1)))
        return x * c_in, self.schedule.sigma_to_t(s), s

    def __call__(self, x: torch.Tensor, sigma: Any, cond: torch.Tensor | None = None) -> torch.Tensor:
        x_in, t, s = self.model_input(x, sigma)
        dtype = self._unet_dtype
        if cond is not None:
            cond = broadcast_batch(cond, x.shape[0]).to(device=x.device, dtype=dtype)
        out = self.unet(x_in.to(dtype), t, encoder_hidden_states=cond).sample
        work = torch.promote_types(x.dtype, torch.float32)
        out, xw = out.to(work), x.to(work)
        s = s.to(work).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction_type == "epsilon":
            x0 = xw - s * out
        else:  # v_prediction
            x0 = xw / (s**2 + 1) - out * s * (s**2 + 1).rsqrt()
        return x0.to(x.dtype)
