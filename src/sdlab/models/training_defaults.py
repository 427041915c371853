"""A model's measured training recipes: `training_defaults.json` in its diffusers folder.

A training method's defaults (its MethodSpec.recipe) are chosen for Stable Diffusion; a model that
needs other values for a method to work (the shipped 64-pixel model's full fine-tune wants a learning
rate 30x Stable Diffusion's) carries them here, per method, as generation_defaults.json carries its
guidance scale. `sdlab train` and the Python API use them where the user gave no value:

    {"finetune": {"learning_rate": 3e-4, "batch_size": 16, "max_steps": 1000}}

Only the training loop's numbers and names are allowed (TrainingConfig fields); switches (--ema,
--cache-latents, ...) have no "off" flag, so they stay the user's to turn on.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import ConfigError
from .folder_json import load_json, read_checked

FILE = "training_defaults.json"
NOT_A_RECIPE = {"method", "options", "data_dir", "output_dir", "model", "instance_prompt", "validation_data",
                "validation_prompts", "device", "seed"}


def allowed_keys() -> list[str]:
    """The TrainingConfig fields a model may set: numbers and names of the loop, not paths or switches."""
    from ..training.config import TrainingConfig

    return [f.name for f in fields(TrainingConfig)
            if f.name not in NOT_A_RECIPE and f.type not in ("bool", bool) and f.default is not MISSING]


def check_training_defaults(values) -> dict:
    """`values` if it maps method names to {TrainingConfig field: value} within the fields' bounds."""
    from ..training.config import TrainingConfig

    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ConfigError('training defaults must be a JSON object of methods, such as '
                          '{"finetune": {"learning_rate": 3e-4}}')
    allowed = allowed_keys()
    for method, recipe in values.items():
        unknown = sorted(set(recipe) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown training default(s) {', '.join(unknown)} for {method!r}; "
                              f"allowed: {', '.join(allowed)}")
        TrainingConfig(method=method, data_dir=".", output_dir=".", **recipe)     # the options' own bounds
    return {method: dict(recipe) for method, recipe in values.items()}


def read_training_defaults(folder: str | Path) -> dict:
    """{method: recipe} of the model folder (empty when it has no file); a bad file is refused."""
    return read_checked(folder, FILE, check_training_defaults)


def shipped_recipe_as_written(method: str) -> dict:
    """The shipped model's defaults for `method`, unchecked (checking imports the training methods,
    and with them torch): what `sdlab train METHOD --help` shows; a run checks them."""
    from .shipped import model_location

    values = load_json(model_location(None) / FILE)
    recipe = values.get(method) if isinstance(values, dict) else None
    return recipe if isinstance(recipe, dict) else {}


def model_recipe(model: str | Path | None, method: str) -> dict:
    """The training defaults for `method` that the model at `model` carries (None: the shipped model;
    a single file or a folder without the file: none)."""
    from .shipped import model_location

    folder = model_location(model)
    return read_training_defaults(folder).get(method, {}) if folder.is_dir() else {}
