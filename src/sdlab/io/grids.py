"""Writing an X/Y/Z plot (sdlab.sampling.xyz_grid) into an output folder: every cell as a
numbered image with its own metadata (`NNNNN-SEED.png`), then `grid-NNNNN.png` per Z value
(with a Z axis) and the whole figure; running numbers, so nothing earlier is replaced."""

from __future__ import annotations

from pathlib import Path

from .metadata import save_png
from .outputs import output_folder, save_numbered, save_result


def grid_settings(result) -> dict:
    """What a grid PNG records of its axes: {"x": {"axis": "steps", "values": [10, 20]}, ...}."""
    return {k: {"axis": a.name, "values": list(a.values)} for k, a in result.axes.items()}


def save_grid(result, out_dir: str | Path, *, extra: dict | None = None) -> list[Path]:
    """Save the cells (each with its infotext and settings, plus `extra`), the per-Z grids and
    the whole grid. Returns the paths: cells in sampling order, then the grids."""
    out = output_folder(out_dir)
    paths = []
    for cell in result.cells:
        for s in cell.result.settings:
            s.update(extra or {})
            if cell.lora_scale is not None:
                s["lora_scale"] = cell.lora_scale
        paths += save_result(cell.result, out, grid=False)
    first, names = result.cells[0].result, [p.name for p in paths]
    figures = [(k, g) for k, g in enumerate(result.grids)] if len(result.grids) > 1 else []
    for k, figure in figures + [(None, result.grid)]:
        settings = {**first.settings[0], "xyz": grid_settings(result),
                    "grid_of": [n for n, c in zip(names, result.cells) if k is None or c.z == k]}
        if k is not None:
            settings["z_index"] = k
        _, path = save_numbered(out, lambda i: f"grid-{i:05d}.png",
                                lambda p, im=figure, s=settings: save_png(p, im, first.infotexts[0], s))
        paths.append(path)
    return paths
