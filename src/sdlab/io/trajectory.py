"""Sampling trajectories: the noisy latent x_t and the predicted clean latent x0 at every step.

`TrajectoryRecorder` is a callback of the one callback contract (sdlab.callbacks): pass it as
`pipe.generate(config, callback=recorder)`. It keeps the latents of every step, decodes them
with the VAE in batches at the end and exports

- an animated GIF or MP4 (one frame per step; a frame is a grid with one row per image of the
  batch and two columns, x_t and x0),
- a PNG strip (per image an x_t row and an x0 row, one column per step, labelled).

The samplers report x after step i, which lies at the *next* noise level sigma_{i+1} (the last
one at sigma = 0). In sigma space x_t = x0 + sigma * eps has variance 1 + sigma^2, so x_t is
shown as x_t / sqrt(1 + sigma_{i+1}^2), the variance-preserving image the VAE can decode.
Several batches (`batch_count` > 1) are stacked as more rows of the same frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from ..callbacks import StepEvent
from ..errors import ConfigError
from . import animation
from .animation import ANIMATION_SUFFIXES, check_fps, save_animation
from .atomic import atomic_save
from .labels import auto_scale, labelled_grid

TRAJECTORY_SUFFIXES = ANIMATION_SUFFIXES + (".png",)
DECODE_BATCH = 16


@dataclass
class Trajectory:
    """Decoded frames: xt[k][b] and x0[k][b] for the k-th kept step and image b; `steps[k]` is
    that step's number and sigmas[k] the noise level of xt[k] (after the step)."""

    xt: list[list[Image.Image]]
    x0: list[list[Image.Image]]
    sigmas: list[float]
    steps: list[int]


class TrajectoryRecorder:
    """Callback that records x_t and predicted x0 after every step (every `every`-th step and
    the last one when `every` > 1)."""

    def __init__(self, pipe, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be an integer >= 1, got {every!r}")
        self.pipe, self.every = pipe, every
        self.runs: list[list[tuple[int, float, torch.Tensor, torch.Tensor]]] = []

    def bind(self, pipe) -> "TrajectoryRecorder":
        """Set the pipeline whose VAE decodes the frames; returns self."""
        self.pipe = pipe
        return self

    def __call__(self, event: StepEvent) -> None:
        if event.x is None or event.denoised is None:
            return
        if event.step == 0 or not self.runs:
            self.runs.append([])
        self.runs[-1].append((event.step, float(event.sigma), event.x.detach().float().cpu(),
                              event.denoised.detach().float().cpu()))

    def latents(self) -> tuple[torch.Tensor, torch.Tensor, list[float], list[int]]:
        """(x_t scaled for display, x0), both (steps, batch, C, h, w), the sigma of each x_t
        and the step numbers kept."""
        if not self.runs:
            raise ConfigError("the trajectory recorder saw no sampling steps")
        lengths = {len(r) for r in self.runs}
        if len(lengths) != 1:
            raise ConfigError(f"batches ran different numbers of steps ({sorted(lengths)}); record one at a time")
        first = self.runs[0]
        sigmas = [e[1] for e in first[1:]] + [0.0]  # x after step i sits at sigma_{i+1}
        keep = [i for i in range(len(first)) if i % self.every == 0 or i == len(first) - 1]
        xt = torch.stack([torch.cat([r[i][2] for r in self.runs]) / math.sqrt(1 + sigmas[i] ** 2) for i in keep])
        x0 = torch.stack([torch.cat([r[i][3] for r in self.runs]) for i in keep])
        return xt, x0, [sigmas[i] for i in keep], [first[i][0] for i in keep]

    def decode(self) -> Trajectory:
        """Decode every recorded latent with the pipeline's VAE, DECODE_BATCH at a time."""
        xt, x0, sigmas, steps = self.latents()
        s, b = xt.shape[:2]
        flat = torch.cat([xt, x0]).flatten(0, 1)
        images = []
        for chunk in flat.split(DECODE_BATCH):
            images += self.pipe.decode_images(chunk)
        rows = [images[i * b:(i + 1) * b] for i in range(2 * s)]
        return Trajectory(xt=rows[:s], x0=rows[s:], sigmas=sigmas, steps=steps)

    def save(self, path: str | Path, *, fps: float = 4.0, scale: Optional[int] = None,
             max_columns: int = 13, replace: bool = False) -> Path:
        """Write the trajectory as .gif, .mp4 (animation) or .png (strip), by suffix; an existing
        `path` is kept (OutputExists) unless `replace`."""
        path = check_trajectory_path(path)
        suffix = path.suffix.lower()
        check_fps(fps)
        traj = self.decode()
        scale = scale or auto_scale(traj.xt[0][0].height)
        if suffix == ".png":
            strip = strip_image(traj, scale=scale, max_columns=max_columns)
            return atomic_save(path, lambda tmp: strip.save(tmp, format="PNG"), replace=replace)
        return save_animation(path, animation_frames(traj, scale=scale), fps, replace=replace)


def check_trajectory_path(path: str | Path) -> Path:
    """`path` as a Path if it ends in .gif, .mp4 or .png (and .mp4 can be written here)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRAJECTORY_SUFFIXES:
        raise ConfigError(f"trajectory file must end in {', '.join(TRAJECTORY_SUFFIXES)}, got '{path}'")
    if suffix == ".mp4":
        animation.require_video()
    return path


def animation_frames(traj: Trajectory, scale: int = 1) -> list[Image.Image]:
    """One labelled frame per step: rows = images of the batch, columns = x_t, x0."""
    total = traj.steps[-1] + 1
    return [labelled_grid([[a, b] for a, b in zip(traj.xt[i], traj.x0[i])],
                          col_labels=[f"x_t {step + 1}/{total}", "x0"], scale=scale)
            for i, step in enumerate(traj.steps)]


def strip_image(traj: Trajectory, scale: int = 1, max_columns: int = 13) -> Image.Image:
    """Per image an x_t row and an x0 row; at most `max_columns` steps, evenly spaced, the last kept."""
    if not isinstance(max_columns, int) or max_columns < 2:
        raise ConfigError(f"max_columns must be an integer >= 2, got {max_columns!r}")
    n = len(traj.steps)
    cols = sorted({round(k * (n - 1) / (min(n, max_columns) - 1)) for k in range(min(n, max_columns))}) if n > 1 else [0]
    rows, labels = [], []
    for b in range(len(traj.xt[0])):
        tag = f"#{b} " if len(traj.xt[0]) > 1 else ""
        rows += [[traj.xt[i][b] for i in cols], [traj.x0[i][b] for i in cols]]
        labels += [f"{tag}x_t", f"{tag}x0"]
    return labelled_grid(rows, col_labels=[f"step {traj.steps[i] + 1}" for i in cols], row_labels=labels, scale=scale)
