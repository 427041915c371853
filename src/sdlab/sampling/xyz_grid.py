"""X/Y/Z plots (AUTOMATIC1111's "X/Y/Z plot" script): one image per combination of up to three
axes of generation settings (sdlab.sampling.xyz_axes), all from the same seed unless
`vary_seeds`, tiled into labelled grids: X values along the top, Y values down the left, one
grid per Z value, and the Z grids side by side under their labels."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from PIL import Image, ImageOps

from ..config import GenerationConfig
from ..errors import ConfigError
from .xyz_axes import LORA_SCALE, PROMPT_SR, Axis, make_axis, parse_axis

Z_GAP = 6     # pixels either side of each Z value's grid

@dataclass
class GridCell:
    """The image at (x, y, z) of the grid: its config, LoRA scale (lora-scale axis) and result."""

    x: int
    y: int
    z: int
    config: GenerationConfig
    lora_scale: Optional[float]
    result: object = None       # the GenerationResult of one image


@dataclass
class GridResult:
    """`cells` in sampling order (z, then y, then x); `grids[k]` is the labelled grid of Z value
    k; `grid` is the whole figure (the Z grids side by side, or the one grid)."""

    axes: dict[str, Axis]       # "x", "y", "z" -> Axis (those given)
    cells: list[GridCell]
    grids: list[Image.Image]
    grid: Image.Image

    def image(self, x: int, y: int = 0, z: int = 0) -> Image.Image:
        return next(c.result.images[0] for c in self.cells if (c.x, c.y, c.z) == (x, y, z))


def as_axis(spec) -> Optional[Axis]:
    """An Axis from an Axis, "name=values" or (name, values); None stays None."""
    if spec is None or isinstance(spec, Axis):
        return spec
    if isinstance(spec, str):
        return parse_axis(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return make_axis(*spec)
    raise ConfigError(f"a grid axis is (name, values) or 'name=values', got {spec!r}")


def plan_cells(base: GenerationConfig, axes: dict[str, Axis], *, vary_seeds: bool = False,
               img2img: bool = False, has_loras: bool = False) -> list[GridCell]:
    """Every cell's settings, checked before any sampling (a bad value: one ConfigError line)."""
    if base.batch_size != 1 or base.batch_count != 1:
        raise ConfigError("a grid cell is one image: batch_size and batch_count must be 1")
    names = [a.name for a in axes.values()]
    if len(set(names)) != len(names):
        raise ConfigError(f"a grid axis is given twice: {', '.join(names)}")
    if "strength" in names and not img2img:
        raise ConfigError("the strength axis is img2img's: give an init image (--image)")
    if LORA_SCALE in names and not has_loras:
        raise ConfigError("the lora-scale axis scales the grid's LoRA files: give them (--lora FILE)")
    for a in axes.values():
        if a.name == PROMPT_SR and a.values[0] not in base.prompt + base.negative_prompt:
            raise ConfigError(f"prompt-sr: {a.values[0]!r} (its first value) is not in the prompt or the "
                              "negative prompt")
    x, y, z = (axes.get(k) for k in "xyz")
    cells = []
    for zi in range(len(z.values) if z else 1):
        for yi in range(len(y.values) if y else 1):
            for xi in range(len(x.values) if x else 1):
                picks = [(a, a.values[i]) for a, i in ((x, xi), (y, yi), (z, zi)) if a is not None]
                cells.append(_cell(base, picks, (xi, yi, zi), len(cells) if vary_seeds else 0))
    return cells


def _cell(base: GenerationConfig, picks, at, seed_offset: int) -> GridCell:
    fields, scale, prompt, negative = {}, None, base.prompt, base.negative_prompt
    for axis, value in picks:
        if axis.name == PROMPT_SR:
            prompt, negative = (t.replace(axis.values[0], value) for t in (prompt, negative))
        elif axis.name == LORA_SCALE:
            scale = value
        else:
            fields[axis.field] = value
    fields.setdefault("prompt", prompt)
    fields.setdefault("negative_prompt", negative)
    fields["seed"] = fields.get("seed", base.seed) + seed_offset
    try:
        config = replace(base, **fields)
    except ConfigError as err:
        shown = ", ".join(f"{a.name}={v}" for a, v in picks)
        raise ConfigError(f"grid cell {shown}: {err}") from None
    return GridCell(*at, config, scale)


def cell_steps(config: GenerationConfig, img2img: bool) -> int:
    """Sampling steps of one cell (img2img runs steps * strength of them)."""
    return int(config.steps * config.strength) if img2img else config.steps


def xyz_grid(pipe, base: GenerationConfig, x=None, y=None, z=None, *, vary_seeds: bool = False,
             init_image: Optional[Image.Image] = None, loras: Sequence[str] = (), guidance=(), callback=None,
             cancel=None, scale: Optional[int] = None) -> GridResult:
    """Generate one image per (x, y, z) combination from `base` and tile them into labelled grids.

    Each axis is (name, values), "name=values" or an Axis (sdlab.sampling.xyz_axes): any
    GenerationConfig setting with a CLI option, `prompt-sr` or `lora-scale` (the scale of the
    `loras` files, applied per cell and taken out after; without that axis they apply at 1).
    Every cell uses base's seed (or the seed axis), plus the cell's index with `vary_seeds`.
    `callback` sees the steps of the whole grid (StepEvent.step/total count over every cell)."""
    from ..io.labels import BACK, auto_scale, labelled_grid

    axes = {k: a for k, a in zip("xyz", (as_axis(x), as_axis(y), as_axis(z))) if a is not None}
    if not axes:
        raise ConfigError("a grid needs at least one axis (x)")
    if "x" not in axes:
        raise ConfigError("give the x axis first (then y, then z)")
    cells = plan_cells(base, axes, vary_seeds=vary_seeds, img2img=init_image is not None, has_loras=bool(loras))
    total, done = sum(cell_steps(c.config, init_image is not None) for c in cells), 0
    for cell in cells:
        with _loras_at(pipe, loras, 1.0 if cell.lora_scale is None else cell.lora_scale):
            cell.result = pipe.generate(cell.config, init_image=init_image, guidance=guidance, cancel=cancel,
                                        callback=_offset(callback, done, total))
        done += cell_steps(cell.config, init_image is not None)
    first = cells[0].result.images[0]
    scale = scale or auto_scale(first.height, 128)
    xa, ya, za = (axes.get(k) for k in "xyz")
    grids = []
    for zi in range(len(za.values) if za else 1):
        rows = [[c.result.images[0] for c in cells if (c.y, c.z) == (yi, zi)] for yi in range(len(ya.values) if ya else 1)]
        grids.append(labelled_grid(rows, col_labels=list(xa.labels), row_labels=list(ya.labels) if ya else None,
                                   scale=scale))
    gap = [ImageOps.expand(g, border=(Z_GAP, 0), fill=BACK) for g in grids]      # Z grids apart
    grid = labelled_grid([gap], col_labels=list(za.labels)) if za else grids[0]
    return GridResult(axes, cells, grids, grid)


def _offset(callback, done: int, total: int):
    """`callback` with each cell's step counted from the grid's first step, out of the grid's total."""
    if callback is None:
        return None
    return lambda event: callback(replace(event, step=done + event.step, total=total))


@contextlib.contextmanager
def _loras_at(pipe, loras: Sequence[str], scale: float):
    handles = []
    try:
        for path in loras:
            handles.append(pipe.load_lora(path, scale))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()
