"""The studio's inpaint tab in Chromium (the pattern and fixtures of test_server_browser.py, the shipped
model): the source image shown on a canvas, a mask painted with the mouse, cleared and inverted,
then sent as an inpaint job whose image keeps the source away from the stroke."""

from __future__ import annotations

import numpy as np
from PIL import Image

from test_server_browser import _open_studio, _shot, browser, server  # noqa: F401  (fixtures)

PAINTED = "() => maskPainted()"
WHITE = """() => { const d = MASK.mask.getContext('2d').getImageData(0, 0, MASK.mask.width, MASK.mask.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 127; return n; }"""


def _scene(path) -> Image.Image:
    from sdlab.world.render import render
    from sdlab.world.scene import Scene, ShapeObject

    scene = Scene("white", (ShapeObject("square", "red", "small", "left", (18, 32)),
                            ShapeObject("circle", "blue", "small", "right", (46, 32))), "left of")
    image = render(scene)
    image.save(path)
    return image


def _set(page, element_id: str, value: str) -> None:
    """Set a range input as a user's drag does (its input event fires)."""
    page.eval_on_selector(f"#{element_id}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          value)


def _stroke(page, y: float, x0: float, x1: float) -> None:
    """A mouse stroke across the mask view at image row `y`, from image column x0 to x1 (64x64 image)."""
    page.locator("#mask-view").scroll_into_view_if_needed()
    box = page.locator("#mask-view").bounding_box()
    to = lambda x, yy: (box["x"] + box["width"] * x / 64, box["y"] + box["height"] * yy / 64)  # noqa: E731
    page.mouse.move(*to(x0, y))
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(*to(x0 + (x1 - x0) * k / 8, y))
    page.mouse.up()


def test_inpaint_tab_paints_a_mask_and_repaints(browser, server, tmp_path):  # noqa: F811
    base, out = server
    source = _scene(tmp_path / "scene.png")
    page, errors = _open_studio(browser, base)
    page.click("#tab-inpaint")
    assert page.is_visible("#mask-empty") and page.is_visible("#strength") and page.is_hidden("#batch-fields")
    # the measured recipe is the default here (fill at strength 1); img2img keeps its own 0.75
    assert page.input_value("#strength") == "1" and page.input_value("#masked_content") == "fill"
    page.click("#tab-img2img")
    assert page.input_value("#strength") == "0.75"
    page.click("#tab-inpaint")
    page.fill("#prompt", "a photo of a green square to the left of a blue circle on a white background")
    page.click("#generate")
    assert "needs an input image" in page.text_content("#error")

    page.set_input_files("#image", str(tmp_path / "scene.png"))
    page.wait_for_selector("#mask-view", state="visible")
    page.click("#generate")
    assert "paint the area to repaint" in page.text_content("#error")
    _set(page, "brush", "4")
    _stroke(page, 32, 12, 24)
    assert page.evaluate(PAINTED) and page.is_hidden("#mask-empty")
    painted = page.evaluate(WHITE)
    assert 30 < painted < 64 * 12
    page.click("#mask-invert")
    assert page.evaluate(WHITE) == 64 * 64 - painted
    page.click("#mask-clear")
    assert not page.evaluate(PAINTED)

    _set(page, "brush", "10")
    _stroke(page, 32, 12, 24)                    # over the red square on the left
    page.fill("#mask_blur", "2")
    page.fill("#steps", "8")
    page.fill("#seed", "5")
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('Mask blur: 2')",
                           timeout=180_000)
    meta = page.text_content("#meta")
    assert "Masked content: fill" in meta and "Denoising strength: 1" in meta and "Seed: 5" in meta
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth === 64)")
    name = page.get_attribute("#results img", "src").split("/files/")[1].split("?")[0]
    result = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
    src = np.asarray(source).astype(int)
    assert np.array_equal(result[:, 40:], src[:, 40:])              # the circle's side: the source, exactly
    assert np.abs(result[28:36, 14:22] - src[28:36, 14:22]).mean() > 5     # under the stroke: repainted
    _shot(page, "studio-inpaint.png")
    assert errors == []
    page.close()
