"""Import a script of benchmarks/ as a module (benchmarks/ on sys.path for the test, as when the
script runs as `python benchmarks/NAME.py`)."""

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop(name, None)
    return importlib.import_module(name)
