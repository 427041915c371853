"""The studio page in a real browser: Playwright driving Debian's chromium (headless, no sandbox)
against a real uvicorn server on a free loopback port with the shipped model. Screenshots go to
artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from server_util import free_port

from sdlab.pipeline import DEFAULT_MODEL

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and this is not root with apt-get: apt-get install -y chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=900)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env, timeout=1800)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    _ensure_chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """uvicorn serving the studio (the shipped 64x64 model) in a thread on 127.0.0.1:PORT."""
    import uvicorn

    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    out = tmp_path_factory.mktemp("studio") / "outputs"
    loras = out.parent / "loras"       # --lora-dir, empty until the training test fills it
    loras.mkdir()
    vaes = out.parent / "vaes"         # --vae-dir with a copy of the model's own VAE
    shutil.copytree(DEFAULT_MODEL / "vae", vaes / "shipped-copy")
    port = free_port()
    app = create_app(ServerSettings(output_dir=out, port=port, preview_interval=0.0, lora_dirs=(loras,),
                                    vae_dirs=(vaes,)))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 120
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < end, "server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", out
    srv.should_exit = True
    thread.join(30)


def _open_studio(browser, base: str, **page_options):
    """A new page on the studio, loaded (samplers listed), and the list its page errors (and
    Content-Security-Policy violations) go to. Waits are functions: the server's CSP forbids
    the eval that Playwright needs to poll a bare expression."""
    page = browser.new_page(**(page_options or {"viewport": {"width": 1280, "height": 860}}))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(base + "/")
    page.wait_for_function("() => document.querySelectorAll('#sampler option').length >= 5")
    return page, errors


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.wait_for_timeout(400)  # let the progress bar's width transition finish
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


# Records every progress value and preview the page shows (the bar is updated from SSE events).
WATCH = """() => {
  window.__bar = []; window.__previews = 0;
  new MutationObserver(() => window.__bar.push(+document.getElementById('progress').getAttribute('aria-valuenow')))
    .observe(document.getElementById('progress'), {attributes: true});
  new MutationObserver(() => window.__previews++)
    .observe(document.getElementById('preview'), {attributes: true, attributeFilter: ['src']});
}"""


def test_new_user_generates_cancels_and_browses_the_gallery(browser, server):
    base, out = server
    page, errors = _open_studio(browser, base)
    assert page.input_value("#width") == "64" and page.input_value("#sampler") == "Euler a"  # the model's size
    page.click("#seed-random")
    assert 0 <= int(page.input_value("#seed")) < 2**32
    page.fill("#prompt", "a large red circle on the left on a blue background")
    page.fill("#steps", "40")
    page.fill("#seed", "1234")
    page.evaluate(WATCH)
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth === 64)")
    seen = page.evaluate("window.__bar")
    assert any(0 < v < 100 for v in seen), seen  # the bar moved through the run ...
    assert seen[-1] == 100 and page.evaluate("window.__previews") >= 1  # ... and previews were shown
    meta = page.text_content("#meta")
    assert meta.startswith("a large red circle on the left on a blue background")
    assert "Steps: 40" in meta and "Seed: 1234" in meta and "Size: 64x64" in meta
    assert page.text_content("#job-state") == "done"
    assert (out / "00000-1234.png").is_file()
    _shot(page, "studio-result-laptop.png")

    page.fill("#steps", "150")
    page.fill("#width", "128")
    page.fill("#height", "128")
    page.fill("#prompt", "a small green star")
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('job-state').textContent.startsWith('running ')")
    page.click("#cancel")
    page.wait_for_function("() => document.getElementById('job-state').textContent === 'cancelled'", timeout=60_000)
    assert "cancelled" in page.text_content("#error")
    page.wait_for_function("() => document.querySelector('#jobs li .state-cancelled') !== null")
    assert len(list(out.glob("*.png"))) == 1

    page.click("#gallery-refresh")
    page.wait_for_selector("#gallery img")
    assert page.locator("#gallery img").count() == 1
    page.click("#gallery button")
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('Seed: 1234')")
    _shot(page, "studio-gallery-laptop.png")

    page.click("#tab-img2img")
    page.set_input_files("#image", str(out / "00000-1234.png"))
    page.fill("#prompt", "a large yellow star on the left on a blue background")
    page.fill("#steps", "20")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#seed", "7")
    page.select_option("#vae", "shipped-copy")             # A1111's "SD VAE" pick, for this job
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('Denoising strength: 0.75')",
                           timeout=120_000)
    assert "Seed: 7" in page.text_content("#meta") and (out / "00001-7.png").is_file()
    assert "VAE: shipped-copy" in page.text_content("#meta")
    _shot(page, "studio-img2img-laptop.png")
    assert errors == []
    page.close()


def test_phone_width_layout(browser, server):
    base, _ = server
    page, _ = _open_studio(browser, base, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                           is_mobile=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    form, output = page.locator("#gen-form").bounding_box(), page.locator(".output").bounding_box()
    assert output["y"] >= form["y"] + form["height"] and form["width"] > 330  # one column, full width
    _shot(page, "studio-phone.png")
    page.close()


def test_attention_chips_and_a_side_by_side_edit(browser, server):
    base, out = server
    page, errors = _open_studio(browser, base)
    page.click("#tab-attend")
    assert page.is_hidden("#batch-fields") and page.is_visible("#layer-up")
    page.uncheck("#layer-down")
    page.fill("#prompt", "a large red circle on the left on a blue background")
    page.fill("#steps", "12")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_selector("#tokens .chip", timeout=120_000)
    chips = page.locator("#tokens .chip")
    texts = [t.strip() for t in chips.all_text_contents()]
    assert len(texts) == 11 and texts[2].startswith("red"), texts
    assert "token01.png" in page.get_attribute("#attn-view", "src")  # the first token is shown at first
    chips.nth(2).click()
    page.wait_for_function("() => document.getElementById('attn-view').src.includes('token03.png')")
    page.wait_for_function("() => document.getElementById('attn-view').naturalWidth === 64")
    assert page.get_attribute("#tokens .chip:nth-child(3)", "aria-pressed") == "true"
    _shot(page, "studio-attention.png")

    page.click("#tab-edit")
    assert page.text_content("#prompt-label") == "Source prompt" and page.is_visible("#target")
    page.fill("#prompt", "a large red circle on the left on a blue background")
    page.fill("#target", "a large red square on the left on a blue background")
    page.fill("#reweight", "red")
    page.click("#generate")
    assert "reweight takes word=factor" in page.text_content("#error")
    page.fill("#reweight", "square=2")
    page.fill("#target", "a large red square")  # fewer tokens than the source: refused at once
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('same number of tokens')")
    page.fill("#target", "a large red square on the left on a blue background")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#results.pair figure:nth-child(2) figcaption')"
                           "?.textContent.startsWith('edited')", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth === 64)")
    caps = page.locator("#results figcaption").all_text_contents()
    assert caps[0].startswith("source · seed 3") and caps[1].startswith("edited")
    left, right = (page.locator("#results img").nth(i).bounding_box() for i in (0, 1))
    assert abs(left["y"] - right["y"]) < 1 and right["x"] > left["x"] + left["width"]  # side by side
    assert len(list(out.glob("*.png"))) >= 3 and (out / "attention").is_dir()
    _shot(page, "studio-edit.png")
    assert errors == []
    page.close()


def test_training_shows_a_live_loss_curve(browser, server, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    base, out = server
    images = []
    for i, colour in enumerate(["red", "orange"]):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (64, 64), colour).save(images[-1])
    page, errors = _open_studio(browser, base)
    page.click("#tab-train")
    assert page.text_content("#prompt-label") == "Instance prompt" and page.is_hidden("#sampling-fields")
    page.fill("#prompt", "a sks shape")
    page.click("#generate")
    assert "at least one image" in page.text_content("#error")
    page.set_input_files("#train-images", [str(p) for p in images])
    page.fill("#max_steps", "6")
    page.select_option("#lora-targets", "all")
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('job-state').textContent === 'done'", timeout=180_000)
    points = page.get_attribute("#loss-line", "points").split()
    assert len(points) == 6 and page.is_visible("#loss-curve")
    assert float(page.text_content("#loss-value")) > 0 and "step 6" in page.text_content("#loss-step")
    assert ".safetensors" in page.text_content("#meta")
    kohya = list((out / "training").glob("*/lora_kohya.safetensors"))
    assert kohya and any("_conv1." in k for k in load_file(kohya[0]))     # the chosen layers reached the run
    _shot(page, "studio-train.png")
    page.click("#use-trained")                     # generate with what was just trained
    assert page.get_attribute("#tab-txt2img", "aria-selected") == "true"
    assert page.input_value("#trained") == kohya[0].parent.name and page.is_visible("#trained-fields")
    page.fill("#prompt", "a sks shape")
    page.fill("#steps", "2")
    page.click("#generate")               # job-state still reads the train job's "done" until the reply
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('Lora hashes')", timeout=60_000)
    assert 'Lora hashes: "lora_kohya: ' in page.text_content("#meta") and page.is_visible("#results img")
    assert errors == []
    page.close()

    shutil.copy(kohya[0], out.parent / "loras" / "web-heart.safetensors")   # now in --lora-dir
    page, errors = _open_studio(browser, base)
    page.wait_for_selector("#lora-tag-fields", state="visible")
    page.fill("#prompt", "a sks shape")
    page.select_option("#lora-tag", "web-heart")          # A1111's extra-networks click: the tag is added
    assert page.input_value("#prompt") == "a sks shape <lora:web-heart:1>" and page.input_value("#lora-tag") == ""
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('web-heart')", timeout=60_000)
    assert 'Lora hashes: "web-heart: ' in page.text_content("#meta") and errors == []
    page.close()
