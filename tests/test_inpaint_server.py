"""Inpainting over HTTP on a tiny random model: the studio's inpaint job (POST /api/inpaint, image and
mask uploads, or `expand` to outpaint) and A1111's /sdapi/v1/img2img with a `mask`, driven by
`webuiapi`, whose images equal Pipeline.inpaint's with the same options."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from server_util import free_port, serving, wait_job

from sdlab import GenerationConfig, Pipeline
from sdlab.inpaint import InpaintConfig, prepare
from sdlab.io.metadata import read_png_metadata


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


@pytest.fixture
def client(pipe, tmp_path):
    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    app = create_app(ServerSettings(output_dir=tmp_path / "out"), load_pipeline=lambda device: pipe)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


def _image(size=(32, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(32, 32), box=(8, 8, 20, 20)) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _files(image, mask=None) -> dict:
    files = {"image": ("in.png", _png(image), "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", _png(mask), "image/png")
    return files


def test_inpaint_and_outpaint_jobs(client, tmp_path):
    image, mask = _image(), _mask()
    form = {"prompt": "a red star", "steps": "4", "seed": "3", "mask_blur": "2"}     # fill at 1: the defaults
    r = client.post("/api/inpaint", data=form, files=_files(image, mask))
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert job["kind"] == "inpaint" and job["total"] == 4
    path = tmp_path / "out" / job["result"]["images"][0]["name"]
    out = Image.open(path).convert("RGB")
    overlay = prepare(image, mask, InpaintConfig(mask_blur=2, masked_content="fill"), (32, 32)).overlay
    outside = np.asarray(overlay) == 0
    assert out.size == (32, 32) and np.array_equal(np.asarray(out)[outside], np.asarray(image)[outside])
    assert not np.array_equal(np.asarray(out)[10:18, 10:18], np.asarray(image)[10:18, 10:18])
    meta = read_png_metadata(path)
    assert meta["settings"]["mode"] == "inpaint" and meta["params"]["Mask blur"] == 2
    assert (meta["params"]["Masked content"], meta["params"]["Denoising strength"]) == ("fill", 1.0)
    assert meta["params"]["Masked content"] == "fill"

    r = client.post("/api/inpaint", data={"prompt": "x", "steps": "2", "seed": "1", "expand": "left=8, top=16"},
                    files=_files(image))
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job["error"] and job["params"]["expand"] == "left=8,top=16"
    out = Image.open(tmp_path / "out" / job["result"]["images"][0]["name"]).convert("RGB")
    assert out.size == (40, 48) and np.array_equal(np.asarray(out)[16:, 8:], np.asarray(image))


@pytest.mark.parametrize("mask, form, message", [
    (_mask((32, 16)), {}, "the mask is 32x16 but the image 32x32"),
    (Image.new("L", (32, 32), 0), {}, "all black: nothing to repaint"),
    (Image.new("L", (32, 32), 255), {"invert_mask": "true"}, "inverted"),
    (None, {}, "mask: upload a mask"),
    (None, {"expand": "up=8"}, "SIDE=PIXELS"),
    (_mask(), {"masked_content": "noise"}, "masked_content"),
    (_mask(), {"mask_blur": "65"}, "mask_blur"),
])
def test_bad_inpaint_requests_are_422(client, mask, form, message):
    r = client.post("/api/inpaint", data={"prompt": "x", "steps": "2", **form}, files=_files(_image(), mask))
    assert r.status_code == 422, r.text
    assert message in r.text
    assert client.get("/api/jobs").json()["counts"].get("queued", 0) == 0


@pytest.fixture(scope="module")
def a1111(pipe, tmp_path_factory):
    """webuiapi's client of the studio app (the tiny model) under uvicorn on a free port."""
    webuiapi = pytest.importorskip("webuiapi")
    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    port = free_port()
    app = create_app(ServerSettings(output_dir=tmp_path_factory.mktemp("a1111-inpaint"), port=port),
                     load_pipeline=lambda device: pipe)
    with serving(app, port) as base:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=3), base


@pytest.mark.parametrize("fill, full_res, padding, invert", [(1, False, 0, 0), (0, True, 4, 0), (3, False, 0, 1)])
def test_a1111_img2img_with_a_mask_is_pipeline_inpaint(a1111, pipe, fill, full_res, padding, invert):
    api, _ = a1111
    image, mask = _image((32, 32), seed=4), _mask((32, 32), (4, 4, 28, 16) if invert else (16, 16, 24, 24))
    r = api.img2img(images=[image], mask_image=mask, mask_blur=2, inpainting_fill=fill, inpaint_full_res=full_res,
                    inpaint_full_res_padding=padding, inpainting_mask_invert=invert, prompt="a red star", seed=5,
                    cfg_scale=5.5, denoising_strength=0.9, width=32, height=32)     # the size the loop runs at
    options = InpaintConfig(mask_blur=2, masked_content=("fill", "original", "latent noise", "latent nothing")[fill],
                            only_masked=full_res, padding=padding, invert_mask=bool(invert))
    direct = pipe.inpaint(GenerationConfig("a red star", seed=5, steps=3, cfg_scale=5.5, strength=0.9, sampler="Euler",
                                           width=32, height=32),
                          image, mask, options)
    assert len(r.images) == 1 and r.images[0].size == (32, 32) and r.parameters["mask"] is None
    assert np.array_equal(np.asarray(r.images[0].convert("RGB")), np.asarray(direct.images[0]))
    assert r.info["infotexts"][0] == direct.infotexts[0]


@pytest.mark.parametrize("extra, message", [
    ({"mask": "not base64!"}, "mask: not base64"),
    ({"mask_blur_x": 2, "mask_blur_y": 6}, "mask_blur_x (2) and mask_blur_y (6) must be equal"),
    ({"inpainting_fill": 4}, "inpainting_fill"),
    ({"inpainting_mask_invert": 2}, "inpainting_mask_invert"),
])
def test_a1111_bad_inpaint_fields_are_422(a1111, extra, message):
    import base64

    _, base = a1111
    body = {"prompt": "x", "steps": 2, "init_images": [base64.b64encode(_png(_image())).decode()],
            "mask": base64.b64encode(_png(_mask())).decode(), **extra}
    r = requests.post(f"{base}/sdapi/v1/img2img", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert message in r.text


@pytest.fixture(scope="module")
def a1111_inpainting_unet(inpaint_model_dir, tmp_path_factory):
    """webuiapi's client of a server running the tiny model with a 9-channel inpainting UNet."""
    webuiapi = pytest.importorskip("webuiapi")
    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    port, pipe9 = free_port(), Pipeline.load(inpaint_model_dir)
    app = create_app(ServerSettings(output_dir=tmp_path_factory.mktemp("a1111-inpainting-unet"), port=port),
                     load_pipeline=lambda device: pipe9)
    with serving(app, port):
        yield webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2)


def test_a1111_reports_inpainting_conditioning_of_a_concat_unet(a1111, a1111_inpainting_unet):
    """is_using_inpainting_conditioning as A1111 sets it (processing.py: the model's conditioning_key
    is concat or hybrid, in txt2img_image_conditioning and inpainting_image_conditioning): true for
    every job of an inpainting UNet, false for a plain one, masked or not."""
    image, mask = _image((16, 16), seed=2), _mask((16, 16), (4, 4, 12, 12))
    common = {"prompt": "a red star", "seed": 3, "width": 16, "height": 16, "steps": 2}
    for api, expected in ((a1111[0], False), (a1111_inpainting_unet, True)):
        masked = api.img2img(images=[image], mask_image=mask, mask_blur=0, denoising_strength=0.9, **common)
        plain = api.img2img(images=[image], denoising_strength=0.9, **common)
        txt = api.txt2img(**common)
        assert [r.info["is_using_inpainting_conditioning"] for r in (masked, plain, txt)] == [expected] * 3
