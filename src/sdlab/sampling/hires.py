"""Hires fix, AUTOMATIC1111's "Hires. fix": generate at the base size, upscale, then img2img at the
new size through the same sampling loop (Pipeline.sample_latents).

- Upscalers, under A1111's labels: the "Latent" family interpolates the latents
  (`torch.nn.functional.interpolate`; "Latent" is bilinear without antialiasing, as A1111's);
  "Lanczos" and "Nearest" decode, resize with PIL and encode again.
- The second pass runs with `hires_sampler` (A1111's "Hires sampling method"; unset: `sampler`).
- The second pass runs exactly `hires_steps` steps (0: `steps`) at `hires_strength`, as A1111 does:
  of the sigmas of int(hires_steps / strength) steps, the last hires_steps are run. Its noise comes
  from the same seeds at the new size; prompt editing counts its steps on from the first pass
  (sdlab.text.prompt_schedule, `hires_steps`).
- Results wider or taller than TILE_FACTOR times the model's native side decode tiled
  (diffusers' AutoencoderKL tiling), so large images fit in memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError

TILE_FACTOR = 2      # decode tiled past this many times the model's native side


@dataclass(frozen=True)
class Upscaler:
    label: str            # A1111's name, written in the infotext ("Hires upscaler")
    mode: str             # torch interpolate mode (latent) or PIL resample name (pixels)
    latent: bool
    antialias: bool = False


UPSCALERS = {
    "latent": Upscaler("Latent", "bilinear", True),
    "latent-antialiased": Upscaler("Latent (antialiased)", "bilinear", True, True),
    "latent-bicubic": Upscaler("Latent (bicubic)", "bicubic", True),
    "latent-bicubic-antialiased": Upscaler("Latent (bicubic antialiased)", "bicubic", True, True),
    "latent-nearest": Upscaler("Latent (nearest)", "nearest", True),
    "latent-nearest-exact": Upscaler("Latent (nearest-exact)", "nearest-exact", True),
    "lanczos": Upscaler("Lanczos", "LANCZOS", False),
    "nearest": Upscaler("Nearest", "NEAREST", False),
}


def check_upscaler(name) -> str:
    """`name` if it is one of UPSCALERS, else ConfigError listing them."""
    if name not in UPSCALERS:
        raise ConfigError(f"hires_upscaler must be one of {', '.join(UPSCALERS)}, got {name!r}")
    return name


def upscaler_named(text: str) -> str:
    """The UPSCALERS key for a key or an A1111 label ("Latent (nearest-exact)"), any case."""
    wanted = str(text).strip().lower()
    for key, up in UPSCALERS.items():
        if wanted in (key, up.label.lower()):
            return key
    raise ConfigError(f"hires upscaler must be one of {', '.join(u.label for u in UPSCALERS.values())}, "
                      f"got {text!r}")


def enabled(config) -> bool:
    return config.hires_scale > 1


def hires_size(config, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the second pass: int(side * hires_scale), down to a multiple of 8."""
    from ..config import MAX_SIDE

    size = tuple(int(side * config.hires_scale) // 8 * 8 for side in (width, height))
    if max(size) > MAX_SIDE:
        raise ConfigError(f"hires fix: {width}x{height} x {config.hires_scale:g} is {size[0]}x{size[1]}, past the "
                          f"largest side {MAX_SIDE}; lower --hires-scale or the size")
    return size


def check_hires(config, img2img: bool) -> None:
    """Refuse a hires fix where A1111 has none (img2img)."""
    if enabled(config) and img2img:
        raise ConfigError("hires fix (hires_scale > 1) is for txt2img only, as in A1111; upscale the init image "
                          "instead, or leave hires_scale at 1")


def upscale(pipe, latents: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """Latents (B, C, h, w) of the base pass as latents of an image of `size` (width, height)."""
    up = UPSCALERS[check_upscaler(name)]
    width, height = size
    if up.latent:
        shape = (height // pipe.vae_scale, width // pipe.vae_scale)
        return F.interpolate(latents, size=shape, mode=up.mode, antialias=up.antialias)
    images = [im.resize(size, getattr(Image.Resampling, up.mode)) for im in pipe.decode_images(latents)]
    return torch.cat([pipe._init_latent(im, *size) for im in images])    # at its size: encoded as it is


def pass_steps(config) -> int:
    return config.hires_steps or config.steps


def pass_config(config):
    """The second pass's settings: `config` with the hires sampler, when one is set, as its sampler
    and hires_sampler cleared (so a pass's settings give themselves back)."""
    return config if config.hires_sampler is None else replace(config, sampler=config.hires_sampler,
                                                                hires_sampler=None)


def hires_sigmas(pipe, config) -> torch.Tensor:
    """The sigmas of the second pass: the last `pass_steps` steps of int(steps / strength) (A1111),
    on the schedule of the pass's sampler."""
    from . import get_sigmas, resolve_sampler

    config = pass_config(config)
    steps = pass_steps(config)
    total = int(steps / min(config.hires_strength, 0.999))
    _, sigma_kind = resolve_sampler(config.sampler, config.schedule)
    return get_sigmas(pipe.schedule, total, sigma_kind)[total - steps:]


def hires_pass(pipe, config, seeds: list[int], latents: torch.Tensor, width: int, height: int, *,
               cond: Optional[torch.Tensor] = None, **loop) -> torch.Tensor:
    """The second pass on the base pass's clean `latents`: upscaled, noised to the tail of
    hires_sigmas and sampled at the hires size. `loop`: sample_latents' keywords (callback,
    cancel, guidance, attention); `cond` overrides the prompt as in the base pass."""
    size = hires_size(config, width, height)
    start = upscale(pipe, latents, size, config.hires_upscaler)
    config = pass_config(config)
    if config.hires_strength == 0:
        return start
    steps = pass_steps(config)
    if cond is None:
        cond = pipe.encode_scheduled(config.prompt, config.steps, steps, config.clip_skip)
    uncond = pipe.encode_scheduled(config.negative_prompt, config.steps, steps, config.clip_skip)
    return pipe.sample_latents(config, seeds, *size, init=start, sigmas=hires_sigmas(pipe, config),
                               cond=cond, uncond=uncond, **loop)


@contextlib.contextmanager
def tiled_vae(vae, on: bool = True):
    """diffusers' AutoencoderKL tiling switched on for the block (left as it was after)."""
    if not on or getattr(vae, "use_tiling", True) or not hasattr(vae, "enable_tiling"):
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """`pipe.decode_images`, tiled past TILE_FACTOR times the native side."""
    side = max(latents.shape[-2:]) * pipe.vae_scale
    with tiled_vae(pipe.c.vae, side > TILE_FACTOR * pipe.native_size):
        return pipe.decode_images(latents)


def infotext_fields(config) -> dict:
    """A1111's infotext fields of a hires fix ({} when off)."""
    if not enabled(config):
        return {}
    scale = config.hires_scale
    other_sampler = config.hires_sampler not in (None, config.sampler)       # as A1111: only when it differs
    return {"Denoising strength": config.hires_strength,
            "Hires upscale": int(scale) if float(scale).is_integer() else scale,
            "Hires steps": config.hires_steps or None, "Hires upscaler": UPSCALERS[config.hires_upscaler].label,
            "Hires sampler": config.hires_sampler if other_sampler else None}
