"""The studio's HTTP API for ControlNet txt2img (POST /api/control), X/Y/Z plots (POST /api/grid) and
model merges (POST /api/merge) on the tiny random model: each job's images or files equal the Python
API's, bad values are 422s before any work, and a merge never replaces a file."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

from server_util import wait_job

from sdlab import GenerationConfig, Pipeline
from sdlab.control.loading import controlnet_from_unet


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


@pytest.fixture(scope="module")
def folders(pipe, tiny_model_dir, tmp_path_factory):
    """--controlnet-dir with a random ControlNet of the tiny UNet; --merge-dir with the tiny model and
    a copy whose UNet weights are shifted."""

    root = tmp_path_factory.mktemp("forms")
    torch.manual_seed(3)
    net = controlnet_from_unet(pipe.c.unet, conditioning_embedding_out_channels=(8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    net.save_pretrained(root / "controlnets" / "tiny-cn")
    shutil.copytree(tiny_model_dir, root / "merge" / "model-a")
    shutil.copytree(tiny_model_dir, root / "merge" / "model-b")
    weights = root / "merge" / "model-b" / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v + 0.5 for k, v in load_file(weights).items()}, weights)
    return root


@pytest.fixture
def client(pipe, folders, tmp_path):
    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    settings = ServerSettings(output_dir=tmp_path / "out", controlnet_dirs=(folders / "controlnets",),
                              merge_dirs=(folders / "merge",))
    with TestClient(create_app(settings, load_pipeline=lambda device: pipe), base_url="http://127.0.0.1:7860") as c:
        yield c


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _done(client, r) -> dict:
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    return job


def _image_of(client, link) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(link["url"]).content)).convert("RGB"))


def test_options_list_the_forms_choices(client):
    o = client.get("/api/options").json()
    assert o["controlnets"] == ["tiny-cn"] and "edges" in o["control_types"]
    assert o["merge_models"] == ["model-a", "model-b"] and {"steps", "cfg-scale", "prompt-sr"} <= set(o["grid_axes"])


def test_control_job_is_the_python_apis_controlled_generation(client, pipe, folders):
    from sdlab.control import Control

    control = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    form = {"prompt": "a red circle", "steps": "3", "seed": "4", "sampler": "Euler", "controlnet": "tiny-cn",
            "control_type": "edges", "control_scale": "0.7", "control_end": "0.8"}
    job = _done(client, client.post("/api/control", data=form, files={"control_image": ("c.png", _png(control))}))
    want = pipe.generate(GenerationConfig("a red circle", steps=3, seed=4, sampler="Euler"),
                         controls=[Control(control, folders / "controlnets" / "tiny-cn", scale=0.7, end=0.8,
                                           module="edges")])
    (image,) = job["result"]["images"]
    assert np.array_equal(_image_of(client, image), np.asarray(want.images[0]))
    assert "Module: edges, Model: tiny-cn" in image["infotext"] and "Weight: 0.7" in image["infotext"]
    plain = pipe.generate(GenerationConfig("a red circle", steps=3, seed=4, sampler="Euler")).images[0]
    assert not np.array_equal(_image_of(client, image), np.asarray(plain))


@pytest.mark.parametrize("change, message", [({"controlnet": "nope"}, "no ControlNet named 'nope'"),
                                             ({"controlnet": "../controlnets"}, "controlnet"),
                                             ({"control_scale": "3"}, "control_scale"),
                                             ({"control_start": "0.9", "control_end": "0.5"}, "below its end"),
                                             ({"control_type": "depth"}, "control_type")])
def test_bad_control_fields_are_422(client, change, message):
    form = {"prompt": "x", "controlnet": "tiny-cn", **change}
    r = client.post("/api/control", data=form, files={"control_image": ("c.png", _png(Image.new("RGB", (16, 16))))})
    assert r.status_code == 422 and message in r.text, r.text
    assert client.get("/api/jobs").json()["counts"].get("queued", 0) == 0


def test_grid_job_draws_every_cell_as_the_python_api(client, pipe):
    body = {"prompt": "a red circle", "seed": 7, "sampler": "Euler", "x": "steps=1,2", "y": "cfg-scale=1,4"}
    job = _done(client, client.post("/api/grid", json=body))
    r = job["result"]
    assert [(c["x"], c["y"]) for c in r["images"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert r["axes"]["x"]["name"] == "steps" and len(r["axes"]["x"]["labels"]) == 2
    assert job["total"] == 2 * (1 + 2)                         # the steps of every cell
    cell = r["images"][3]
    want = pipe.generate(GenerationConfig("a red circle", seed=7, sampler="Euler", steps=2, cfg_scale=4))
    assert np.array_equal(_image_of(client, cell), np.asarray(want.images[0]))
    grid = Image.open(io.BytesIO(client.get(r["grid"]["url"]).content))
    assert grid.width > 2 * 16 and grid.height > 2 * 16


@pytest.mark.parametrize("change, message", [({"x": "stepz=1,2"}, "stepz"), ({"x": "steps=1-65"}, "at most 64"),
                                             ({"x": "cfg-scale=a,b"}, "cfg-scale"),
                                             ({"x": "steps=2,500"}, "grid cell steps: Input should be less than or "
                                                                    "equal to 150"),
                                             ({"x": "width=16,2048"}, "grid cell width must be at most 1024")])
def test_bad_grid_axes_are_422(client, change, message):
    r = client.post("/api/grid", json={"prompt": "x", **change})
    assert r.status_code == 422 and message in r.text, r.text


def test_merge_job_writes_the_weighted_sum_with_progress(client, folders, tmp_path):
    job = _done(client, client.post("/api/merge", json={"a": "model-a", "b": "model-b", "alpha": 0.25,
                                                         "name": "ab"}))
    assert job["result"]["path"] == "models/ab" and job["result"]["kind"] == "model folder"
    assert job["total"] == job["result"]["tensors"] > 0
    rel = "unet/diffusion_pytorch_model.safetensors"
    a, b = (load_file(folders / "merge" / m / rel) for m in ("model-a", "model-b"))
    merged = load_file(tmp_path / "out" / "models" / "ab" / rel)
    key = next(iter(a))
    torch.testing.assert_close(merged[key], 0.75 * a[key] + 0.25 * b[key])
    assert Pipeline.load(tmp_path / "out" / "models" / "ab").c.name
    again = client.post("/api/merge", json={"a": "model-a", "b": "model-b", "alpha": 0.5, "name": "ab"})
    assert again.status_code == 422 and "'models/ab' exists" in again.text


@pytest.mark.parametrize("change, message", [({"name": "x/y"}, "name"), ({"name": ".."}, "single file name"),
                                             ({"a": "nope"}, "no model named 'nope'"), ({"alpha": 2}, "alpha"),
                                             ({"mode": "add-difference"}, "needs a third model C")])
def test_bad_merges_are_422(client, change, message):
    r = client.post("/api/merge", json={"a": "model-a", "b": "model-b", "alpha": 0.5, "name": "m", **change})
    assert r.status_code == 422 and message in r.text, r.text


def test_merge_reports_each_tensor_and_stops_at_a_cancel(folders, tmp_path):
    from sdlab.callbacks import CancelToken
    from sdlab.errors import Cancelled
    from sdlab.models.merge import merge

    a, b = folders / "merge" / "model-a", folders / "merge" / "model-b"
    events = []
    result = merge(a, b, tmp_path / "m", alpha=0.5, callback=events.append)
    assert [e.step for e in events] == list(range(result.tensors)) and {e.total for e in events} == {result.tensors}
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        merge(a, b, tmp_path / "cancelled", alpha=0.5, cancel=token)
    assert not (tmp_path / "cancelled").exists() and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_killed_merges_temp_folder_is_removed_at_start(tmp_path):
    from test_overwrite import dead_pid

    from sdlab.server.files import clean_server_temps

    models = tmp_path / "out" / "models"
    stale = models / f".merged.tmp-{dead_pid()}-0123abcd"
    (stale / "unet").mkdir(parents=True)
    (models / "kept").mkdir()
    removed = clean_server_temps(tmp_path / "out", tmp_path / "uploads")
    assert removed == [stale] and [p.name for p in models.iterdir()] == ["kept"]
