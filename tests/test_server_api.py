"""HTTP API of `sdlab serve`, in process (FastAPI TestClient) with a worker that really runs jobs
on a tiny random model: jobs, metadata, validation, uploads, path traversal, auth, cancel, restart."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.io.metadata import read_png_metadata
from sdlab.server.app import create_app
from sdlab.server.settings import ServerSettings
from sdlab.server.store import JobStore
from server_util import wait_job

TOKEN = "s3cret-token-for-tests"
SMALL = {"width": 32, "height": 32}


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    from sdlab.pipeline import Pipeline

    return Pipeline.load(tiny_model_dir)


@pytest.fixture
def make_client(tiny_pipe, tmp_path):
    """make_client(**settings) -> a started TestClient on a loopback host (closed at teardown)."""
    clients = []

    def make(**kw):
        kw.setdefault("output_dir", tmp_path / "out")
        app = create_app(ServerSettings(**kw), load_pipeline=lambda device: tiny_pipe)
        client = TestClient(app, base_url="http://127.0.0.1:7860").__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def png_bytes(size=(32, 32), color="red", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def test_generate_job_writes_pngs_with_metadata_and_streams_progress(make_client, tmp_path):
    c = make_client()
    r = c.post("/api/generate", json={"prompt": "a red circle", "negative_prompt": "blue", "steps": 3, "seed": 5,
                                      "batch_size": 2, "sampler": "DPM++ 2M Karras", "cfg_scale": 4, **SMALL})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    job_id = r.json()["id"]
    with c.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert events[-1]["state"] == "done"
    steps = [e["step"] for e in events if e["state"] == "running"]
    assert steps == sorted(steps) and max(steps) <= 3
    assert any(e["preview"] and e["preview"].startswith("data:image/png;base64,") for e in events)
    job = wait_job(c, job_id)
    assert (job["state"], job["step"], job["total"], job["progress"]) == ("done", 3, 3, 1.0)
    images = job["result"]["images"]
    assert [im["seed"] for im in images] == [5, 6] and job["result"]["grid"]["name"] == "grid-00001.png"
    meta = read_png_metadata(tmp_path / "out" / images[1]["name"])
    assert meta["prompt"] == "a red circle" and meta["negative_prompt"] == "blue"
    assert meta["params"]["Seed"] == 6 and (meta["params"]["Sampler"], meta["params"]["Schedule type"]) == \
        ("DPM++ 2M", "Karras")
    assert meta["params"]["Steps"] == 3 and meta["params"]["CFG scale"] == 4.0 and meta["params"]["Size"] == "32x32"
    r = c.get(images[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    assert "attachment" in c.get(images[0]["url"] + "?download=1").headers["content-disposition"]
    gallery = c.get("/api/gallery").json()
    assert gallery["total"] == 3 and {i["name"] for i in gallery["items"]} == {"00000-5.png", "00001-6.png",
                                                                               "grid-00001.png"}
    item = next(i for i in gallery["items"] if i["name"] == "00000-5.png")
    assert item["params"]["Seed"] == 5 and item["settings"]["mode"] == "txt2img" and not item["grid"]
    assert c.get("/api/health").json()["jobs"]["done"] == 1


def test_img2img_job_from_upload(make_client, tmp_path):
    c = make_client()
    r = c.post("/api/img2img", data={"prompt": "a blue star", "steps": "4", "strength": "0.5", "seed": "2", **SMALL},
               files={"image": ("in.jpg", png_bytes((48, 40), "green", "JPEG"), "image/jpeg")})
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert job["total"] == 2  # strength 0.5 of 4 steps
    meta = read_png_metadata(tmp_path / "out" / job["result"]["images"][0]["name"])
    assert meta["params"]["Denoising strength"] == 0.5 and meta["settings"]["mode"] == "img2img"


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "steps": 151}, "steps"),
    ({"prompt": "x", "width": 30}, "width"),
    ({"prompt": "x", "height": 4}, "height"),
    ({"prompt": "x", "width": 512}, "width"),            # over this server's max_side (256)
    ({"prompt": "x", "sampler": "Euler z"}, "sampler"),
    ({"prompt": "x", "batch_size": 8, "batch_count": 3}, "batch_size * batch_count"),
    ({"prompt": "x", "cfg_scale": "NaN"}, "cfg_scale"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "a\x00b"}, "prompt"),
    ({"prompt": "x", "stepz": 3}, "stepz"),
    ({}, "prompt"),
])
def test_bad_generate_inputs_are_422_naming_the_field(make_client, body, field):
    c = make_client(max_side=256)
    r = c.post("/api/generate", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert c.get("/api/jobs").json()["counts"]["queued"] == 0


@pytest.mark.parametrize("content", [b"{", b"[1, 2]", b"null", b'"prompt"'])
def test_malformed_json_is_422(make_client, content):
    r = make_client().post("/api/generate", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_upload_checks(make_client):
    c = make_client(max_upload_bytes=20_000, max_upload_pixels=500_000)

    def post(data, name="in.png"):
        return c.post("/api/img2img", data={"prompt": "x", "steps": "2"}, files={"image": (name, data, "image/png")})

    r = post(b"this is not an image")
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    assert post(b"").status_code in (400, 422)
    noisy = Image.frombytes("RGB", (128, 128), random.Random(0).randbytes(128 * 128 * 3))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > 20_000
    r = post(buf.getvalue())
    assert r.status_code == 413 and "over the limit of 20000" in r.json()["detail"]
    r = post(png_bytes((1000, 1000)))  # small file, 1 M pixels: decompression bomb guard
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]
    r = post(png_bytes((16, 16), fmt="TIFF"), "in.tif")
    assert r.status_code == 415 and "TIFF" in r.json()["detail"]
    r = post(png_bytes((64, 64))[:60])  # a valid header, truncated data
    assert r.status_code == 400
    r = c.post("/api/img2img", data={"prompt": "x"})
    assert r.status_code == 422 and "image" in r.text
    r = c.post("/api/img2img", data={"prompt": "x", "strength": "2"},
               files={"image": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 422 and "strength" in r.text
    r = c.post("/api/img2img", content=b"x" * 2_000_000, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert c.get("/api/jobs").json()["jobs"] == []


def test_files_are_served_only_from_the_output_folder(make_client, tmp_path):
    out = tmp_path / "out"
    c = make_client()
    png = png_bytes()
    (tmp_path / "secret.png").write_bytes(png)
    (out / "sub").mkdir(parents=True)
    (out / "ok.png").write_bytes(png)
    (out / "sub" / "deep.png").write_bytes(png)
    (out / "notes.txt").write_text("not an image")
    (out / "link.png").symlink_to(tmp_path / "secret.png")
    (out / "dirlink").symlink_to(tmp_path)
    (out / ".sdlab-server" / "uploads").mkdir(parents=True, exist_ok=True)
    (out / ".sdlab-server" / "uploads" / "u.png").write_bytes(png)
    assert c.get("/files/ok.png").content == png
    assert c.get("/files/sub/deep.png").status_code == 200
    bad = ["/files/../secret.png", "/files/%2e%2e/secret.png", "/files/..%2fsecret.png", "/files/%2E%2E%2Fsecret.png",
           "/files/sub/../../secret.png", "/files/sub/%2e%2e/%2e%2e/secret.png", "/files/../pyproject.toml",
           f"/files/{tmp_path}/secret.png", f"/files//{tmp_path}/secret.png", "/files/%2Fetc%2Fpasswd",
           "/files//etc/passwd", "/files/link.png", "/files/dirlink/secret.png", "/files/notes.txt",
           "/files/.sdlab-server/uploads/u.png", "/files/.sdlab-server/jobs.sqlite3", "/files/", "/files/missing.png",
           "/files/ok.png%00.txt", "/files/sub"]
    for url in bad:
        r = c.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert r.content != png
    assert c.get("/api/gallery").json()["total"] == 1  # ok.png; not the symlink, not hidden files


def test_non_loopback_bind_needs_a_token(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SDLAB_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs an access token"):
        ServerSettings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="at least 8"):
        ServerSettings(host="0.0.0.0", token="short")
    assert ServerSettings(host="127.0.0.2").token is None and ServerSettings(host="::1").token is None
    assert ServerSettings(host="0.0.0.0", token=TOKEN).host == "0.0.0.0"
    code = main(["serve", "--host", "0.0.0.0", "--port", "0", "--output-dir", str(tmp_path)])
    assert code == 2 and "needs an access token" in capsys.readouterr().err


def _api_requests(app):
    """(method, path) of every route, with a made-up job id: new endpoints are checked automatically."""
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or []):
            if method in ("HEAD", "OPTIONS") or route.path == "/":
                continue
            yield method, route.path.replace("{job_id}", "nojob").replace("{path:path}", "x.png")


def test_with_a_token_every_endpoint_requires_it(make_client):
    c = make_client(host="0.0.0.0", token=TOKEN)
    routes = list(_api_requests(c.app))
    assert len(routes) >= 12 and ("GET", "/openapi.json") in routes
    for method, path in routes:
        assert c.request(method, path).status_code == 401, path
        assert c.request(method, path, headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401, path
        assert c.request(method, path, params={"token": TOKEN[:-1]}).status_code == 401, path
    assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page itself
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/api/health", headers=auth).status_code == 200
    assert c.get("/api/samplers", params={"token": TOKEN}).status_code == 200
    job = c.post("/api/generate", json={"prompt": "x", "steps": 1, **SMALL}, headers=auth).json()
    assert wait_job(c, job["id"], headers=auth)["state"] == "done"
    url = job["id"] and c.get(f"/api/jobs/{job['id']}", headers=auth).json()["result"]["images"][0]["url"]
    assert c.get(url).status_code == 401 and c.get(url, params={"token": TOKEN}).status_code == 200


def test_loopback_server_refuses_foreign_hosts_and_origins(make_client):
    c = make_client()
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/health", headers={"Host": "evil.example:7860"}).status_code == 403
    assert c.post("/api/generate", json={"prompt": "x"}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.post("/api/generate", json={"prompt": "x", "steps": 1, **SMALL},
                  headers={"Origin": "http://localhost:7860"}).status_code == 202


def test_cancel_queue_limit_and_resume(make_client, tmp_path):
    c = make_client(max_queue=1)
    long = c.post("/api/generate", json={"prompt": "slow", "steps": 150, **SMALL}).json()
    wait_job(c, long["id"], states={"running"}, min_step=1)
    short = c.post("/api/generate", json={"prompt": "short", "steps": 2, "seed": 1, **SMALL})
    assert short.status_code == 202 and short.json()["state"] == "queued"
    full = c.post("/api/generate", json={"prompt": "too many", "steps": 2, **SMALL})
    assert full.status_code == 503 and full.headers["Retry-After"] and "queue is full" in full.json()["detail"]
    short_id = short.json()["id"]
    assert c.post(f"/api/jobs/{short_id}/cancel").json()["state"] == "cancelled"  # queued: at once
    c.post(f"/api/jobs/{long['id']}/cancel")
    job = wait_job(c, long["id"])
    assert job["state"] == "cancelled" and 0 < job["step"] < 150 and job["result"] is None
    assert list((tmp_path / "out").glob("*.png")) == []
    assert c.post(f"/api/jobs/{long['id']}/cancel").status_code == 409
    assert c.post("/api/jobs/nojob/cancel").status_code == 404
    r = c.post(f"/api/jobs/{short_id}/resume")
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running", "done")
    done = wait_job(c, short_id)
    assert done["state"] == "done" and done["attempts"] == 1 and done["result"]["images"][0]["seed"] == 1
    assert c.post(f"/api/jobs/{short_id}/resume").status_code == 409


def test_graceful_stop_marks_the_running_job_interrupted(tiny_pipe, tmp_path):
    settings = ServerSettings(output_dir=tmp_path / "out")
    with TestClient(create_app(settings, load_pipeline=lambda d: tiny_pipe), base_url="http://localhost") as c:
        job = c.post("/api/generate", json={"prompt": "slow", "steps": 150, **SMALL}).json()
        wait_job(c, job["id"], states={"running"}, min_step=1)
    store = JobStore(settings.db_path)
    assert store.recovered == 0  # nothing was left running: the shutdown already recorded it
    assert store.get(job["id"])["state"] == "interrupted"
    store.close()


def test_queue_survives_a_restart(make_client, tmp_path):
    settings = ServerSettings(output_dir=tmp_path / "out")
    store = JobStore(settings.db_path)
    params = {"prompt": "a red circle", "steps": 2, "seed": 3, **SMALL}
    ids = [store.add("txt2img", {**params, "seed": s})["id"] for s in (1, 2, 3)]
    assert store.claim()["id"] == ids[0]  # a process "dies" while job 0 runs
    future = store.add("train-lora", {"prompt": "from a newer sdlab"})["id"]
    store.close()
    c = make_client()
    for job_id in ids[1:]:
        assert wait_job(c, job_id)["state"] == "done"
    first = c.get(f"/api/jobs/{ids[0]}").json()
    assert first["state"] == "interrupted" and "stopped" in first["error"]
    assert c.post(f"/api/jobs/{ids[0]}/resume").status_code == 200
    first = wait_job(c, ids[0])
    assert first["state"] == "done" and first["attempts"] == 2
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["00000-2.png", "00001-3.png", "00002-1.png"]
    unknown = wait_job(c, future)
    assert unknown["state"] == "failed" and "unknown job kind 'train-lora'" in unknown["error"]


def test_a_new_job_kind_is_one_registered_function(make_client):
    from sdlab.callbacks import StepEvent
    from sdlab.server.jobs import RUNNERS, register_kind

    @register_kind("count")
    def run_count(ctx):
        step = ctx.callback()
        for i in range(ctx.params["n"]):
            ctx.cancel.raise_if_cancelled()
            step(StepEvent(i, ctx.params["n"], metrics={"loss": 1.0 / (i + 1)}))
        return {"counted": ctx.params["n"], "model": ctx.pipe.c.name}

    try:
        c = make_client()
        job = c.app.state.queue.submit("count", {"n": 5})
        done = wait_job(c, job["id"])
        assert done["result"] == {"counted": 5, "model": "tiny-sd"} and (done["step"], done["total"]) == (5, 5)
        assert "count" in c.get("/api/health").json()["kinds"]
    finally:
        RUNNERS.pop("count")


def test_fuzz_openapi_no_server_errors(tiny_pipe, tmp_path):
    """schemathesis: positive and negative cases for every operation of /openapi.json; no 5xx
    (except 503 'queue is full', which is the documented rejection). Jobs it creates are cancelled."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    app = create_app(ServerSettings(output_dir=tmp_path / "out", host="0.0.0.0", token=TOKEN, max_side=64,
                                    max_images=2, max_queue=5), load_pipeline=lambda device: tiny_pipe)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen: dict[int, int] = {}

    def check(case):
        r = case.call(headers=auth)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        full = r.status_code == 503 and "queue is full" in r.text
        assert r.status_code < 500 or full, f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:300]}"
        if r.status_code == 202:  # keep the worker free: cancel what the fuzzer queued
            app.state.queue.cancel(r.json()["id"])

    operations = [result.ok() for result in schema.get_all_operations()]
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=8, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                check(case)

            try:
                run()
            except Unsatisfiable:  # no input to make invalid (e.g. GET /api/health)
                assert mode == schemathesis.GenerationMode.NEGATIVE, op.label
    print(f"schemathesis: {len(operations)} operations, status codes {dict(sorted(seen.items()))}")
    assert len(operations) >= 12 and sum(seen.values()) >= 100
    assert seen.get(202, 0) >= 2 and seen.get(200, 0) >= 10 and seen.get(422, 0) >= 10


def _served_png(c, url) -> Image.Image:
    r = c.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", url
    return Image.open(io.BytesIO(r.content)).convert("RGB")


def test_attend_job_serves_the_image_and_one_overlay_per_token(make_client, tiny_pipe, tmp_path):
    from sdlab.attention.maps import attention_figure, token_labels
    from sdlab.attention.store import attend
    from sdlab.config import GenerationConfig

    c = make_client()
    prompt = "a red circle on a blue background"
    r = c.post("/api/attend", json={"prompt": prompt, "steps": 2, "seed": 4, "layers": ["up", "mid", "up"], **SMALL})
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert (job["kind"], job["step"], job["total"]) == ("attend", 2, 2)
    res = job["result"]
    tokens = token_labels(tiny_pipe.c.tokenizer, prompt)
    assert [(t["position"], t["text"]) for t in res["tokens"]] == [(t.position, t.text) for t in tokens]
    assert len(tokens) == 7 and res["layers"] == ["up", "mid"]
    # the served overlays are those of a direct attend() call with the same settings
    direct, maps = attend(tiny_pipe, GenerationConfig(prompt, steps=2, seed=4, **SMALL), places=["up", "mid"])
    overlays, grid = attention_figure(direct.images[0], maps[0], tokens)
    image = _served_png(c, res["image"]["url"])
    assert np.abs(np.asarray(image, np.int16) - np.asarray(direct.images[0], np.int16)).max() <= 2
    for tok, want in zip(res["tokens"], overlays):
        got = np.asarray(_served_png(c, tok["url"]), np.int16)
        assert got.shape == (32, 32, 3) and np.abs(got - np.asarray(want, np.int16)).max() <= 2
        assert np.abs(got - np.asarray(image, np.int16)).mean() > 5  # a heatmap is blended in
    assert _served_png(c, res["grid"]["url"]).size == grid.size
    meta = read_png_metadata(tmp_path / "out" / res["image"]["name"])
    assert meta["prompt"] == prompt and meta["params"]["Seed"] == 4
    gallery = c.get("/api/gallery").json()
    assert [i["name"] for i in gallery["items"]] == [res["image"]["name"]]  # overlays stay out of the gallery
    assert not list((tmp_path / "out" / "attention").glob(".*"))  # no temp folder left behind


def test_edit_job_writes_source_and_target(make_client, tiny_pipe, tmp_path):
    from sdlab.config import GenerationConfig

    c = make_client()
    source, target = "a red circle on a blue background", "a red square on a blue background"
    r = c.post("/api/edit", json={"source": source, "target": target, "steps": 3, "seed": 11, "cross_replace": 0.6,
                                  "self_replace": 0.3, "reweight": {"square": 2.0}, **SMALL})
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["error"]
    res = job["result"]
    assert (res["source"]["prompt"], res["target"]["prompt"]) == (source, target)
    assert res["edit"]["cross_replace"] == 0.6 and res["edit"]["reweight"] == {"square": 2.0}
    src, tgt = (np.asarray(_served_png(c, res[k]["url"]), np.int16) for k in ("source", "target"))
    plain = np.asarray(tiny_pipe.generate(GenerationConfig(source, steps=3, seed=11, **SMALL)).images[0], np.int16)
    assert np.abs(src - plain).max() <= 2  # the source row is the plain generation of its seed
    assert np.abs(src - tgt).mean() > 0.5
    meta = read_png_metadata(tmp_path / "out" / res["target"]["name"])
    assert meta["prompt"] == target and meta["params"]["Seed"] == 11 and meta["settings"]["mode"] == "edit-target"
    same = wait_job(c, c.post("/api/edit", json={"source": source, "steps": 2, "seed": 1, "cross_replace": 1,
                                                 "self_replace": 1, **SMALL}).json()["id"])
    assert same["state"] == "done" and same["result"]["target"]["prompt"] == source  # target defaults to source
    assert np.array_equal(*(np.asarray(_served_png(c, same["result"][k]["url"])) for k in ("source", "target")))
    assert c.get("/api/gallery").json()["total"] == 4


@pytest.mark.parametrize("path, body, status, text", [
    ("/api/edit", {"source": "a red circle", "target": "a red square", "cross_replace": 1.5}, 422, "cross_replace"),
    ("/api/edit", {"source": "a red circle", "target": "a red square", "self_replace": -0.1}, 422, "self_replace"),
    ("/api/edit", {"source": "a red circle", "target": "a red square", "self_replace": "lots"}, 422, "self_replace"),
    ("/api/edit", {"source": "a red circle", "mode": "swap"}, 422, "mode"),
    ("/api/edit", {"source": "a red circle", "mode": "reweight", "reweight": {"red": "x"}}, 422, "reweight"),
    ("/api/edit", {"source": "a red circle", "mode": "reweight", "reweight": {"red": 100}}, 422, "reweight"),
    ("/api/edit", {"source": "a red circle", "mode": "reweight", "reweight": ["red", 2]}, 422, "reweight"),
    ("/api/edit", {"source": "a red circle", "blend": "circle"}, 422, "blend"),
    ("/api/edit", {"source": "a red circle", "blend": [""]}, 422, "blend"),
    ("/api/edit", {"source": ""}, 422, "source"),
    ("/api/edit", {"target": "a red square"}, 422, "source"),
    ("/api/edit", {"source": "a red circle", "cross": 0.5}, 422, "cross"),
    ("/api/edit", {"source": "a red circle", "target": "a big red circle"}, 400, "same number of tokens"),
    ("/api/edit", {"source": "a red circle", "target": "a red square", "reweight": {"blue": 2}}, 400,
     "'blue' is not in the prompt 'a red square'"),
    ("/api/edit", {"source": "a red circle", "target": "a red square", "blend": ["star"]}, 400,
     "blend word 'star' is in neither prompt"),
    ("/api/edit", {"source": "a red circle", "mode": "reweight"}, 400, "needs at least one word"),
    ("/api/attend", {"prompt": "a red circle", "layers": ["side"]}, 422, "layers"),
    ("/api/attend", {"prompt": "a red circle", "layers": []}, 422, "layers"),
    ("/api/attend", {"prompt": "a red circle", "batch_size": 2}, 422, "batch_size"),
    ("/api/attend", {"prompt": "x", "width": 512}, 422, "width"),
    ("/api/attend", {"layers": ["up"]}, 422, "prompt"),
])
def test_bad_attend_and_edit_inputs_are_rejected(make_client, path, body, status, text):
    c = make_client(max_side=256)
    r = c.post(path, json={"steps": 2, **body})
    assert r.status_code == status, r.text
    assert text in r.text
    assert c.get("/api/jobs").json()["jobs"] == []


def test_an_edit_error_at_run_time_fails_the_job_with_its_message(make_client):
    c = make_client()  # e.g. a job stored before the check existed: the runner's ConfigError is the job's error
    job = c.app.state.queue.submit("edit", {"source": "a red circle", "target": "a big red circle", "steps": 2,
                                            "seed": 0, "cfg_scale": 7.5, **SMALL})
    failed = wait_job(c, job["id"])
    assert failed["state"] == "failed" and "same number of tokens" in failed["error"]
    assert "internal error" not in failed["error"]


def test_train_job_streams_the_loss(make_client, tiny_model_dir, tmp_path):
    c = make_client(model=str(tiny_model_dir))
    files = [("images", (f"{i}.png", png_bytes((40, 40), colour), "image/png"))
             for i, colour in enumerate(["red", "blue"])]
    # enough steps to outlast several 0.1 s polls of the event stream on a fast idle CPU
    r = c.post("/api/train", data={"method": "lora", "instance_prompt": "a sks shape", "max_steps": "60", "rank": "2",
                                   "lora_targets": "all"},
               files=files)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    with c.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    job = wait_job(c, job_id)
    assert job["state"] == "done", job["error"]
    losses = job["result"]["losses"]
    assert len(losses) == 60 and all(0 < v < 10 for v in losses)
    assert job["losses"] == losses and job["metrics"]["loss"] == losses[-1] and job["metrics"]["lr"] > 0
    running = [e for e in events if e["state"] == "running" and e["losses"]]
    assert running and all(e["losses"] == losses[:len(e["losses"])] for e in running)  # the curve grows live
    saved = job["result"]["saved"]
    assert saved and all((tmp_path / "out" / s).is_file() for s in saved)
    kohya = [s for s in saved if s.endswith("lora_kohya.safetensors")]
    assert kohya and any("resnets_0_conv1" in k for k in load_file(tmp_path / "out" / kohya[0]))  # LoCon layers
    data_dir = tmp_path / "out" / ".sdlab-server" / "uploads" / job["params"]["data"]
    assert len(list(data_dir.glob("*.png"))) == 2


def test_train_job_without_steps_runs_the_methods_recipe(make_client, tiny_model_dir, monkeypatch):
    """An unset max_steps is the method's measured recipe (what `sdlab train` does), not a demo length."""
    import sdlab.training.loop as loop
    from sdlab.training.methods import registry

    seen = []
    monkeypatch.setattr(loop, "train", lambda config, method, **kw: seen.append(config.max_steps) or
                        type("R", (), {"step": 0, "losses": [], "saved": []})())
    c = make_client(model=str(tiny_model_dir))
    files = [("images", ("a.png", png_bytes((32, 32), "green"), "image/png"))]
    r = c.post("/api/train", data={"method": "lora", "instance_prompt": "a sks shape"}, files=files)
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert seen == [registry.get("lora").recipe["max_steps"]]


def _train_job(c, method: str, **extra) -> str:
    files = [("images", ("a.png", png_bytes((32, 32), "green"), "image/png"))]
    r = c.post("/api/train", data={"method": method, "instance_prompt": "a sks shape", "max_steps": "3", **extra},
               files=files)
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["error"]
    return job["id"]


def _image(c, job_id: str) -> tuple[np.ndarray, str]:
    job = wait_job(c, job_id)
    assert job["state"] == "done", job["error"]
    im = job["result"]["images"][0]
    return np.asarray(Image.open(io.BytesIO(c.get(im["url"]).content)), dtype=np.int16), im["infotext"]


def test_generate_with_a_trained_lora_applies_it_for_that_job_only(make_client, tiny_model_dir):
    c = make_client(model=str(tiny_model_dir))
    run = _train_job(c, "lora", rank="2", learning_rate="0.05")
    body = {"prompt": "a sks shape", "steps": 2, "seed": 4, **SMALL}
    before, text = _image(c, c.post("/api/generate", json=body).json()["id"])
    assert "Lora hashes" not in text
    r = c.post("/api/generate", json={**body, "trained": run, "trained_scale": 0.8})
    assert r.status_code == 202, r.text
    with_lora, text = _image(c, r.json()["id"])
    assert "Lora hashes: \"lora_kohya: " in text and np.abs(with_lora - before).max() > 0
    after, text = _image(c, c.post("/api/generate", json=body).json()["id"])
    assert "Lora hashes" not in text and np.abs(after - before).max() <= 1      # taken out (float rounding)


def test_generate_with_trained_embeddings_replaces_a_reused_token(make_client, tiny_model_dir):
    c = make_client(model=str(tiny_model_dir))
    runs = [_train_job(c, "textual-inversion", placeholder="<web-x>", seed=str(s)) for s in (1, 2)]
    texts = []
    for run in runs:            # the second run reuses the token: its vectors replace the first's
        r = c.post("/api/generate", json={"prompt": "a <web-x>", "steps": 2, "seed": 4, "trained": run, **SMALL})
        texts.append(_image(c, r.json()["id"])[1])
    hashes = [t.split("TI hashes: ")[1] for t in texts]
    assert all(h.startswith('"<web-x>: ') for h in hashes) and hashes[0] != hashes[1]


@pytest.mark.parametrize("trained, status, text", [
    ("0123456789abcdef", 422, "no finished training run '0123456789abcdef'"),
    ("../../etc/passwd", 422, "trained"),
])
def test_generate_with_an_unknown_training_run_is_refused(make_client, trained, status, text):
    c = make_client()
    r = c.post("/api/generate", json={"prompt": "x", "steps": 2, "trained": trained, **SMALL})
    assert r.status_code == status and text in r.text
    assert c.get("/api/jobs").json()["jobs"] == []


def test_lora_tags_in_prompts_use_the_lora_dir(make_client, tiny_model_dir, tmp_path, lora_file):
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(lora_file, folder / "my-heart.safetensors")
    c = make_client(model=str(tiny_model_dir), lora_dirs=(folder,))
    assert c.get("/api/options").json()["loras"] == ["my-heart"]
    body = {"prompt": "a red circle", "steps": 2, "seed": 4, **SMALL}
    plain, _ = _image(c, c.post("/api/generate", json=body).json()["id"])
    r = c.post("/api/generate", json={**body, "prompt": "a red circle <lora:my-heart:0.7>"})
    assert r.status_code == 202, r.text
    tagged, text = _image(c, r.json()["id"])
    assert 'Lora hashes: "my-heart: ' in text and np.abs(tagged - plain).max() > 0
    after, _ = _image(c, c.post("/api/generate", json=body).json()["id"])
    assert np.abs(after - plain).max() <= 1                                    # only for that job
    for prompt, message in [("a <lora:nope>", "no nope.safetensors in"),
                            ("a <lora:my-heart:lots>", "the weight must be a number")]:
        r = c.post("/api/generate", json={**body, "prompt": prompt})
        assert r.status_code == 422 and message in r.text
    r = c.post("/api/edit", json={"source": "a red circle <lora:my-heart:1>", "target": "a red square <lora:my-heart>",
                                  "steps": 2, **SMALL})
    assert r.status_code == 202, r.text                                        # one weight (1) in both prompts


def test_lora_tags_without_a_lora_dir_are_refused(make_client):
    c = make_client()
    assert c.get("/api/options").json()["loras"] == []
    r = c.post("/api/attend", json={"prompt": "a <lora:x:1>", "steps": 2, **SMALL})
    assert r.status_code == 422 and "needs a folder of LoRA files" in r.text
    assert c.get("/api/jobs").json()["jobs"] == []


@pytest.mark.parametrize("data, n_images, text", [
    ({"method": "dreambooth", "instance_prompt": "x"}, 1, "method"),
    ({"instance_prompt": "x", "max_steps": "0"}, 1, "max_steps"),
    ({"instance_prompt": "x", "learning_rate": "-1"}, 1, "learning_rate"),
    ({"instance_prompt": "x", "placeholder": "two words"}, 1, "placeholder"),
    ({"instance_prompt": "x", "lora_targets": "convs"}, 1, "lora_targets"),
    ({"max_steps": "2"}, 1, "instance_prompt"),
    ({"instance_prompt": "x"}, 0, "images"),
    ({"instance_prompt": "x"}, 17, "images"),
])
def test_bad_train_inputs_are_422(make_client, data, n_images, text):
    c = make_client()
    files = [("images", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(n_images)]
    r = c.post("/api/train", data=data, files=files or None)
    assert r.status_code == 422, r.text
    assert text in r.text
    assert c.get("/api/jobs").json()["jobs"] == []
    r = c.post("/api/train", data={"instance_prompt": "x"}, files=[("images", ("a.png", b"not an image", "image/png"))])
    assert r.status_code == 400 and not list((c.app.state.settings.upload_dir).glob("train-*"))


def test_a_cancelled_train_job_resumes_from_its_checkpoint(make_client, tiny_model_dir):
    c = make_client(model=str(tiny_model_dir))
    r = c.post("/api/train", data={"method": "textual-inversion", "instance_prompt": "a sks shape", "max_steps": "40"},
               files=[("images", ("a.png", png_bytes((32, 32), "green"), "image/png"))])
    job_id = r.json()["id"]
    wait_job(c, job_id, states={"running"}, min_step=3)
    c.post(f"/api/jobs/{job_id}/cancel")
    stopped = wait_job(c, job_id)
    assert stopped["state"] == "cancelled" and 3 <= len(stopped["losses"]) < 40
    assert c.post(f"/api/jobs/{job_id}/resume").status_code == 200
    done = wait_job(c, job_id)
    assert done["state"] == "done", done["error"]
    assert done["result"]["steps"] == 40 and len(done["result"]["losses"]) == 40 - len(stopped["losses"])
    assert any(s.endswith(".safetensors") for s in done["result"]["saved"])


def test_serve_vae_option_reaches_the_loaded_model(tiny_model_dir, tmp_path):
    from sdlab.cli.main import build_parser
    from sdlab.cli.serve import settings_from_args
    from sdlab.server.app import _load_pipeline

    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), "--vae", str(tiny_model_dir / "vae"),
                                      "--output-dir", str(tmp_path / "out")])
    settings = settings_from_args(args)
    assert settings.vae == str(tiny_model_dir / "vae")
    assert _load_pipeline(settings)("cpu").c.extra["vae"]["name"] == "tiny-sd/vae"
    args = build_parser().parse_args(["serve", "--vae-dir", str(tiny_model_dir), "--vae-dir", str(tmp_path / "none")])
    with pytest.raises(ConfigError, match=f"vae dir '{tmp_path / 'none'}' is not a folder"):
        settings_from_args(args)


def test_a_job_can_pick_a_vae_from_the_vae_dir(make_client, tiny_model_dir, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    folder = tmp_path / "vaes"
    vae = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.5                      # decodes visibly lighter
    vae.save_pretrained(folder / "light-vae")
    (folder / "notes.txt").write_text("not a VAE")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(outside)         # leads out of the folder: not offered
    c = make_client(model=str(tiny_model_dir), vae_dirs=(folder,))
    assert c.get("/api/options").json()["vaes"] == ["light-vae"]
    body = {"prompt": "a red circle", "steps": 2, "seed": 4, **SMALL}
    plain, text = _image(c, c.post("/api/generate", json=body).json()["id"])
    r = c.post("/api/generate", json={**body, "vae": "light-vae"})
    assert r.status_code == 202, r.text
    light, light_text = _image(c, r.json()["id"])
    assert "VAE" not in text and "VAE: light-vae" in light_text and light.mean() > plain.mean()
    after, _ = _image(c, c.post("/api/generate", json=body).json()["id"])
    assert np.array_equal(after, plain)                                        # only for that job
    for vae, message in [("nope", "no VAE named 'nope'; this server offers: light-vae"),
                         ("link.safetensors", "no VAE named 'link.safetensors'"), ("../vaes", "vae")]:
        r = c.post("/api/generate", json={**body, "vae": vae})
        assert r.status_code == 422 and message in r.text
    other = make_client(model=str(tiny_model_dir), output_dir=tmp_path / "other")   # one server per folder
    r = other.post("/api/attend", json={**body, "vae": "light-vae"})
    assert r.status_code == 422 and "this server has no folder of VAEs (sdlab serve --vae-dir DIR)" in r.text
