"""The studio's ControlNet section (txt2img), grid tab (X/Y/Z plot) and merge tab in Chromium (the
pattern and fixtures of test_server_browser.py), against a server with the shipped model, a random
ControlNet of its UNet in --controlnet-dir and two copies of the model in --merge-dir."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from server_util import free_port, serving
from test_server_browser import _open_studio, _shot, browser  # noqa: F401  (fixtures)

from sdlab import GenerationConfig, Pipeline
from sdlab.pipeline import DEFAULT_MODEL
from sdlab.control.loading import controlnet_from_unet

META_HAS = "(text) => document.getElementById('meta').textContent.includes(text)"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load()


@pytest.fixture(scope="module")
def forms_server(pipe, tmp_path_factory):
    """(base URL, output folder, ControlNet folder) of the studio with the forms' server folders."""

    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    root = tmp_path_factory.mktemp("forms-studio")
    torch.manual_seed(0)
    levels = int(math.log2(pipe.vae_scale)) + 1          # the condition embedding shrinks as the VAE does
    net = controlnet_from_unet(pipe.c.unet, conditioning_embedding_out_channels=(8,) * levels)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.save_pretrained(root / "controlnets" / "random-cn")
    for name in ("shapes-a", "shapes-b"):
        shutil.copytree(DEFAULT_MODEL, root / "merge" / name)
    port = free_port()
    settings = ServerSettings(output_dir=root / "outputs", port=port, preview_interval=0.0,
                              controlnet_dirs=(root / "controlnets",), merge_dirs=(root / "merge",))
    with serving(create_app(settings, load_pipeline=lambda device: pipe), port) as base:
        yield base, root / "outputs", root / "controlnets" / "random-cn"


def _scene(path) -> Image.Image:
    from sdlab.world.render import render
    from sdlab.world.scene import Scene, ShapeObject

    image = render(Scene("white", (ShapeObject("square", "red", "large", "center", (32, 32)),)))
    image.save(path)
    return image


def _result_file(page, out, index: int = 0):
    src = page.eval_on_selector_all("#results img", "(els, i) => els[i].getAttribute('src')", index)
    return out / src.split("/files/")[1].split("?")[0]


def test_controlnet_section_steers_txt2img(browser, forms_server, pipe, tmp_path):  # noqa: F811
    from sdlab.control import Control

    base, out, net = forms_server
    control = _scene(tmp_path / "control.png")
    page, errors = _open_studio(browser, base)
    page.click("#tab-img2img")
    assert page.is_hidden("#control-fields")
    page.click("#tab-txt2img")
    page.click("#control-fields summary")
    assert page.is_hidden("#control-empty") and page.input_value("#controlnet") == "random-cn"
    page.set_input_files("#control_image", str(tmp_path / "control.png"))
    page.select_option("#control_type", "mask")
    page.fill("#control_scale", "0.8")
    page.fill("#control_end", "0.9")
    page.fill("#prompt", "a red object on a white background")
    page.fill("#steps", "6")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_function(META_HAS, arg="ControlNet 0:", timeout=180_000)
    meta = page.text_content("#meta")
    assert "Module: mask, Model: random-cn" in meta and "Weight: 0.8" in meta and "Guidance End: 0.9" in meta
    config = GenerationConfig("a red object on a white background", steps=6, seed=3, sampler=GenerationConfig.sampler,
                              width=64, height=64)
    want = pipe.generate(config, controls=[Control(control, net, scale=0.8, end=0.9, module="mask")]).images[0]
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth === 64)")
    assert np.array_equal(np.asarray(Image.open(_result_file(page, out)).convert("RGB")), np.asarray(want))
    _shot(page, "studio-controlnet.png")
    assert errors == []
    page.close()


def test_grid_tab_draws_an_xyz_plot(browser, forms_server):  # noqa: F811
    base, out, _ = forms_server
    page, errors = _open_studio(browser, base)
    page.click("#tab-grid")
    assert page.is_visible("#grid-fields") and page.is_hidden("#batch-fields") and page.is_hidden("#control-fields")
    page.fill("#prompt", "a large blue circle on a white background")
    page.click("#generate")
    assert "give the X axis its values" in page.text_content("#error")
    page.select_option("#grid-x-axis", "steps")
    page.fill("#grid-x-values", "2,4")
    page.select_option("#grid-y-axis", "cfg-scale")
    page.fill("#grid-y-values", "1,5")
    page.fill("#seed", "2")
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('#results figure').length === 5", timeout=180_000)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
    grid = Image.open(_result_file(page, out))
    assert grid.width > 2 * 64 and grid.height > 2 * 64                          # two columns, two rows, labels
    assert page.text_content("#job-state") == "done"
    captions = page.eval_on_selector_all("#results figcaption", "els => els.map(e => e.textContent)")
    assert captions[0].startswith("grid") and captions[4].startswith("x1 y1 z0")
    page.locator("#results img").nth(4).click()                # the last cell's infotext
    meta = page.text_content("#meta")
    assert "Steps: 4" in meta and "CFG scale: 5" in meta and "Seed: 2" in meta
    page.fill("#grid-x-values", "2,zz")
    page.click("#generate")
    page.wait_for_function("() => !document.getElementById('error').hidden")
    assert "steps" in page.text_content("#error")
    _shot(page, "studio-grid.png")
    assert errors == []
    page.close()


def test_merge_tab_merges_two_models_into_the_output_folder(browser, forms_server):  # noqa: F811
    base, out, _ = forms_server
    page, errors = _open_studio(browser, base)
    page.click("#tab-merge")
    assert page.is_hidden("#prompt-field") and page.is_hidden("#sampling-fields") and page.is_visible("#merge-fields")
    assert page.text_content("#generate") == "Merge"
    assert page.input_value("#merge-a") == "shapes-a" and page.input_value("#merge-b") == "shapes-b"
    page.click("#generate")
    assert "give the merged model a name" in page.text_content("#error")
    page.eval_on_selector("#merge-alpha", "el => { el.value = '0.5'; el.dispatchEvent(new Event('input')); }")
    assert page.text_content("#merge-alpha-out") == "0.5"
    page.fill("#merge-name", "half-half")
    page.click("#generate")
    page.wait_for_function(META_HAS, arg="merged: models/half-half", timeout=180_000)
    assert "model folder" in page.text_content("#meta") and page.text_content("#job-state") == "done"
    assert (out / "models" / "half-half" / "model_index.json").is_file()
    assert Pipeline.load(out / "models" / "half-half").native_size == 64
    page.click("#generate")                                # the same name again: refused, nothing replaced
    page.wait_for_function("() => document.getElementById('error').textContent.includes('exists')")
    page.click("#tab-txt2img")
    assert page.is_visible("#prompt-field") and page.text_content("#generate") == "Generate"
    _shot(page, "studio-merge.png")
    assert errors == []
    page.close()
