"""File names built from user input are one path component, checked where the path is built:
a placeholder like `<../../x>` must not write `../../x.safetensors` (CLI, HTTP API, job runner)."""

from __future__ import annotations

import pytest
from PIL import Image

from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.io.paths import safe_component
from sdlab.training.methods.textual_inversion import embedding_file_name


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", "a\nb", "x" * 101, None])
def test_safe_component_refuses_what_is_not_one_path_component(name):
    with pytest.raises(ConfigError, match="name must be a"):
        safe_component(name)


@pytest.mark.parametrize("name", ["my-shape", "sks", "x.y", "ünïcode", "a b", "..x", "x" * 100])
def test_safe_component_keeps_plain_names(name):
    assert safe_component(name) == name


@pytest.mark.parametrize("placeholder, message", [
    ("<../../../../tmp/x>", "so NAME must be a single file name"),
    ("<a\\b>", "so NAME must be a single file name"),
    ("<>", "so NAME must be a single file name"),
    ("<..>", "so NAME must be a single file name"),
    ("<learned_embeds>", "which the run writes for another result"),   # would replace the diffusers file
    ("<lora_kohya>", "which the run writes for another result"),
])
def test_placeholder_file_names(placeholder, message):
    with pytest.raises(ConfigError, match=message):
        embedding_file_name(placeholder)
    assert embedding_file_name("<my-shape>") == "my-shape.safetensors"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "work" / "data"
    folder.mkdir(parents=True)
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("method, option", [("textual-inversion", "--placeholder"), ("lora", "--new-token")])
def test_cli_train_refuses_a_placeholder_that_leaves_the_folder(capsys, tiny_model_dir, tmp_path, images,
                                                                method, option):
    before = _files(tmp_path)
    out = tmp_path / "work" / "runs" / "a"
    code = main(["train", method, "--model", str(tiny_model_dir), "--data", str(images), "--output-dir", str(out),
                 "--instance-prompt", "a <../../../escaped> shape", option, "<../../../escaped>", "--max-steps", "1",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    name = "new_token" if method == "lora" else "placeholder"
    assert err.startswith(f"sdlab: error: {name} '<../../../escaped>' names the embedding file")
    assert _files(tmp_path) == before and not (tmp_path / "escaped.safetensors").exists()


# --- the HTTP API and its job runner -----------------------------------------------------------

def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from sdlab.pipeline import Pipeline
    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    pipe = Pipeline.load(tiny_model_dir)
    app = create_app(ServerSettings(output_dir=tmp_path / "srv" / "out", model=str(tiny_model_dir)),
                     load_pipeline=lambda device: pipe)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


EVIL = "<../../../../escaped>"      # from srv/out/training/<job id>/ up to tmp_path


def test_api_train_refuses_a_placeholder_that_leaves_the_folder(client, tmp_path):
    r = client.post("/api/train", data={"method": "textual-inversion", "instance_prompt": "a shape",
                                        "placeholder": EVIL, "max_steps": "1"},
                    files=[("images", ("a.png", _png(), "image/png"))])
    assert r.status_code == 422 and "placeholder" in r.text and "single file name" in r.text
    assert client.get("/api/jobs").json()["jobs"] == []
    assert not list(tmp_path.rglob("escaped*"))


def test_a_stored_train_job_with_such_a_placeholder_fails_without_writing(client, tmp_path):
    """A job that reaches the runner without the request's checks (an older queue, the Python
    API) is refused where the run's files are named."""
    from server_util import wait_job

    upload = client.app.state.settings.upload_dir / "train-0123"
    upload.mkdir(parents=True)
    (upload / "a.png").write_bytes(_png())
    params = {"method": "textual-inversion", "instance_prompt": "a shape", "max_steps": 1, "learning_rate": None,
              "rank": 2, "lora_targets": "attention", "placeholder": EVIL, "initializer": "shape", "seed": 0,
              "data": "train-0123"}
    job = wait_job(client, client.app.state.queue.submit("train", params)["id"])
    assert job["state"] == "failed" and "names the embedding file" in job["error"]
    assert not list(tmp_path.rglob("escaped*"))
    params = {**params, "placeholder": "<fine>", "data": "../../../../data"}   # the upload folder name too
    job = wait_job(client, client.app.state.queue.submit("train", params)["id"])
    assert job["state"] == "failed" and "data must be a single file name" in job["error"]


def test_trained_run_names_stay_in_the_training_folder(tmp_path):
    from sdlab.server.train_jobs import trained_result

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "learned_embeds.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="trained must be a single file name"):
        trained_result(tmp_path / "out", "../../elsewhere")
