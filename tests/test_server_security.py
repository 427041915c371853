"""Security of `sdlab serve` at its edges: body limits counted as the body streams, strict JSON,
no input echoed in errors, same-origin only, security headers, one server per queue, stale temp
files cleaned at start."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdlab.cli.main import main
from sdlab.io.metadata import read_png_metadata
from sdlab.server.app import create_app
from sdlab.server.lock import ServerBusy
from sdlab.server.settings import ServerSettings
from server_util import serving, wait_job

SMALL = {"width": 32, "height": 32}
MiB = 2**20


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    from sdlab.pipeline import Pipeline

    return Pipeline.load(tiny_model_dir)


@pytest.fixture
def client(tiny_pipe, tmp_path):
    app = create_app(ServerSettings(output_dir=tmp_path / "out"), load_pipeline=lambda device: tiny_pipe)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


class Pulled:
    """ASGI wrapper: counts the request body bytes the app pulled from the server."""

    def __init__(self, app):
        self.app, self.bytes = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            self.bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def _chunks(head: bytes, fill: bytes, total: int, tail: bytes = b"", chunk: int = 64 * 1024):
    """A streamed body (httpx sends a generator chunked, without Content-Length)."""
    yield head
    for _ in range(total // chunk):
        yield fill * (chunk // len(fill))
    yield tail


def test_chunked_bodies_are_cut_off_at_the_limit_as_they_stream(tiny_pipe, tmp_path):
    settings = ServerSettings(output_dir=tmp_path / "out", max_upload_bytes=MiB)
    app = Pulled(create_app(settings, load_pipeline=lambda device: tiny_pipe))
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        r = http.post("/api/generate", content=_chunks(b'{"prompt": "', b"SECRET", 32 * MiB, b'"}'),
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over the limit of 1048576 bytes" in r.json()["detail"]
        assert "SECRET" not in r.text
        assert app.bytes <= settings.max_json_bytes + 256 * 1024     # never the 32 MiB
        app.bytes = 0
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        r = http.post("/api/img2img", content=_chunks(head, b"\x89PNG", 16 * MiB, f"\r\n--{boundary}--\r\n".encode()),
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]
        assert 1 * MiB < app.bytes <= 2 * MiB + 256 * 1024           # the upload limit (+ 1 MiB for the form)
        r = http.post("/api/generate", content=_chunks(b'{"prompt": "', b"x", 1000, b'", "steps": 1, "width": 32, '
                                                       b'"height": 32}', chunk=100),
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 202, r.text                              # a small chunked body is fine
        assert wait_job(http, r.json()["id"])["state"] == "done"
        assert http.get("/api/jobs").json()["counts"]["done"] == 1


@pytest.mark.parametrize("path, body, field, hidden", [
    ("/api/generate", {"prompt": "SECRET" * 400}, "prompt", "SECRET"),
    ("/api/generate", {"prompt": "x", "sampler": "SECRET sampler"}, "sampler", "SECRET"),
    ("/api/generate", {"prompt": "x", "extra": "SECRET value"}, "extra", "SECRET"),
    ("/api/generate", {"prompt": "x", "vae": "SECRET/vae"}, "vae", "SECRET"),
    ("/api/edit", {"source": "x", "reweight": {"red": "SECRET"}}, "reweight", "SECRET"),
    ("/api/generate", ["SECRET"], "body", "SECRET"),
])
def test_validation_errors_name_the_field_but_never_echo_the_input(client, path, body, field, hidden):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in err["loc"] for err in detail) and all(err["msg"] for err in detail)
    assert all(set(err) == {"loc", "msg", "type"} for err in detail)
    assert hidden not in r.text


def test_form_validation_errors_do_not_echo_the_input(client):
    r = client.post("/api/img2img", data={"prompt": "x", "strength": "SECRET strength"},
                    files={"image": ("a.png", _png(), "image/png")})
    assert r.status_code == 422 and "strength" in r.text and "SECRET" not in r.text


@pytest.mark.parametrize("raw, loc", [
    (b'{"prompt": "x", "cfg_scale": NaN}', ["body", "cfg_scale"]),
    (b'{"prompt": "x", "cfg_scale": Infinity}', ["body", "cfg_scale"]),
    (b'{"prompt": "x", "cfg_scale": -Infinity}', ["body", "cfg_scale"]),
    (b'{"prompt": "x", "cfg_scale": 1e309}', ["body", "cfg_scale"]),
    (b'{"prompt": "x", "steps": NaN}', ["body", "steps"]),
    (b'{"prompt": NaN}', ["body", "prompt"]),
    (b'{"prompt": "a \\ud800 b"}', ["body", "prompt"]),
    (b'{"prompt": "x", "negative_prompt": "\\udfff"}', ["body", "negative_prompt"]),
    (b'{"prompt": "x", "vae": "\\ud800"}', ["body", "vae"]),
    (b'{"prompt": "x", "a\\ud800": 1}', ["body", "a\\ud800"]),
    (b'[1, {"x": [0, 1e400]}]', ["body", 1, "x", 1]),
])
def test_non_finite_numbers_and_lone_surrogates_are_a_one_line_422(client, raw, loc):
    r = client.post("/api/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == loc and "\n" not in err["msg"]
    assert "numbers must be finite" in err["msg"] or "lone surrogate (U+D" in err["msg"]
    assert client.get("/api/jobs").json()["jobs"] == []


def test_non_finite_numbers_in_edit_and_forms_are_422(client):
    r = client.post("/api/edit", content=b'{"source": "a red circle", "reweight": {"red": NaN}}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reweight", "red"]
    for value in ("nan", "inf", "-Infinity", "1e309"):
        r = client.post("/api/img2img", data={"prompt": "x", "cfg_scale": value},
                        files={"image": ("a.png", _png(), "image/png")})
        assert r.status_code == 422 and "cfg_scale" in r.text, (value, r.text)
    assert client.get("/api/jobs").json()["jobs"] == []


def test_an_escaped_surrogate_pair_is_text_all_the_way_to_the_png(client, tmp_path):
    raw = b'{"prompt": "a red circle \\ud83d\\ude00 \\u00fc", "steps": 1, "seed": 2, "width": 32, "height": 32}'
    r = client.post("/api/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    prompt = "a red circle \U0001F600 \u00fc"
    assert job["params"]["prompt"] == prompt                                       # through SQLite
    assert read_png_metadata(tmp_path / "out" / job["result"]["images"][0]["name"])["prompt"] == prompt


def test_only_the_servers_own_origin_may_post(client):
    body = {"prompt": "x", "steps": 1, **SMALL}
    for origin in ("http://127.0.0.1:9999", "http://localhost:9999", "http://[::1]:8080", "https://127.0.0.1:7860",
                   "null", "http://evil.example:7860", "http://127.0.0.1:7860.evil.example"):
        r = client.post("/api/generate", json=body, headers={"Origin": origin})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], origin
        assert client.post("/api/jobs/nojob/cancel", headers={"Origin": origin}).status_code == 403
    assert client.get("/api/jobs").json()["jobs"] == []
    for origin in ("http://127.0.0.1:7860", "http://localhost:7860"):             # the page itself
        r = client.post("/api/generate", json=body, headers={"Origin": origin})
        assert r.status_code == 202, (origin, r.text)
    assert client.post("/api/generate", json=body).status_code == 202             # no Origin: not a browser page
    r = client.post("/api/generate", json=body, headers={"Host": "localhost:7861", "Origin": "http://localhost:7861"})
    assert r.status_code == 202                                                   # the Host the request reached


def _security_headers_ok(r) -> None:
    assert r.headers["X-Content-Type-Options"] == "nosniff", r.url
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Referrer-Policy"] == "no-referrer"
    csp = dict(part.strip().split(" ", 1) for part in r.headers["Content-Security-Policy"].split(";"))
    assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'" and csp["img-src"] == "'self' data:"


def test_every_response_carries_the_security_headers(tiny_pipe, tmp_path):
    settings = ServerSettings(output_dir=tmp_path / "out", host="0.0.0.0", token="a-long-test-token")
    app = create_app(settings, load_pipeline=lambda device: tiny_pipe)
    auth = {"Authorization": "Bearer a-long-test-token"}
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        replies = [c.get("/"), c.get("/static/app.js"), c.get("/static/app.css"), c.get("/api/health", headers=auth),
                   c.get("/api/health"), c.get("/files/none.png", headers=auth),
                   c.post("/api/generate", json={}, headers=auth),
                   c.post("/api/generate", content=b"x" * (2 * MiB), headers=auth)]
        assert [r.status_code for r in replies] == [200, 200, 200, 200, 401, 404, 422, 413]
        for r in replies:
            _security_headers_ok(r)
        docs = c.get("/docs")
        assert "frame-ancestors 'none'" in docs.headers["Content-Security-Policy"]


def test_the_page_needs_nothing_the_policy_forbids():
    """The CSP allows only same-origin scripts and styles: no inline script, style or handler."""
    from sdlab.server.app import STATIC

    html = (STATIC / "index.html").read_text()
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son[a-z]+=", html)
    js = (STATIC / "app.js").read_text()
    assert not re.search(r"style=|\son[a-z]+=|eval\(|new Function", js)


def test_a_second_server_on_the_same_folder_is_refused(tiny_pipe, tmp_path, capsys):
    out = tmp_path / "out"
    first = create_app(ServerSettings(output_dir=out), load_pipeline=lambda device: tiny_pipe)
    with TestClient(first, base_url="http://127.0.0.1:7860") as c:
        job = c.post("/api/generate", json={"prompt": "slow", "steps": 150, **SMALL}).json()
        wait_job(c, job["id"], states={"running"}, min_step=1)
        second = create_app(ServerSettings(output_dir=out), load_pipeline=lambda device: tiny_pipe)
        message = f"another sdlab serve is using {out} (pid {os.getpid()}); stop it or pass another --output-dir"
        with pytest.raises(ServerBusy) as err:
            with TestClient(second, base_url="http://127.0.0.1:7860"):
                pass
        assert str(err.value) == message
        assert main(["serve", "--output-dir", str(out), "--port", "0"]) == 2
        assert capsys.readouterr().err.strip() == f"sdlab: error: {message}"
        state_dir = tmp_path / "state"
        third = create_app(ServerSettings(output_dir=tmp_path / "other", state_dir=state_dir),
                           load_pipeline=lambda device: tiny_pipe)
        with TestClient(third, base_url="http://127.0.0.1:7860"):             # another queue: fine
            with pytest.raises(ServerBusy, match=f"using the job queue in {state_dir} .*--state-dir"):
                with TestClient(create_app(ServerSettings(output_dir=out, state_dir=state_dir),
                                           load_pipeline=lambda device: tiny_pipe)):
                    pass
        running = c.get(f"/api/jobs/{job['id']}").json()
        assert running["state"] == "running" and running["error"] is None  # untouched by the refused servers
        c.post(f"/api/jobs/{job['id']}/cancel")
        assert wait_job(c, job["id"])["state"] == "cancelled"
    again = create_app(ServerSettings(output_dir=out), load_pipeline=lambda device: tiny_pipe)
    with TestClient(again, base_url="http://127.0.0.1:7860") as c:
        assert c.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"   # the lock went with the first


def test_stale_temp_files_of_a_killed_server_are_removed_at_start(tiny_pipe, tmp_path):
    out = tmp_path / "out"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = [out / f".00003-1.png.tmp-{dead}-0123abcd", out / "attention" / f".x-grid.png.tmp-{dead}-0123abcd",
             out / ".sdlab-server" / "uploads" / "train-ab" / f".a.png.tmp-{dead}-0123abcd",
             out / "training" / "0123456789abcdef" / "checkpoints" / f".step-00000010.tmp-{dead}-0123abcd"]
    writer = subprocess.Popen(["sleep", "60"])
    try:
        kept = [out / f".00004-1.png.tmp-{writer.pid}-0123abcd",         # a live process still writes it
                out / "00001-1.png", out / f"notes.tmp-{dead}-0123abcd", out / ".notes.png.tmp"]  # not sdlab's temps
        for path in stale[:3] + kept:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"partial")
        (stale[3] / "state.safetensors").parent.mkdir(parents=True)
        (stale[3] / "state.safetensors").write_bytes(b"half a checkpoint")
        app = create_app(ServerSettings(output_dir=out), load_pipeline=lambda device: tiny_pipe)
        with TestClient(app, base_url="http://127.0.0.1:7860") as c:
            assert c.get("/api/health").status_code == 200
            assert [p for p in stale if p.exists()] == []
            assert [p for p in kept if not p.exists()] == []
    finally:
        writer.kill()
        writer.wait()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    return buf.getvalue()
