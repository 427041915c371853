"""Shared output of the benchmark scripts: a Markdown section with title, command, date and table,
printed and optionally recorded in benchmarks/RESULTS.md (one current section per script and
title: a newer run replaces its own section), and the path of an experiment's one JSON result."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from sdlab.io.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "RESULTS.md"
RESULTS_DIR = Path(__file__).parent / "results"


def cpu_description() -> str:
    """'x86_64 CPU, 2 threads': the CPU a benchmark ran on, for its title."""
    import platform

    import torch

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def result_file(script: str) -> Path:
    """benchmarks/results/NAME.json: the one current result of the experiment benchmarks/NAME.py."""
    return RESULTS_DIR / f"{Path(script).stem}.json"


def publish(script: str, title: str, table: str, argv=None, record: bool = False) -> str:
    """Print a section for `table`; with `record`, also write it to RESULTS.md in place of that
    script's section with the same title (a new title is added at the end)."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python benchmarks/{Path(script).name} {args}".rstrip()
    text = f"### {title}\n\n`{command}` (measured {datetime.date.today()})\n\n{table.rstrip()}\n"
    print(text)
    if record:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        atomic_write_text(RESULTS, replace_section(old, text, script))
    return text


def replace_section(document: str, section: str, script: str) -> str:
    """`document` with `section` in place of the `### ` section of the same title whose command
    runs `script`, or with `section` appended when there is none."""
    head, *sections = document.split("\n### ")
    new = section.removeprefix("### ").strip("\n")
    title, command = new.splitlines()[0], f"python benchmarks/{Path(script).name} "
    same = [i for i, s in enumerate(sections) if s.splitlines()[0] == title and command in s.replace("`", " ")]
    if same:
        sections[same[0]] = new
    else:
        sections.append(new)
    return "\n\n### ".join([head.rstrip("\n")] + [s.strip("\n") for s in sections]) + "\n"


def save_example_grid(rows, path: Path, limit: int = 16) -> None:
    """The first `limit` rows of example images as one grid PNG (a row per case, cells upscaled to
    128 px); an existing file is kept (OutputExists), never replaced."""
    from PIL import Image

    from sdlab.io.atomic import atomic_save
    from sdlab.io.images import make_grid

    rows = rows[:limit]
    if rows:
        cells = [im.resize((128, 128), Image.Resampling.NEAREST) for row in rows for im in row]
        grid = make_grid(cells, cols=len(rows[0]))
        atomic_save(path, lambda tmp: grid.save(tmp, format="PNG"), replace=False)
