"""Shared output of the benchmark scripts: a Markdown section with date, title, command and
table, printed and optionally appended to benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def cpu_description() -> str:
    """'x86_64 CPU, 2 threads': the CPU a benchmark ran on, for its title."""
    import platform

    import torch

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def publish(script: str, title: str, table: str, argv=None, append: bool = False) -> str:
    args = " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"### {datetime.date.today()} · {title}\n\n`python benchmarks/{Path(script).name} {args}`\n\n"
            f"{table.rstrip()}\n")
    print(text)
    if append:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)
    return text
