"""Shipped models by name (`--model shapes-sd`, `--model shapes-sd-lcm`), a path of the user's first."""

from pathlib import Path

import pytest

from sdlab.errors import ModelLoadError
from sdlab.models.generation_defaults import model_default
from sdlab.models.shipped import SHIPPED, model_location
from sdlab.pipeline import DEFAULT_MODEL


def test_names_resolve_to_the_assets_unless_the_path_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_location(None) == DEFAULT_MODEL == SHIPPED["shapes-sd"]
    assert model_location("shapes-sd-lcm") == SHIPPED["shapes-sd-lcm"]
    (tmp_path / "shapes-sd").mkdir()                   # a folder of the user's with that name wins
    assert model_location("shapes-sd") == Path("shapes-sd")
    assert model_location(tmp_path / "x") == tmp_path / "x"


def test_the_shipped_models_recommended_scale_is_read_by_name():
    assert model_default("shapes-sd", "cfg_scale") == model_default(None, "cfg_scale")


def test_an_unknown_model_names_what_is_allowed(tmp_path):
    from sdlab.models.loader import load_pipeline_components

    with pytest.raises(ModelLoadError, match="shapes-sd, shapes-sd-lcm"):
        load_pipeline_components(tmp_path / "nothing-here")
