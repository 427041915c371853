"""Scene samplers for one concept, and the image-folder export fine-tuning tools read."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import ConfigError
from ..io.atomic import atomic_save, atomic_write_text
from . import spec
from .captions import caption
from .render import render
from .scene import SceneSampler


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
