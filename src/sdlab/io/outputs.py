"""Writing generation results into a folder: AUTOMATIC1111-style running numbers (`NNNNN-SEED.png`,
`grid-NNNNN.png`, ...), each new output numbered past every numbered name already there, so a
run never replaces an earlier run's files."""

from __future__ import annotations

import re
from pathlib import Path

from .atomic import OutputExists, clean_stale_temps
from .images import make_grid
from .metadata import save_png
from .paths import exists_message

# what sdlab numbers: NNNNN-..., and grid-NNNNN / sweep-NNNNN / mix-sweep-NNNNN (any suffix)
_NUMBERED = re.compile(r"^(?:(?:grid|sweep|mix-sweep)-)?(\d{5,})(?:[-.]|$)")


def output_folder(path: str | Path) -> Path:
    """`path`, made if missing, less the temp files of writes a killed sdlab left there; a clear
    ConfigError (before any sampling) if it cannot be used."""
    from ..errors import ConfigError

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use '{out}' as the output folder: {exc.strerror}") from None
    clean_stale_temps(out)
    return out


def output_file(path: str | Path, option: str = "--out") -> Path:
    """`path` for a file the user named, refused (OutputExists: "'x.gif' exists; choose another
    --out or remove it") if something is there; call it before the work that makes the file,
    which is then written with replace=False. Stale temps of its folder are cleaned."""
    path = Path(path)
    clean_stale_temps(path.parent)
    if path.exists() or path.is_symlink():
        raise OutputExists(exists_message(path, option))
    return path


def next_index(folder: str | Path) -> int:
    """The running number after every numbered name in `folder` (images, grids, sweeps)."""
    folder = Path(folder)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return max((int(m.group(1)) for n in names if (m := _NUMBERED.match(n))), default=-1) + 1


def save_numbered(folder: Path, name_of, write) -> tuple[int, Path]:
    """Write `write(path)` (which must refuse to replace) at `folder / name_of(index)` for the next
    free running number; if another writer takes that number first, the next one. (index, path)."""
    index = next_index(folder)
    while True:
        path = folder / name_of(index)
        try:
            return index, write(path)
        except OutputExists:
            index = max(index + 1, next_index(folder))


def save_result(result, out_dir: str | Path, *, grid: bool = True) -> list[Path]:
    """Save every image as `NNNNN-SEED.png` (A1111 `parameters` chunk + sdlab settings JSON)
    and, for more than one image, `grid-NNNNN.png` (NNNNN: the last image's number). Returns
    the written paths."""
    out = output_folder(out_dir)
    index, paths = -1, []
    for image, seed, info, settings in zip(result.images, result.seeds, result.infotexts, result.settings):
        index, path = save_numbered(out, lambda i, s=seed: f"{i:05d}-{s}.png",
                                    lambda p, im=image, i=info, s=settings: save_png(p, im, i, s))
        paths.append(path)
    if grid and len(result.images) > 1:
        path = out / f"grid-{index:05d}.png"
        save_png(path, make_grid(result.images), result.infotexts[0],
                 {"grid_of": [p.name for p in paths], **result.settings[0]})
        paths.append(path)
    return paths
