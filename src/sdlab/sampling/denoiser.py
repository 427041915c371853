"""A diffusers UNet seen as a k-diffusion denoiser `D(x, sigma, cond) -> x0`.

Sampling happens in sigma space, x = x0 + sigma * eps (Karras et al. 2022). The UNet was trained on
the variance-preserving x_t = x / sqrt(sigma^2 + 1) at the timestep t(sigma); its output (epsilon or
v, Salimans & Ho 2022) is turned back into the predicted clean sample x0:

- epsilon: x0 = x - sigma * eps
- v:       x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)

For a latent consistency model (Luo et al. 2023) `consistency_denoiser` turns on the boundary condition
x0' = c_skip(t) x_t + c_out(t) x0 (diffusers' LCMScheduler) and, for a w-conditioned UNet
(`time_cond_proj_dim`), passes the guidance scale's embedding as `timestep_cond`.
"""

from __future__ import annotations

import copy
import math
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


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of guidance scales `w` (B,) -> (B, dim), as diffusers'
    LatentConsistencyModelPipeline.get_guidance_scale_embedding (w x 1000, like a timestep)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = (w.float().cpu() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def consistency_scalings(t: torch.Tensor, timestep_scaling: float = 10.0,
                         sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency boundary condition at timesteps `t` (Song et al. 2023;
    diffusers' LCMScheduler: t scaled by 10, sigma_data 0.5): c_skip(0) = 1, c_out(0) = 0."""
    scaled = t.double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


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
        self.boundary = False               # LCM: the consistency boundary condition (consistency_denoiser)
        self.guidance_w: float | None = None   # a w-conditioned UNet's guidance scale

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
        extra = {}
        if self.guidance_w is not None:     # diffusers' LCM pipeline embeds w - 1 (Imagen's w)
            w = torch.full((x.shape[0],), self.guidance_w - 1.0)
            extra["timestep_cond"] = guidance_embedding(w, self.unet.config.time_cond_proj_dim).to(x.device, dtype)
        out = self.unet(x_in.to(dtype), t, encoder_hidden_states=cond, **extra).sample
        work = torch.promote_types(x.dtype, torch.float32)
        out, xw = out.to(work), x.to(work)
        s = s.to(work).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction_type == "epsilon":
            x0 = xw - s * out
        else:  # v_prediction
            x0 = xw / (s**2 + 1) - out * s * (s**2 + 1).rsqrt()
        if self.boundary:                   # x_t = x / sqrt(sigma^2 + 1), the UNet's input
            c_skip, c_out = (c.to(x0.device, work).reshape(s.shape) for c in consistency_scalings(t.cpu()))
            x0 = c_skip * x_in.to(work) + c_out * x0
        return x0.to(x.dtype)


def w_conditioned(unet) -> bool:
    """Whether `unet` takes a guidance embedding (`time_cond_proj_dim`, an LCM distilled with w)."""
    return getattr(getattr(unet, "config", None), "time_cond_proj_dim", None) is not None


def consistency_denoiser(denoiser, boundary: bool, cfg_scale: float) -> tuple[Any, float]:
    """(the denoiser to sample with, the CFG scale to wrap it in). `boundary` (the LCM sampler): a
    copy that applies the boundary condition, as LCMScheduler does for any model (at the LCM
    schedule's timesteps, t >= 19, it moves x0 by under 1e-5 x_t). A w-conditioned UNet: a copy
    that embeds `cfg_scale` as w, and scale 1, so each step is one UNet pass (guidance distilled)."""
    if not isinstance(denoiser, Denoiser) or not (boundary or w_conditioned(denoiser.unet)):
        return denoiser, cfg_scale
    out = copy.copy(denoiser)
    out.boundary = boundary
    if w_conditioned(denoiser.unet):
        out.guidance_w, cfg_scale = float(cfg_scale), 1.0
    return out, cfg_scale
