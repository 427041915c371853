"""Inpainting in the sampling loop: the latent side (sdlab.inpaint does the pixel side).

- Any model: `KnownRegionDenoiser` wraps a denoiser so that the latents outside the mask are
  the source noised to the current level at every step (RePaint's replacement, Lugmayr et al.
  2022; A1111's and diffusers' inpainting with an ordinary UNet): the model sees
  x = keep * (source + noise * sigma) + (1 - keep) * x, and its prediction outside the mask is the
  source itself, so every sampler's step lands on the source noised to the next sigma there and
  the last step returns the source's latents exactly.
- An inpainting UNet (SD-inpainting layout, in_channels = 9): `ConcatUNet` feeds it
  [scaled latents, mask, masked-image latents] as diffusers' StableDiffusionInpaintPipeline does.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .denoiser import WrappedUNet, sigma_batch

INPAINT_CHANNELS = 9     # latents (4) + mask (1) + masked-image latents (4)


def is_inpainting_unet(unet) -> bool:
    """True for a UNet in the SD-inpainting layout (in_channels 9: latents, mask, masked latents)."""
    return int(unet.config.in_channels) == INPAINT_CHANNELS


def latent_mask(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """The repaint mask at latent size (1, 1, height, width), 1 = repaint: A1111's `latmask`, the
    (blurred) "L" mask resized with PIL's bicubic filter and rounded to 0 or 1."""
    small = mask.convert("L").resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.around(np.asarray(small, dtype=np.float32) / 255.0))[None, None]


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """`t` repeated to `batch` rows (CFG calls with [uncond, cond] stacked: 2x the rows)."""
    if t.shape[0] == batch:
        return t
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


class KnownRegionDenoiser:
    """`model(x, sigma, cond)` with the region outside the mask held to the source.

    source: clean latents (B or 1, C, h, w); keep: (B or 1, 1, h, w), 1 where the source stays;
    noise: the run's seeded noise (B, C, h, w), so the kept region is the source noised to each
    sigma with the noise the run started from."""

    def __init__(self, model: Callable[..., torch.Tensor], source: torch.Tensor, keep: torch.Tensor,
                 noise: torch.Tensor):
        self.model, self.source, self.keep, self.noise = model, source, keep, noise

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Any = None) -> torch.Tensor:
        s = sigma_batch(sigma, x).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        source, keep = self.source.to(x), self.keep.to(x)
        known = source + self.noise.to(x) * s
        x = keep * known + (1 - keep) * x
        return keep * source + (1 - keep) * self.model(x, sigma, cond)


def inpaint_guidance(source: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor):
    """A guidance wrapper (sdlab.pipeline's `guidance=` contract: `wrap(model, pipe)`) applying
    KnownRegionDenoiser outermost."""
    return lambda model, pipe: KnownRegionDenoiser(model, source, keep, noise)


class ConcatUNet(WrappedUNet):
    """A 9-channel inpainting UNet called like a 4-channel one: `extra` (B or 1, 5, h, w), the mask
    and the masked-image latents, is concatenated after the (already scaled) latents, as
    diffusers' StableDiffusionInpaintPipeline does after `scale_model_input`."""

    def __init__(self, unet: torch.nn.Module, extra: torch.Tensor):
        super().__init__(unet)
        self.extra = extra

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, **kwargs):
        extra = _rows(self.extra.to(sample), sample.shape[0])
        return self.unet(torch.cat([sample, extra], dim=1), timestep, encoder_hidden_states=encoder_hidden_states,
                         **kwargs)


def inpaint_conditioning(encode: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                         mask: Optional[torch.Tensor], latent_size: tuple[int, int]) -> torch.Tensor:
    """The 5 extra channels of an inpainting UNet: the mask binarized at 0.5 and resized (nearest)
    to the latents, then the latents of the image with the masked pixels set to 0 (grey), as
    diffusers' StableDiffusionInpaintPipeline prepares them. image: (1, 3, H, W) in [-1, 1];
    mask: (1, 1, H, W) in [0, 1], 1 = repaint; None: repaint everything (A1111's conditioning for
    txt2img and img2img with an inpainting model). `encode`: images -> scaled latents."""
    if mask is None:
        mask = torch.ones_like(image[:, :1])
    binary = (mask >= 0.5).to(image.dtype)
    masked = encode(image * (binary < 0.5).to(image.dtype))
    small = F.interpolate(binary, size=latent_size)
    return torch.cat([small.to(masked), masked], dim=1)
