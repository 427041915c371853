"""Writing generation results: numbered PNGs with metadata, plus a grid for batches."""

from __future__ import annotations

import re
from pathlib import Path

from .images import make_grid
from .metadata import save_png

_NUMBERED = re.compile(r"^(\d{5})-")


def output_folder(path: str | Path) -> Path:
    """`path`, made if missing; a clear ConfigError (before any sampling) if it cannot be."""
    from ..errors import ConfigError

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use '{out}' as the output folder: {exc.strerror}") from None
    return out


def next_index(folder: Path) -> int:
    """The next free AUTOMATIC1111-style running number in `folder`."""
    used = [int(m.group(1)) for p in folder.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(used, default=-1) + 1


def save_result(result, out_dir: str | Path, *, grid: bool = True) -> list[Path]:
    """Save every image as `NNNNN-SEED.png` (A1111 `parameters` chunk + sdlab settings JSON)
    and, for more than one image, `grid-NNNNN.png`. Returns the written paths."""
    out = output_folder(out_dir)
    index, paths = next_index(out), []
    for image, seed, info, settings in zip(result.images, result.seeds, result.infotexts, result.settings):
        path = out / f"{index:05d}-{seed}.png"
        save_png(path, image, info, settings)
        paths.append(path)
        index += 1
    if grid and len(result.images) > 1:
        path = out / f"grid-{index - 1:05d}.png"
        save_png(path, make_grid(result.images), result.infotexts[0],
                 {"grid_of": [p.name for p in paths], **result.settings[0]})
        paths.append(path)
    return paths
