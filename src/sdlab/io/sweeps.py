"""Writing a one-parameter sweep (interpolation frames, mix weights, img2img strengths): a
labelled PNG strip, or an animation with one labelled frame per value."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from ..errors import ConfigError
from .animation import ANIMATION_SUFFIXES, save_animation
from .atomic import atomic_save
from .labels import auto_scale, labelled_grid

SWEEP_SUFFIXES = (".png",) + ANIMATION_SUFFIXES


def value_labels(values: Sequence[float], name: str) -> list[str]:
    """['w=0', 'w=0.25', ...]: values with at most two decimals."""
    return [f"{name}={f'{v:.2f}'.rstrip('0').rstrip('.')}" for v in values]


def check_sweep_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SWEEP_SUFFIXES:
        raise ConfigError(f"sweep file must end in {', '.join(SWEEP_SUFFIXES)}, got '{path}'")
    return path


def strip_path(path: str | Path) -> Path:
    """Where the labelled PNG strip of the animation `path` goes: `D/movie.gif` -> `D/movie-strip.png`."""
    path = Path(path)
    return path.with_name(f"{path.stem}-strip.png")


def save_sweep(images: Sequence[Image.Image], labels: Sequence[str], path: str | Path, *, fps: float = 4.0,
               scale: Optional[int] = None, replace: bool = False) -> Path:
    """.png: one labelled row; .gif / .mp4: one labelled frame per image. An existing `path` is
    kept (OutputExists) unless `replace`."""
    path = check_sweep_path(path)
    if not images or len(images) != len(labels):
        raise ConfigError(f"a sweep needs one label per image, got {len(images)} images and {len(labels)} labels")
    scale = scale or auto_scale(images[0].height)
    if path.suffix.lower() == ".png":
        strip = labelled_grid([list(images)], col_labels=list(labels), scale=scale)
        return atomic_save(path, lambda tmp: strip.save(tmp, format="PNG"), replace=replace)
    frames = [labelled_grid([[im]], col_labels=[label], scale=scale) for im, label in zip(images, labels)]
    return save_animation(path, frames, fps, replace=replace)
