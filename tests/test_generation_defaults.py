"""A model's recommended settings (generation_defaults.json): used where the user gave none."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from server_util import wait_job

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError, ModelLoadError
from sdlab.models.generation_defaults import (FILE, model_default, read_generation_defaults,
                                              write_generation_defaults)


@pytest.fixture(scope="module")
def model_at_3(tiny_model_dir, tmp_path_factory):
    """The tiny model, recommending CFG 3."""
    out = tmp_path_factory.mktemp("defaults") / "tiny-cfg3"
    shutil.copytree(tiny_model_dir, out)
    write_generation_defaults(out, cfg_scale=3.0)
    return out


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in result.images])


def test_the_models_scale_is_used_when_the_config_names_none(model_at_3):
    pipe = Pipeline.load(model_at_3)
    assert pipe.generation_defaults["cfg_scale"] == 3.0
    config = GenerationConfig("a red circle", steps=2, seed=5)
    assert config.cfg_scale is None
    result = pipe.generate(config)
    assert result.settings[0]["cfg_scale"] == 3.0 and "CFG scale: 3.0" in result.infotexts[0]
    explicit = pipe.generate(GenerationConfig("a red circle", steps=2, seed=5, cfg_scale=3.0))
    other = pipe.generate(GenerationConfig("a red circle", steps=2, seed=5, cfg_scale=7.5))
    assert np.array_equal(pixels(result), pixels(explicit))
    assert not np.array_equal(pixels(result), pixels(other))
    assert other.settings[0]["cfg_scale"] == 7.5      # a scale the user gave wins


def test_without_the_file_the_scale_is_stable_diffusions(tiny_model_dir):
    assert read_generation_defaults(tiny_model_dir) == {}
    assert model_default(tiny_model_dir, "cfg_scale") == 7.5
    pipe = Pipeline.load(tiny_model_dir)
    assert pipe.resolved(GenerationConfig("x")).cfg_scale == 7.5


def test_a_model_trained_from_it_keeps_its_scale(model_at_3, tmp_path):
    """DreamBooth, fine-tuning and LCM save whole folders (save_model_folder): the base's file goes along."""
    from sdlab.training.methods.base import save_model_folder

    save_model_folder(Pipeline.load(model_at_3, device="cpu").c, tmp_path / "tuned")
    assert read_generation_defaults(tmp_path / "tuned") == {"cfg_scale": 3.0}


def test_model_default_reads_the_folder_without_loading(model_at_3):
    assert model_default(model_at_3, "cfg_scale") == 3.0


@pytest.mark.parametrize("content, words", [
    ({"cfg_scale": 500}, "cfg_scale must be between"),
    ({"steps": 4}, "allowed: cfg_scale"),
    ({"cfg_scale": "high"}, "must be a number"),
    ([3.0], "JSON object"),
])
def test_a_bad_file_is_refused_with_what_is_allowed(model_at_3, tmp_path, content, words):
    folder = tmp_path / "m"
    shutil.copytree(model_at_3, folder)
    (folder / FILE).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=words):
        Pipeline.load(folder)


def test_writing_checks_the_values(tmp_path):
    with pytest.raises(ConfigError, match="allowed: cfg_scale"):
        write_generation_defaults(tmp_path, sampler="LCM")
    assert not (tmp_path / FILE).exists()


def test_the_server_offers_and_uses_the_models_scale(model_at_3, tmp_path):
    """/api/options tells the studio the scale to show; a job without one gets the model's."""
    from fastapi.testclient import TestClient

    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    pipe = Pipeline.load(model_at_3)
    app = create_app(ServerSettings(output_dir=tmp_path / "out"), load_pipeline=lambda device: pipe)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/options").json()["default_cfg_scale"] == 3.0
        job = wait_job(client, client.post("/api/generate", json={"prompt": "a red circle", "steps": 2,
                                                                  "seed": 1}).json()["id"])
        assert job["state"] == "done", job["error"]
        assert "CFG scale: 3.0" in job["result"]["images"][0]["infotext"]
