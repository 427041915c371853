"""Rendered shapes-world scenes as training tensors, and back."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..world.render import render
from ..world.scene import Scene, SceneSampler


def to_tensor(images) -> torch.Tensor:
    """PIL images -> float tensor (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(x: torch.Tensor):
    """Float tensor (B, 3, H, W) in [-1, 1] -> list of PIL images."""
    from PIL import Image

    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def render_batch(sampler: SceneSampler, rng: random.Random, n: int) -> tuple[list[Scene], torch.Tensor]:
    """`n` scenes drawn with `rng` and their renders as a (n, 3, H, W) tensor in [-1, 1]."""
    scenes = [sampler.sample(rng) for _ in range(n)]
    return scenes, to_tensor([render(s) for s in scenes])


def object_weights(x: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """Per-pixel loss weights: 1 on the background, `weight` where the image differs from
    its border colour (the objects), so small shapes are not averaged away."""
    border = torch.cat([x[:, :, :2].flatten(2), x[:, :, -2:].flatten(2)], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    obj = ((x - bg).abs().sum(1, keepdim=True) > 0.2).float()
    return 1.0 + (weight - 1.0) * obj
