"""Tests for sdlab.io: atomic writes, A1111 infotext, PNG chunks, image loading, grids."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from sdlab.errors import ConfigError, ImageReadError
from sdlab.io import (atomic_dir, atomic_save, atomic_write_bytes, format_infotext, load_image,
                      make_grid, parse_infotext, read_png_metadata, save_png)

PARAMS = {"Steps": 25, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 1, "Size": "64x64",
          "Model hash": "abc", "Model": "name"}


# --- infotext -------------------------------------------------------------------------------

def test_format_infotext_matches_a1111_layout():
    text = format_infotext("a red circle", "blurry", PARAMS)
    assert text == ("a red circle\nNegative prompt: blurry\nSteps: 25, Sampler: Euler a, "
                    "CFG scale: 7.5, Seed: 1, Size: 64x64, Model hash: abc, Model: name")


def test_format_infotext_omits_empty_negative_and_none_values():
    text = format_infotext("a cat", "", dict(PARAMS, Seed=None))
    assert text.splitlines() == ["a cat", "Steps: 25, Sampler: Euler a, CFG scale: 7.5, "
                                 "Size: 64x64, Model hash: abc, Model: name"]


def test_values_with_commas_colons_newlines_are_quoted():
    text = format_infotext("p", "", dict(PARAMS, Model="my, model", Note="a: b", Multi="x\ny"))
    last = text.splitlines()[-1]
    assert 'Model: "my, model"' in last and 'Note: "a: b"' in last and 'Multi: "x\\ny"' in last


@pytest.mark.parametrize("prompt,negative", [
    ("a red circle, small, on a blue background", "ugly, blurry"),
    ("first line\nsecond line, with comma\nthird: with colon", ""),
    ("(word:1.3) [x|y] BREAK z", "neg\nspanning lines"),
    ("ünïcödé ☃", "日本語"),
])
def test_infotext_round_trip(prompt, negative):
    params = dict(PARAMS, Model="my, model", Note='say "hi"', Q='"quoted',
                  **{"Lora hashes": "a: 1, b: 2", "Denoising strength": 0.75})
    got = parse_infotext(format_infotext(prompt, negative, params))
    assert got == (prompt, negative, params)
    assert isinstance(got[2]["Steps"], int) and isinstance(got[2]["CFG scale"], float)


def test_parse_text_without_params_is_all_prompt():
    assert parse_infotext("just a prompt\nNegative prompt: bad") == ("just a prompt", "bad", {})


def test_parse_a1111_sample_text():
    text = ('masterpiece, 1girl\nNegative prompt: lowres, bad anatomy\nSteps: 20, Sampler: '
            'DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, Model hash: '
            '6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", '
            'Version: v1.6.0')
    prompt, neg, params = parse_infotext(text)
    assert (prompt, neg) == ("masterpiece, 1girl", "lowres, bad anatomy")
    assert params["Seed"] == 1234567890 and params["CFG scale"] == 7.0
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54" and params["Version"] == "v1.6.0"
    assert params["Sampler"] == "DPM++ 2M Karras"


def test_bad_param_key_rejected():
    with pytest.raises(ValueError):
        format_infotext("p", "", {"bad:key": 1})


# --- PNG chunks -----------------------------------------------------------------------------

def test_save_png_chunks_read_by_plain_pil(tmp_path):
    img = Image.new("RGB", (8, 6), (10, 20, 30))
    info = format_infotext("a cat, sitting", "dog", PARAMS)
    settings = {"prompt": "a cat, sitting", "steps": 25, "seed": 1, "nested": {"x": [1, 2]}}
    path = save_png(tmp_path / "out.png", img, info, settings)
    with Image.open(path) as back:
        assert back.format == "PNG" and back.size == (8, 6)
        assert back.text["parameters"] == info
        assert json.loads(back.text["sdlab"]) == settings
        assert back.getpixel((3, 3)) == (10, 20, 30)
    meta = read_png_metadata(path)
    assert meta["prompt"] == "a cat, sitting" and meta["negative_prompt"] == "dog"
    assert meta["params"] == PARAMS and meta["settings"] == settings
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_png_non_latin1_text(tmp_path):
    info = format_infotext("雪だるま ☃", "", PARAMS)
    path = save_png(tmp_path / "u.png", Image.new("RGB", (4, 4)), info, {"p": "☃"})
    assert read_png_metadata(path)["prompt"] == "雪だるま ☃"
    assert read_png_metadata(path)["settings"] == {"p": "☃"}


def test_read_png_metadata_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_png_metadata(bad)


# --- grid -----------------------------------------------------------------------------------

def _solid(color, size=(8, 6)):
    return Image.new("RGB", size, color)


@pytest.mark.parametrize("n,cols,expected", [(4, None, (16, 12)), (6, None, (24, 12)),
                                             (5, 2, (16, 18)), (3, 5, (24, 6)), (1, None, (8, 6))])
def test_grid_size(n, cols, expected):
    assert make_grid([_solid((i, 0, 0)) for i in range(n)], cols=cols).size == expected


def test_grid_places_images_row_major():
    imgs = [_solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255)), _solid((9, 9, 9))]
    grid = make_grid(imgs, cols=2)
    assert grid.getpixel((1, 1)) == (255, 0, 0) and grid.getpixel((9, 1)) == (0, 255, 0)
    assert grid.getpixel((1, 7)) == (0, 0, 255) and grid.getpixel((9, 7)) == (9, 9, 9)


def test_grid_mixed_sizes_and_modes():
    grid = make_grid([_solid((1, 2, 3), (4, 4)), Image.new("L", (10, 2), 200)], cols=2)
    assert grid.size == (20, 4) and grid.mode == "RGB"
    assert grid.getpixel((15, 1)) == (200, 200, 200)


def test_grid_errors():
    with pytest.raises(ConfigError):
        make_grid([])
    with pytest.raises(ConfigError):
        make_grid([_solid((0, 0, 0))], cols=0)


# --- atomic writes --------------------------------------------------------------------------

def test_atomic_write_bytes_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.bin"]


def test_atomic_save_exception_keeps_previous_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def writer(tmp):
        tmp.write_text("partial new content")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_save(target, writer)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_save_writer_gets_path_in_same_folder(tmp_path):
    seen = []
    atomic_save(tmp_path / "x.png", lambda tmp: (seen.append(tmp), _solid((1, 1, 1)).save(
        tmp, format="PNG")))
    assert seen[0].parent == tmp_path and seen[0].name != "x.png"
    assert load_image(tmp_path / "x.png").getpixel((0, 0)) == (1, 1, 1)


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("v1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "v1"

    with pytest.raises(KeyError):
        with atomic_dir(target) as d:
            (d / "a.txt").write_text("v2-partial")
            assert (target / "a.txt").read_text() == "v1"  # old one still visible
            raise KeyError("boom")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["model"]

    with atomic_dir(target) as d:
        (d / "b.txt").write_text("v2")
    assert os.listdir(target) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


# --- image loading --------------------------------------------------------------------------

def test_load_image_converts_modes(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent -> white background
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((1, 0)) == (255, 255, 255)

    Image.new("L", (3, 3), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((1, 1)) == (77, 77, 77)

    pal = Image.new("RGB", (3, 3), (0, 128, 255)).convert("P")
    pal.save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").mode == "RGB"

    Image.new("CMYK", (3, 3), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").getpixel((1, 1)) == pytest.approx((255, 255, 255),
                                                                            abs=2)

    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # red in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    assert out.size == (2, 4)
    assert out.getpixel((1, 0)) == (255, 0, 0)  # top-left went to the top-right


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match=r"cannot read image '.*missing.png': no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="cannot read image '.*junk.png': "):
        load_image(tmp_path / "junk.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)


def test_load_image_decompression_bomb_guard(tmp_path, monkeypatch):
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(tmp_path / "big.png", max_pixels=10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    assert load_image(tmp_path / "big.png").size == (300, 300)
