"""Interpolating between two prompts' text-encoder outputs, one frame per step, with one seed.

The UNet conditions on the encoder's last hidden states (tokens, dim). Between prompt A and
prompt B we blend those states per token, by linear interpolation (lerp) or by spherical
linear interpolation (slerp, Shoemake 1985; used for latent walks since White 2016), and
sample every frame from the same noise, so the image changes only because the text does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from PIL import Image

from ..config import GenerationConfig
from ..errors import ConfigError
from .chunks import pad_to_same_length

METHODS = ("lerp", "slerp")
DOT_THRESHOLD = 0.9995  # slerp falls back to lerp for (nearly) parallel vectors


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + (b - a) * t if t not in (0, 1) else (a if t == 0 else b).clone()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last axis; lerp where a and b are nearly parallel."""
    if t in (0, 1):
        return (a if t == 0 else b).clone()
    af, bf = a.double(), b.double()
    cos = (af * bf).sum(-1, keepdim=True) / (af.norm(dim=-1, keepdim=True) * bf.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    theta = cos.clamp(-1, 1).acos()
    sin = theta.sin().clamp_min(1e-12)
    out = (torch.sin((1 - t) * theta) / sin) * af + (torch.sin(t * theta) / sin) * bf
    out = torch.where(cos.abs() > DOT_THRESHOLD, af + (bf - af) * t, out)
    return out.to(a.dtype)


def check_frames(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 1000:
        raise ConfigError(f"frames must be an integer between 2 and 1000, got {n!r}")
    return n


def interpolate_embeddings(a: torch.Tensor, b: torch.Tensor, n: int, method: str = "slerp") -> torch.Tensor:
    """n frames from a to b (both (1, tokens, dim)), t = 0, 1/(n-1), ..., 1: (n, tokens, dim)."""
    check_frames(n)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if a.shape != b.shape:
        raise ConfigError(f"embeddings to interpolate must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fn = slerp if method == "slerp" else lerp
    return torch.cat([fn(a, b, i / (n - 1)) for i in range(n)])


@dataclass
class Interpolation:
    images: list[Image.Image]
    ts: list[float]
    cond: torch.Tensor        # (n, tokens, dim)
    seed: int


def interpolate(pipe, prompt_a: str, prompt_b: str, n: int = 8, seed: int = 0, *, method: str = "slerp",
                config: Optional[GenerationConfig] = None, batch_size: int = 8, callback=None) -> Interpolation:
    """Images for n blends of prompt_a -> prompt_b, all from the noise of `seed`. `config` gives
    steps, sampler, CFG, size, negative prompt and CLIP skip (its prompt and seed are replaced)."""
    check_frames(n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    config = replace(config or GenerationConfig(prompt_a), prompt=prompt_a, seed=seed)
    skip = config.clip_skip           # the uncond is encoded with it too (Pipeline._conds)
    a, b = pipe.encode_prompt([prompt_a], skip), pipe.encode_prompt([prompt_b], skip)
    a, b = pad_to_same_length(a, b, lambda: pipe.encode_prompt([""], skip))
    cond = interpolate_embeddings(a, b, n, method)
    images = []
    with pipe.prompt_loras(prompt_a, prompt_b):
        for rows in cond.split(batch_size):
            images += pipe.sample_images(config, [seed] * len(rows), cond=rows, callback=callback)
    return Interpolation(images, [i / (n - 1) for i in range(n)], cond, seed)
