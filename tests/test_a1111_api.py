"""The AUTOMATIC1111-compatible API (/sdapi/v1) of `sdlab serve`, driven by `webuiapi` (the PyPI
client of A1111) against a real uvicorn server on a free loopback port with the shipped model:
replies equal the Python API's images, jobs go through the shared queue, progress and interrupt
work mid-job, bad values are 422s naming the field, and a token-guarded server needs its token."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from server_util import free_port

from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.io.metadata import parse_infotext
from sdlab.sampling import sampler_names
from sdlab.server.a1111 import resolve_sampler

webuiapi = pytest.importorskip("webuiapi")

TOKEN = "a1111-token-for-tests"
PROMPT = "a large red circle on a blue background"
SMALL = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def shipped_pipe():
    from sdlab.pipeline import Pipeline

    return Pipeline.load()


@contextlib.contextmanager
def serving(pipe, out, **settings):
    """uvicorn serving the studio app on 127.0.0.1:PORT in a thread; yields (base URL, app)."""
    import uvicorn

    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    port = free_port()
    app = create_app(ServerSettings(output_dir=out, port=port, preview_interval=0.0, **settings),
                     load_pipeline=lambda device: pipe)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < end, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(shipped_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("a1111") / "outputs"
    with serving(shipped_pipe, out) as (base, app):
        yield base, app, out


@pytest.fixture
def api(server):
    port = int(server[0].rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=6)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def jobs(base: str, **params) -> list[dict]:
    return requests.get(f"{base}/api/jobs", params=params, timeout=10).json()["jobs"]


def test_txt2img_replies_the_python_api_images_with_infotext(api, server, shipped_pipe):
    base, _, out = server
    r = api.txt2img(prompt=PROMPT, negative_prompt="green", seed=7, steps=6, cfg_scale=5, batch_size=2,
                    sampler_name="DPM++ 2M", scheduler="karras", **SMALL)
    assert len(r.images) == 2 and all(im.size == (64, 64) for im in r.images)
    assert (r.info["seed"], r.info["all_seeds"], r.info["sampler_name"]) == (7, [7, 8], "DPM++ 2M Karras")
    assert r.info["sd_model_name"] == "shapes-sd" and r.info["sd_model_hash"] == shipped_pipe.c.model_hash
    assert r.parameters["prompt"] == PROMPT and r.parameters["sampler_name"] == "DPM++ 2M"
    for i, image in enumerate(r.images):   # each PNG carries its A1111 infotext
        assert image.info["parameters"] == r.info["infotexts"][i]
        prompt, negative, params = parse_infotext(image.info["parameters"])
        assert (prompt, negative) == (PROMPT, "green")
        assert params["Seed"] == 7 + i and params["Steps"] == 6
        assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras")
        assert params["CFG scale"] == 5.0 and params["Size"] == "64x64"
    direct = shipped_pipe.generate(GenerationConfig(PROMPT, negative_prompt="green", steps=6, cfg_scale=5,
                                                    sampler="DPM++ 2M Karras", seed=7, batch_size=2, **SMALL))
    for got, want in zip(r.images, direct.images):
        assert np.array_equal(pixels(got), pixels(want))
    job = jobs(base)[0]       # it ran as a queued studio job, saved like one
    assert (job["kind"], job["state"], job["params"]["seed"], job["params"]["batch_size"]) == ("txt2img", "done", 7, 2)
    assert (out / "00000-7.png").is_file() and (out / "00001-8.png").is_file()


def test_seed_minus_one_is_random_and_reported(api):
    r = api.txt2img(prompt=PROMPT, steps=2, **SMALL)
    seed = r.info["seed"]
    assert r.parameters["seed"] == -1 and 0 <= seed < 2**32 and r.info["all_seeds"] == [seed]
    assert parse_infotext(r.info["infotexts"][0])[2]["Seed"] == seed
    quiet = api.txt2img(prompt=PROMPT, steps=1, seed=5, send_images=False, **SMALL)
    assert quiet.images == [] and quiet.info["all_seeds"] == [5] and len(quiet.info["infotexts"]) == 1


def test_img2img_from_data_url_and_raw_base64(api, server, shipped_pipe):
    init = Image.new("RGB", (64, 64), "blue")
    ImageDraw.Draw(init).ellipse((16, 16, 48, 48), fill="red")
    settings = dict(prompt=PROMPT, seed=3, steps=4, cfg_scale=6, denoising_strength=0.5, sampler_name="Euler", **SMALL)
    r = api.img2img(images=[init], **settings)    # webuiapi sends a data URL
    assert len(r.images) == 1 and r.info["denoising_strength"] == 0.5 and r.parameters["init_images"] is None
    params = parse_infotext(r.images[0].info["parameters"])[2]
    assert params["Denoising strength"] == 0.5 and params["Seed"] == 3
    direct = shipped_pipe.generate(GenerationConfig(PROMPT, seed=3, steps=4, cfg_scale=6, strength=0.5, sampler="Euler",
                                                    **SMALL),
                                   init_image=init)
    assert np.array_equal(pixels(r.images[0]), pixels(direct.images[0]))
    assert not np.array_equal(pixels(r.images[0]), pixels(init))
    buf = io.BytesIO()
    init.save(buf, format="PNG")
    raw = requests.post(f"{server[0]}/sdapi/v1/img2img", timeout=60,
                        json={**settings, "init_images": [base64.b64encode(buf.getvalue()).decode()]})
    assert raw.status_code == 200, raw.text
    got = Image.open(io.BytesIO(base64.b64decode(raw.json()["images"][0])))
    assert np.array_equal(pixels(got), pixels(direct.images[0]))


def test_samplers_models_and_options(api, shipped_pipe):
    samplers = api.get_samplers()   # as A1111 >= 1.9 lists them: the schedule is the scheduler's
    assert [s["name"] for s in samplers] == [n for n in sampler_names() if not n.endswith(" Karras")]
    dpm = next(s for s in samplers if s["name"] == "DPM++ 2M")
    assert dpm["aliases"] == ["k_dpmpp_2m"] and dpm["options"] == {"scheduler": "karras"}
    assert [(s["name"], s["label"]) for s in api.get_schedulers()] == [
        ("automatic", "Automatic"), ("uniform", "Uniform"), ("sgm_uniform", "SGM Uniform"), ("ddim", "DDIM"),
        ("karras", "Karras"), ("exponential", "Exponential"), ("polyexponential", "Polyexponential"),
        ("align_your_steps", "Align Your Steps")]
    sde = next(s for s in samplers if s["name"] == "DPM++ 2M SDE")
    assert sde["aliases"] == ["k_dpmpp_2m_sde"] and sde["options"] == {"scheduler": "exponential"}
    (model,) = api.get_sd_models()
    title = f"shapes-sd [{shipped_pipe.c.model_hash}]"
    assert (model["title"], model["model_name"], model["hash"]) == (title, "shapes-sd", shipped_pipe.c.model_hash)
    assert api.get_options()["sd_model_checkpoint"] == title and api.get_options()["sd_vae"] == "Automatic"
    assert api.set_options({"sd_model_checkpoint": title, "samples_format": "jpg", "sd_vae": "None"}) is None
    assert api.get_options()["sd_vae"] == "None" and "samples_format" in api.get_options()
    wrong = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert wrong.status_code == 422 and "this server runs only shapes-sd" in wrong.json()["detail"]
    vae = api.session.post(f"{api.baseurl}/options", json={"sd_vae": "kl-f8.safetensors"})
    assert vae.status_code == 422 and "sd_vae" in vae.json()["detail"]
    assert api.set_options({"sd_vae": "Automatic"}) is None and api.get_options()["sd_vae"] == "Automatic"
    r = api.txt2img(prompt=PROMPT, steps=1, sampler_name="k_euler_a", hr_upscaler="Latent", **SMALL)  # an alias
    assert r.info["sampler_name"] == "Euler a" and len(r.images) == 1


@pytest.mark.parametrize("name, scheduler, sampler", [
    ("DPM++ 2M", "automatic", ("DPM++ 2M Karras", "Automatic")),    # A1111's default schedule of DPM++ 2M
    ("DPM++ 2M", "SGM Uniform", ("DPM++ 2M", "SGM Uniform")),       # the label infotext writes for trailing
    ("DPM++ 2M", "uniform", ("DPM++ 2M", "Uniform")),
    ("DPM++ 2M Karras", None, ("DPM++ 2M Karras", "Automatic")),    # pre-1.9 names
    ("DPM++ 2M Karras", "exponential", ("DPM++ 2M Karras", "Automatic")),   # the name's schedule wins, as in A1111
    ("DPM++ 3M SDE Exponential", None, ("DPM++ 3M SDE", "Exponential")),
    ("Euler a", "automatic", ("Euler a", "Automatic")),
    ("euler", "Karras", ("Euler Karras", "Automatic")),
    ("k_lms_ka", None, ("LMS Karras", "Automatic")),
    ("k_dpmpp_2m_sde", None, ("DPM++ 2M SDE", "Exponential")),         # A1111's default for it
    ("DDIM", None, ("DDIM", "Automatic")),
    ("DDIM", "karras", ("DDIM", "Karras")),
    ("UniPC", "align_your_steps", ("UniPC", "Align Your Steps")),
])
def test_a1111_sampler_and_scheduler_names(name, scheduler, sampler):
    assert resolve_sampler(name, scheduler) == sampler


@pytest.mark.parametrize("name, scheduler, message", [
    ("Euler", "cosine", "unknown schedule 'cosine'; known schedules: Automatic, Uniform"),
    ("Euler z", None, "unknown sampler"),
])
def test_a1111_sampler_names_refused(name, scheduler, message):
    with pytest.raises(ConfigError, match=message):
        resolve_sampler(name, scheduler)


@pytest.mark.parametrize("route, body, field", [
    ("txt2img", {"steps": 0}, "steps"),
    ("txt2img", {"steps": 151}, "steps"),
    ("txt2img", {"width": 30}, "width"),
    ("txt2img", {"cfg_scale": "high"}, "cfg_scale"),
    ("txt2img", {"seed": -2}, "seed"),
    ("txt2img", {"batch_size": 9}, "batch_size"),
    ("txt2img", {"n_iter": 5}, "n_iter"),
    ("txt2img", {"batch_size": 8, "n_iter": 3}, "batch_size * batch_count"),
    ("txt2img", {"prompt": "a\x00b"}, "prompt"),
    ("txt2img", {"sampler_name": "Euler z"}, "unknown sampler"),
    ("txt2img", {"scheduler": "cosine"}, "unknown schedule"),
    ("txt2img", {"enable_hr": True, "hr_resize_x": 128}, "hr_resize_x"),
    ("txt2img", {"enable_hr": True, "hr_scale": 5}, "hr_scale"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hires upscaler must be one of"),
    ("txt2img", {"enable_hr": True, "hr_prompt": "other"}, "hr_prompt"),
    ("txt2img", {"enable_hr": True, "hr_sampler_name": "Euler z"}, "unknown sampler"),
    ("txt2img", {"enable_hr": True, "scheduler": "uniform", "hr_sampler_name": "DPM++ 3M SDE Exponential"},
     "hr_sampler_name"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 0}}, "CLIP_stop_at_last_layers"),
    ("txt2img", {"restore_faces": True}, "restore_faces"),
    ("txt2img", {"styles": ["anime"]}, "styles"),
    ("txt2img", {"subseed_strength": 0.5}, "subseed_strength"),
    ("txt2img", {"script_name": "x/y/z plot"}, "script_name"),
    ("txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "other.safetensors"}}, "sd_model_checkpoint"),
    ("txt2img", {"override_settings": {"sd_vae": "../vae.pt"}}, "sd_vae"),
    ("img2img", {}, "init_images"),
    ("img2img", {"init_images": []}, "init_images"),
    ("img2img", {"init_images": ["not base64!"]}, "init_images"),
    ("img2img", {"init_images": ["data:image/png,plain"]}, "init_images"),
    ("img2img", {"init_images": ["QUJD", "QUJD"]}, "init_images"),
    ("img2img", {"init_images": ["QUJD"], "mask": "QUJD", "mask_blur_x": 2, "mask_blur_y": 3}, "mask_blur_x"),
    ("img2img", {"init_images": ["QUJD"], "mask": "QUJD", "inpainting_fill": 4}, "inpainting_fill"),
    ("img2img", {"init_images": ["QUJD"], "resize_mode": 1}, "resize_mode"),
    ("img2img", {"init_images": ["QUJD"], "denoising_strength": 1.5}, "denoising_strength"),
])
def test_bad_values_are_422_naming_the_field(server, route, body, field):
    base = server[0]
    before = len(jobs(base, limit=500))
    r = requests.post(f"{base}/sdapi/v1/{route}", json={"prompt": "x", "steps": 1, **SMALL, **body}, timeout=30)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert len(jobs(base, limit=500)) == before


def test_an_upload_that_is_not_an_image_is_refused(server):
    r = requests.post(f"{server[0]}/sdapi/v1/img2img", timeout=30,
                      json={"prompt": "x", "init_images": [base64.b64encode(b"hello, not a png").decode()]})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]


def test_progress_and_interrupt_mid_job(api, server):
    base = server[0]
    assert api.get_progress()["progress"] == 0 and api.get_progress()["state"]["job_count"] == 0
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=api.txt2img(
        prompt=PROMPT, steps=150, batch_size=8, n_iter=2, **SMALL)))
    worker.start()
    end = time.monotonic() + 60
    while not ((p := api.get_progress())["progress"] > 0 and p["current_image"]):
        assert time.monotonic() < end and worker.is_alive(), "no progress reported"
        time.sleep(0.05)
    assert p["progress"] < 0.5 and p["eta_relative"] > 0
    state = p["state"]
    assert (state["job"], state["job_count"], state["sampling_steps"]) == ("txt2img", 2, 150)
    assert Image.open(io.BytesIO(base64.b64decode(p["current_image"]))).size == (64, 64)
    skipped = requests.get(f"{base}/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=10).json()
    assert skipped["current_image"] is None and skipped["progress"] > 0
    assert api.interrupt() == {}
    worker.join(60)
    r = result["r"]
    assert r.images == [] and r.info["state"] == "cancelled" and len(r.info["all_seeds"]) == 16
    assert jobs(base)[0]["state"] == "cancelled"
    assert api.get_progress()["progress"] == 0


def test_a_client_that_hangs_up_cancels_its_job(server):
    base = server[0]
    with pytest.raises(requests.exceptions.ReadTimeout):   # the client gives up and closes the connection
        requests.post(f"{base}/sdapi/v1/txt2img", timeout=(5, 1.0),
                      json={"prompt": PROMPT, "steps": 150, "batch_size": 8, "n_iter": 2, **SMALL})
    end = time.monotonic() + 30
    while (job := jobs(base)[0])["state"] in ("queued", "running"):
        assert time.monotonic() < end, "the job still runs after its client left"
        time.sleep(0.05)
    assert (job["state"], job["params"]["steps"]) == ("cancelled", 150)


def test_a_token_guarded_server_needs_the_token(shipped_pipe, tmp_path):
    with serving(shipped_pipe, tmp_path / "out", token=TOKEN) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        anonymous = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        with pytest.raises(RuntimeError) as refused:
            anonymous.txt2img(prompt=PROMPT, steps=1, **SMALL)
        assert refused.value.args[0] == 401
        assert anonymous.session.get(f"{anonymous.baseurl}/sd-models").status_code == 401
        assert anonymous.session.post(f"{anonymous.baseurl}/interrupt").status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        api.session.headers["Authorization"] = f"Bearer {TOKEN}"   # webuiapi's requests session
        assert api.get_sd_models()[0]["model_name"] == "shapes-sd"
        r = api.txt2img(prompt=PROMPT, steps=1, seed=1, **SMALL)
        assert len(r.images) == 1 and r.info["all_seeds"] == [1]
        basic = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="anyone", password=TOKEN)   # --api-auth
        assert basic.get_sd_models()[0]["model_name"] == "shapes-sd"
        wrong = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="anyone", password="not-it")
        assert wrong.session.get(f"{wrong.baseurl}/sd-models").status_code == 401
