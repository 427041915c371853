"""Batches of rendered shapes-world scenes as tensors, and the image-folder export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io.atomic import atomic_save, atomic_write_text
from . import spec
from .captions import caption
from .render import render
from .scene import Scene, SceneSampler


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
    scenes = [sampler.sample(rng) for _ in range(n)]
    return scenes, to_tensor([render(s) for s in scenes])


def object_weights(x: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """Per-pixel loss weights: 1 on the background, `weight` where the image differs from
    its border colour (the objects), so small shapes are not averaged away."""
    border = torch.cat([x[:, :, :2].flatten(2), x[:, :, -2:].flatten(2)], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    obj = ((x - bg).abs().sum(1, keepdim=True) > 0.2).float()
    return 1.0 + (weight - 1.0) * obj


def concept_sampler(shape: str | None = None, fill: str | None = None) -> SceneSampler:
    """Scenes that show one concept in every image: single objects of `shape` (named only)
    and/or with `fill` (e.g. the reserved heart or striped fill), all else drawn at random."""
    if shape is not None and shape not in spec.SHAPES:
        raise ConfigError(f"unknown shape {shape!r}; shapes: {', '.join(spec.SHAPES)}")
    if fill is not None and fill not in spec.FILLS:
        raise ConfigError(f"unknown fill {fill!r}; fills: {', '.join(spec.FILLS)}")
    return SceneSampler(two_object_prob=0.0, generic_prob=0.0 if shape else SceneSampler.generic_prob,
                        shapes=(shape,) if shape else spec.BASE_SHAPES,
                        fills=(fill,) if fill else ("solid",) if shape else spec.BASE_FILLS)


def export_folder(out_dir: str | Path, n: int, seed: int = 0, sampler: SceneSampler | None = None,
                  progress=None) -> Path:
    """Write `n` renders as PNGs plus `metadata.jsonl` (file_name, text, scene): the
    image-folder layout fine-tuning tools read. `out_dir` must be new or empty: an export
    never replaces a file."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"'{out}' is not an empty folder; export into a new one")
    out.mkdir(parents=True, exist_ok=True)
    rng, sampler = random.Random(seed), sampler or SceneSampler()
    lines = []
    for i in range(n):
        scene = sampler.sample(rng)
        name = f"{i:06d}.png"
        atomic_save(out / name, lambda tmp, image=render(scene): image.save(tmp, format="PNG"), replace=False)
        lines.append(json.dumps({"file_name": name, "text": caption(scene, rng), "scene": scene.to_dict()}))
        if progress is not None:
            progress(i + 1, n)
    atomic_write_text(out / "metadata.jsonl", "\n".join(lines) + "\n", replace=False)
    return out
