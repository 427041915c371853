"""NaN/inf caught before they become a black image. The sampler's latents are checked after
every step; the VAE's pixels after decoding, and a decoder that overflows only in fp16/bf16 is
run once more in fp32, as diffusers' `upcast_vae` / `force_upcast` do."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..callbacks import StepCallback, StepEvent
from ..errors import NonFiniteError


def is_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def require_finite(images: torch.Tensor) -> None:
    """The last check before pixels become an image file."""
    if not is_finite(images):
        raise NonFiniteError("the images hold non-finite values (NaN/inf) and would come out black; nothing was written")


def finite_guard(hint: str) -> StepCallback:
    """A step callback that stops sampling at the first step whose latents hold NaN/inf."""
    def check(event: StepEvent) -> None:
        if event.x is not None and not is_finite(event.x):
            raise NonFiniteError(f"the sampler produced non-finite latents (NaN/inf) at step {event.step + 1} of "
                                 f"{event.total}: {hint}")
    return check


@contextlib.contextmanager
def upcast(vae):
    """The VAE in fp32 for the block, then back in its own dtype."""
    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        yield vae
    finally:
        vae.to(dtype)


def decode_finite(decode: Callable[[torch.Tensor], torch.Tensor], vae, latents: torch.Tensor, hint: str):
    """`decode(latents)` with finite latents in and finite pixels out: a non-finite result is
    decoded again in fp32 once (when the VAE runs in lower precision), else NonFiniteError."""
    if not is_finite(latents):
        raise NonFiniteError(f"the latents to decode hold non-finite values (NaN/inf): {hint}")
    images = decode(latents)
    if is_finite(images):
        return images
    if vae.dtype != torch.float32:
        with upcast(vae):
            images = decode(latents)
        if is_finite(images):
            return images
    raise NonFiniteError("the VAE decoder turned finite latents into non-finite pixels (NaN/inf), in fp32 too: "
                         "check the VAE's weights (--vae)")
