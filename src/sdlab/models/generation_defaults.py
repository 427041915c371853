"""A model's recommended generation settings: `generation_defaults.json` in its diffusers folder.

As InvokeAI's per-model default settings (and transformers' generation_config.json): a model trained
to want another guidance scale than Stable Diffusion's 7.5 says so, and every sdlab front end uses it
where the user gave none. Only the settings a model decides are allowed (today: cfg_scale).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .folder_json import read_checked

FILE = "generation_defaults.json"
KEYS = ("cfg_scale",)
FALLBACK = {"cfg_scale": 7.5}      # Stable Diffusion's (diffusers' and sdlab's) when the model names none


def read_generation_defaults(folder: str | Path) -> dict:
    """The recommended settings of the model folder (empty when it has no file); a bad file is refused."""
    return read_checked(folder, FILE, check_generation_defaults)


def check_generation_defaults(values) -> dict:
    """`values` if it is a dict of allowed settings with allowed values (GenerationConfig's bounds)."""
    from ..config import GenerationConfig

    if not isinstance(values, dict):
        raise ConfigError(f"generation defaults must be a JSON object such as {{\"cfg_scale\": 5.0}}, "
                          f"got {type(values).__name__}")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown generation default(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    if any(v is None or isinstance(v, bool) for v in values.values()):
        raise ConfigError("generation defaults must be numbers")
    GenerationConfig("", **values)     # the same bounds as the option
    return dict(values)


def write_generation_defaults(folder: str | Path, **values) -> Path:
    """Write the model folder's recommended settings (atomically; replaces an earlier file)."""
    from ..io.atomic import atomic_write_text

    return atomic_write_text(Path(folder) / FILE, json.dumps(check_generation_defaults(values), indent=2) + "\n")


def settings_of(components) -> dict:
    """The settings loaded components recommend (their folder's file over Stable Diffusion's)."""
    return {**FALLBACK, **components.extra.get("generation_defaults", {})}


def model_default(model: str | Path | None, name: str):
    """The value of setting `name` that the model at `model` recommends (None: the shipped model),
    without loading it: its folder's generation_defaults.json, else Stable Diffusion's."""
    from .shipped import model_location

    folder = model_location(model)
    return (read_generation_defaults(folder) if folder.is_dir() else {}).get(name, FALLBACK[name])
