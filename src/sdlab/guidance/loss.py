"""Guidance by any differentiable loss on the predicted clean image or latent.

The denoiser's prediction x0 is nudged down the gradient of a loss, as in the "deep dive"
notebook's blue loss and in universal guidance (Bansal et al. 2023, forward guidance):

    x0' = x0 - scale * w(sigma) * grad_x0 loss(x0)        w(sigma) = sigma^2 / (1 + sigma^2)

w is 1 - alpha_bar of the variance-preserving schedule. For small sigma it is the sigma^2 of
score-based guidance (Song et al. 2021; k-diffusion's cond_fn adds sigma^2 * grad to the
denoised); unlike sigma^2 it stays bounded at the huge first sigma of zero-terminal-SNR
schedules. The gradient is taken with respect to x0 (cheap: no backward pass through the
UNet) unless `through_model=True`, which differentiates loss(x0(x)) with respect to x.

A loss takes a batch and returns one value per sample (or a scalar); on="image" decodes x0
with the VAE first and hands the loss images in [-1, 1], (B, 3, H, W).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import ConfigError
from ..sampling.denoiser import sigma_batch

Loss = Callable[[torch.Tensor], torch.Tensor]
TARGETS = ("image", "latent")


def check_scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"{name} must be a finite number (int or float), got {type(scale).__name__} {scale!r}")
    return float(scale)


def check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every must be an integer >= 1 (apply guidance every N denoiser calls), got {every!r}")
    return every


def guidance_weight(sigma: torch.Tensor) -> torch.Tensor:
    """1 - alpha_bar = sigma^2 / (1 + sigma^2), per sample, shaped to broadcast over latents."""
    s2 = sigma.double() ** 2
    return (s2 / (1 + s2)).float().view(-1, 1, 1, 1)


class LossGuidance:
    """`model(x, sigma, cond) -> x0` whose prediction is pulled down `loss`'s gradient.

    scale: strength; every: apply on every N-th denoiser call (others pass through);
    on: "image" (decode with `decode`, the pipeline's VAE) or "latent";
    sigma_max: skip noise levels above this (None: never skip).
    """

    def __init__(self, inner, loss: Loss, scale: float, *, every: int = 1, on: str = "image", decode=None,
                 through_model: bool = False, sigma_max: float | None = None):
        self.scale, self.every = check_scale(scale), check_every(every)
        if not callable(loss):
            raise ConfigError(f"loss must be a callable taking a batch, got {type(loss).__name__}")
        if on not in TARGETS:
            raise ConfigError(f"on must be one of {', '.join(TARGETS)}; got {on!r}")
        if on == "image" and decode is None:
            raise ConfigError("on='image' needs a decode function (the pipeline's VAE decoder)")
        self.inner, self.loss, self.on, self.decode = inner, loss, on, decode
        self.through_model, self.sigma_max = through_model, sigma_max
        self.calls, self.last_loss = 0, None

    def __call__(self, x: torch.Tensor, sigma, cond) -> torch.Tensor:
        apply = self.calls % self.every == 0 and self.scale != 0
        self.calls += 1
        s = sigma_batch(sigma, x)
        if apply and self.sigma_max is not None:
            apply = bool((s <= self.sigma_max).all())
        if not apply:
            return self.inner(x, sigma, cond)
        with torch.enable_grad():
            if self.through_model:
                x_in = x.detach().requires_grad_(True)
                x0 = self.inner(x_in, sigma, cond)
                wrt = x_in
            else:
                x0 = self.inner(x, sigma, cond).detach().requires_grad_(True)
                wrt = x0
            value = self._loss(x0)
            grad, = torch.autograd.grad(value.sum(), wrt)
        self.last_loss = value.detach()
        return x0.detach() - self.scale * guidance_weight(s) * grad

    def _loss(self, x0: torch.Tensor) -> torch.Tensor:
        target = self.decode(x0) if self.on == "image" else x0
        value = self.loss(target)
        if not torch.is_tensor(value) or value.ndim > 1 or value.numel() not in (1, x0.shape[0]):
            raise ConfigError(f"loss must return a scalar or one value per sample ({x0.shape[0]}), "
                              f"got {getattr(value, 'shape', type(value).__name__)}")
        return value


def loss_guidance(loss: Loss, scale: float, **kwargs):
    """A wrapper factory for `Pipeline.generate(config, guidance=[...])`."""
    check_scale(scale)

    def wrap(model, pipe):
        decode = (lambda z: pipe.decode_differentiable(z)) if kwargs.get("on", "image") == "image" else None
        return LossGuidance(model, loss, scale, decode=decode, **kwargs)

    return wrap
