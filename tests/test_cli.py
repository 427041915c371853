"""The `sdlab` command line: outputs, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from sdlab.cli.main import main
from sdlab.io.metadata import read_png_metadata
from sdlab.world.render import render
from sdlab.world.scene import single_object_scene


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_writes_images_grid_and_metadata(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(capsys, "generate", "a red circle", "--model", tiny_model_dir, "--steps", 2, "--seed", 9,
                       "--batch-size", 2, "--sampler", "dpm++ 2m karras", "--out", tmp_path)
    assert code == 0
    paths = out.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["00000-9.png", "00001-10.png", "grid-00001.png"]
    meta = read_png_metadata(paths[0])
    assert (meta["params"]["Sampler"], meta["params"]["Schedule type"]) == ("DPM++ 2M", "Karras")   # as A1111 writes
    assert meta["settings"]["seed"] == 9


def test_img2img_cli(capsys, tiny_model_dir, tmp_path):
    import random

    src = tmp_path / "in.jpg"
    render(single_object_scene("star", "red", "large", "center", "blue", random.Random(0))).save(src)
    code, out, _ = run(capsys, "img2img", src, "a red star", "--model", tiny_model_dir, "--steps", 4,
                       "--strength", 0.5, "--seed", 1, "--out", tmp_path / "o")
    assert code == 0
    meta = read_png_metadata(out.split()[0])
    assert meta["params"]["Denoising strength"] == 0.5 and meta["settings"]["mode"] == "img2img"


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--sampler", "Eulr"], "unknown sampler 'Eulr'; known samplers: Euler, "),
    (["generate", "x", "--width", "60"], "width must be a multiple of 8, got 60"),
    (["generate", "x", "--steps", "-2"], "steps must be between 1 and 1000, got -2"),
    (["generate", "x", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["img2img", "/nonexistent.png", "x", "--strength", "0.5"], "cannot read init image '/nonexistent.png'"),
    (["img2img", "IMG", "x", "--strength", "1.5"], "strength must be"),
])
def test_bad_input_gives_one_line_error(capsys, tiny_model_dir, tmp_path, argv, message):
    img = tmp_path / "ok.png"
    Image.new("RGB", (16, 16)).save(img)
    argv = [str(img) if a == "IMG" else a for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    code, out, err = run(capsys, *argv, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlab: error: ") and message in lines[0], err


@pytest.mark.parametrize("command", [["generate", "x"], ["attend", "x"], ["edit", "x", "--mode", "reweight", "--reweight", "x=2"]])
def test_an_output_folder_that_cannot_be_made_fails_before_sampling(capsys, tiny_model_dir, tmp_path, command):
    (tmp_path / "taken").write_text("a file")
    code, out, err = run(capsys, *command, "--model", tiny_model_dir, "--steps", 1, "--out", tmp_path / "taken")
    assert code == 2 and "cannot use" in err and "as the output folder: File exists" in err
    assert "sampling" not in err and "Traceback" not in err


def test_a_lora_scale_that_is_no_number_is_named(capsys, tiny_model_dir, tmp_path):
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"")
    code, _, err = run(capsys, "generate", "x", "--model", tiny_model_dir, "--lora", f"{lora}:lots")
    assert code == 2 and "the scale 'lots' must be a number" in err


def test_malformed_model_folder(capsys, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_index.json").write_text("{not json")
    code, _, err = run(capsys, "info", tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model_index.json" in err


def test_unreadable_image_file(capsys, tiny_model_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, _, err = run(capsys, "img2img", bad, "x", "--model", tiny_model_dir, "--out", tmp_path)
    assert code == 2 and "cannot read init image" in err


def test_info_json(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "info", tiny_model_dir, "--json")
    d = json.loads(out)
    assert code == 0 and d["native_size"] == 16 and d["prediction_type"] == "v_prediction"
    assert d["scheduler"]["rescale_betas_zero_snr"] is True


def test_world_read_prints_oracle_json(capsys, tmp_path):
    import random

    path = tmp_path / "scene.png"
    render(single_object_scene("triangle", "yellow", "small", "right", "purple", random.Random(1))).save(path)
    code, out, _ = run(capsys, "world", "read", path)
    d = json.loads(out)
    assert code == 0 and d["background"] == "purple"
    obj = d["objects"][0]
    assert (obj["shape"], obj["color"], obj["size"], obj["position"]) == ("triangle", "yellow", "small", "right")


def test_console_script_help_has_examples():
    out = subprocess.run([sys.executable, "-m", "sdlab.cli.main", "generate", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "examples:" in out and "--negative-prompt" in out and "DPM++ 2M Karras" in out
