"""Control units from text, as `sdlab generate --control IMAGE[:TYPE[:SCALE]] --controlnet PATH` and
the HTTP API give them: the image spec parsed, models paired with images in order."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError
from .preprocess import PREPROCESSORS
from .spec import Control

SPEC = "IMAGE[:TYPE[:SCALE]]"


def parse_spec(text: str) -> tuple[str, str, float]:
    """"IMAGE[:TYPE[:SCALE]]" -> (IMAGE, TYPE, SCALE); TYPE one of PREPROCESSORS (default none),
    SCALE a number (default 1). A path that itself holds ':' is kept whole when it exists."""
    parts = text.split(":")
    if Path(text).exists() or len(parts) == 1:
        return text, "none", 1.0
    scale = 1.0
    if len(parts) >= 3 and parts[-2] in PREPROCESSORS:
        try:
            scale = float(parts[-1])
        except ValueError:
            raise ConfigError(f"--control {text}: the scale '{parts[-1]}' must be a number, as in "
                              f"{':'.join(parts[:-1])}:0.8") from None
        parts = parts[:-1]
    if parts[-1] not in PREPROCESSORS:
        raise ConfigError(f"--control {text}: unknown control type '{parts[-1]}'; give {SPEC} with TYPE one of: "
                          f"{', '.join(PREPROCESSORS)}")
    return ":".join(parts[:-1]), parts[-1], scale


def _per_control(values: Optional[Sequence[float]], n: int, name: str, default: float) -> list[float]:
    if not values:
        return [default] * n
    if len(values) not in (1, n):
        raise ConfigError(f"{len(values)} {name} values for {n} controls: give one for all or one per --control")
    return list(values) * n if len(values) == 1 else list(values)


def controls_from_specs(specs: Sequence[str], models: Sequence[str], *, starts: Optional[Sequence[float]] = None,
                        ends: Optional[Sequence[float]] = None, guess_mode: bool = False, read_image=None) -> list[Control]:
    """Control units: image specs paired in order with ControlNet paths (or one path for all),
    start / end fractions one for all or one per control. `read_image(path)` opens an image."""
    if not specs:
        if models:
            raise ConfigError("--controlnet needs a control image: add --control IMAGE[:TYPE[:SCALE]]")
        return []
    if len(models) not in (1, len(specs)):
        raise ConfigError(f"{len(specs)} --control images but {len(models)} --controlnet models: give one "
                          "--controlnet per --control, in the same order (or one for all)")
    if read_image is None:
        from ..io.images import load_image

        def read_image(path):
            return load_image(path, what="control image")
    models = list(models) * len(specs) if len(models) == 1 else list(models)
    starts, ends = _per_control(starts, len(specs), "--control-start", 0.0), _per_control(ends, len(specs),
                                                                                         "--control-end", 1.0)
    units = []
    for spec, model, start, end in zip(specs, models, starts, ends):
        path, kind, scale = parse_spec(spec)
        units.append(Control(read_image(path), model, scale=scale, start=start, end=end, guess_mode=guess_mode,
                             module=kind))
    return units
