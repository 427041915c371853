"""Seeded Gaussian noise drawn on the generator's device (the CPU by default), so seeds reproduce
across devices: the same generator seed gives the same numbers whatever device the latents are on.

A generator may also be a list with one generator per batch row: row i then draws all of its
noise (initial, ancestral, img2img) from its own generator, so image i of a batch is the same
image as when generated alone with that seed (AUTOMATIC1111's seed + i convention).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import ConfigError

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _draw(shape: Sequence[int], generator: Optional[torch.Generator]) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=device).cpu()


def batch_noise(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """float32 CPU noise of shape (len(generators), *shape); row i drawn from generators[i]."""
    if isinstance(generators, torch.Generator):
        generators = [generators]
    return torch.stack([_draw(shape, g) for g in generators])


def randn_like(like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn in float32 from `generator` (the global CPU
    generator if None) or row by row from a list of generators, then moved to like's device/dtype."""
    if generator is None or isinstance(generator, torch.Generator):
        noise = _draw(like.shape, generator)
    else:
        generator = list(generator)
        if len(generator) != like.shape[0]:
            raise ConfigError(f"generator list has {len(generator)} generators for a batch of {like.shape[0]}")
        noise = batch_noise(like.shape[1:], generator)
    return noise.to(device=like.device, dtype=like.dtype)
