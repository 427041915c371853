"""img2img strength sweeps (SDEdit, Meng et al. 2022): the same input, prompt and seed at several
strengths, side by side, to see where the edit starts to override the input's layout."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from PIL import Image

from ..errors import ConfigError
from .img2img import check_strength


@dataclass
class StrengthSweep:
    """`grid`: rows = images of the batch, columns = the input then one per strength;
    `results[k]` is the GenerationResult of `strengths[k]`."""

    grid: Image.Image
    strengths: list[float]
    results: list


def check_strengths(strengths) -> list[float]:
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence) or not strengths:
        raise ConfigError(f"strengths must be a non-empty list of numbers in [0, 1], got {strengths!r}")
    return [check_strength(s) for s in strengths]


def strength_sweep(pipe, image: Image.Image, config, strengths: Sequence[float], *, callback=None,
                   scale: int | None = None) -> StrengthSweep:
    """Run img2img from `image` once per strength with `config` (its seed, prompt, batch) and
    tile the results into a labelled grid."""
    from ..io.labels import auto_scale, labelled_grid
    from ..io.sweeps import value_labels

    strengths = check_strengths(strengths)
    if config.batch_count != 1:
        raise ConfigError(f"a strength sweep runs one batch per strength; batch_count must be 1, got {config.batch_count}")
    results = [pipe.generate(replace(config, strength=s), init_image=image, callback=callback) for s in strengths]
    first = results[0].images[0]
    source = image.convert("RGB").resize(first.size, Image.Resampling.LANCZOS)
    rows = [[source] + [r.images[b] for r in results] for b in range(config.batch_size)]
    row_labels = [f"seed {s}" for s in results[0].seeds] if config.batch_size > 1 else None
    grid = labelled_grid(rows, col_labels=["input"] + value_labels(strengths, "strength"), row_labels=row_labels,
                         scale=scale or auto_scale(first.height, 128))
    return StrengthSweep(grid, strengths, results)
