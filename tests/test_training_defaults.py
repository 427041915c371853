"""A model's training recipes (training_defaults.json, sdlab.models.training_defaults): read and
checked, placed between the method's recipe and what the user typed, in the CLI and the Python API."""

from __future__ import annotations

import json
import shutil

import pytest

from sdlab.errors import ConfigError, ModelLoadError
from sdlab.models.shipped import model_location
from sdlab.models.training_defaults import (FILE, allowed_keys, check_training_defaults, model_recipe,
                                            read_training_defaults, shipped_recipe_as_written)


def _parse(*argv):
    from sdlab.cli.main import build_parser
    from sdlab.cli.train import config_from_args, method_from_args

    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args, method_from_args(args).options)


@pytest.fixture
def model_copy(tmp_path):
    """A folder that stands for another model: the shipped model's config files, its own defaults."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(model_location(None) / "model_index.json", folder)
    return folder


def test_the_shipped_file_is_valid_and_covers_the_full_fine_tune():
    recipe = read_training_defaults(model_location(None))
    assert set(recipe) == {"finetune"}
    assert recipe["finetune"]["learning_rate"] == 3e-4 and recipe["finetune"]["batch_size"] == 16
    assert shipped_recipe_as_written("finetune") == recipe["finetune"]
    assert shipped_recipe_as_written("lora") == {}


def test_cli_order_is_recipe_then_model_then_typed(model_copy):
    shipped = _parse("finetune", "--data", "d")
    assert (shipped.learning_rate, shipped.batch_size, shipped.max_steps, shipped.lr_scheduler,
            shipped.snr_gamma, shipped.caption_dropout) == (3e-4, 16, 1000, "cosine", 5.0, 0.1)
    typed = _parse("finetune", "--data", "d", "--lr", "1e-5", "--max-steps", "500")   # typed = the recipe's value
    assert (typed.learning_rate, typed.max_steps, typed.batch_size) == (1e-5, 500, 16)
    other = _parse("finetune", "--data", "d", "--model", str(model_copy))            # a model without the file
    assert (other.learning_rate, other.batch_size, other.max_steps, other.snr_gamma) == (1e-5, 1, 500, None)
    (model_copy / FILE).write_text(json.dumps({"finetune": {"learning_rate": 2e-6}, "lora": {"max_steps": 7}}))
    own = _parse("finetune", "--data", "d", "--model", str(model_copy))
    assert (own.learning_rate, own.batch_size) == (2e-6, 1)
    assert _parse("lora", "--data", "d", "--model", str(model_copy)).max_steps == 7
    lora = _parse("lora", "--data", "d")                                              # not in the shipped file
    assert (lora.learning_rate, lora.max_steps) == (5e-4, 1000)


def test_the_python_api_uses_the_same_order(model_copy):
    from sdlab.training.methods import registry

    spec = registry.get("finetune")
    options = spec.options()
    assert spec.config(options, data_dir="d", output_dir="o").learning_rate == 3e-4
    assert spec.config(options, data_dir="d", output_dir="o", learning_rate=1e-6).learning_rate == 1e-6
    assert spec.config(options, data_dir="d", output_dir="o", model=str(model_copy)).learning_rate == 1e-5
    assert spec.defaults(str(model_copy)) == dict(spec.recipe)
    assert model_recipe(str(model_copy / "model.safetensors"), "finetune") == {}     # a single file: none


@pytest.mark.parametrize("values, message", [
    ([1, 2], "a JSON object of methods"),
    ({"finetune": 3}, "a JSON object of methods"),
    ({"finetune": {"use_ema": True}}, "unknown training default.*use_ema.*allowed: "),
    ({"finetune": {"output_dir": "x"}}, "unknown training default.*output_dir"),
    ({"finetune": {"learning_rate": -1}}, "learning_rate must be"),
    ({"finetune": {"lr_scheduler": "wavy"}}, "lr_scheduler must be one of"),
    ({"paint": {"max_steps": 5}}, "method must be one of textual-inversion, .*; got 'paint'"),
])
def test_bad_values_are_refused_with_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message):
        check_training_defaults(values)


def test_a_bad_file_names_itself_and_stops_the_run(model_copy):
    (model_copy / FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"cannot read '.*{FILE}'"):
        _parse("finetune", "--data", "d", "--model", str(model_copy))
    (model_copy / FILE).write_text(json.dumps({"finetune": {"max_steps": 0}}))
    with pytest.raises(ModelLoadError, match=f"{FILE}'.*max_steps must be"):
        read_training_defaults(model_copy)


def test_switches_and_paths_are_not_model_defaults():
    keys = allowed_keys()
    assert {"learning_rate", "batch_size", "max_steps", "snr_gamma", "lr_scheduler", "caption_dropout"} <= set(keys)
    assert not {"use_ema", "cache_latents", "center_crop", "data_dir", "model", "seed", "method"} & set(keys)
