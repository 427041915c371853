"""A model folder's own settings files (generation_defaults.json, training_defaults.json): read as
JSON, checked, and refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, ModelLoadError


def load_json(path: Path):
    """The file's JSON as written (None when there is no file); unreadable JSON is a ModelLoadError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read '{path}': {exc}") from exc


def read_checked(folder: str | Path, name: str, check: Callable[[object], dict]) -> dict:
    """`check` of the folder's file `name` (empty when there is none); what `check` refuses becomes
    a ModelLoadError that names the file."""
    path = Path(folder) / name
    values = load_json(path)
    if values is None:
        return {}
    try:
        return check(values)
    except ConfigError as exc:
        raise ModelLoadError(f"'{path}': {exc}") from exc
