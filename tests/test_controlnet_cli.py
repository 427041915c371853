"""`sdlab generate --control IMAGE[:TYPE[:SCALE]] --controlnet PATH` and the control preprocessors."""

import random

import numpy as np
import pytest
import torch

from sdlab.cli.main import main
from sdlab.control.build import controls_from_specs, parse_spec
from sdlab.control.preprocess import preprocess
from sdlab.errors import ConfigError
from sdlab.io.metadata import read_png_metadata
from sdlab.world import oracle
from sdlab.world.render import render
from sdlab.world.scene import single_object_scene


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("cn") / "scene.png"
    render(single_object_scene("square", "red", "large", "left", "blue", random.Random(0))).save(path)
    return path


@pytest.fixture(scope="module")
def controlnet_dir(tiny_model_dir, tmp_path_factory):
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8))
    out = tmp_path_factory.mktemp("cn") / "my-cn"
    net.save_pretrained(out)
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_with_two_controls_writes_a1111_infotext(capsys, tiny_model_dir, controlnet_dir, scene_png, tmp_path):
    code, out, err = run(capsys, "generate", "a red object", "--model", tiny_model_dir, "--steps", 2, "--seed", 1,
                         "--control", f"{scene_png}:edges:0.5", "--control", scene_png, "--controlnet", controlnet_dir,
                         "--control-end", 0.5, "--control-end", 1, "--guess-mode", "--out", tmp_path)
    assert code == 0, err
    meta = read_png_metadata(out.split()[0])
    assert meta["params"]["ControlNet 0"].startswith("Module: edges, Model: my-cn [")
    assert "Weight: 0.5" in meta["params"]["ControlNet 0"] and "Guidance End: 0.5" in meta["params"]["ControlNet 0"]
    assert "Control Mode: ControlNet is more important" in meta["params"]["ControlNet 1"]
    assert [c["module"] for c in meta["settings"]["controls"]] == ["edges", "none"]


@pytest.mark.parametrize("extra,message", [
    (["--control", "IMG:depth"], "unknown control type 'depth'"),
    (["--control", "IMG:mask:strong"], "the scale 'strong' must be a number"),
    (["--control", "IMG", "--control", "IMG"], "2 --control images but 3 --controlnet models"),
    (["--control", "missing.png"], "cannot read control image"),
    (["--control", "IMG:mask:5"], "control scale must be a number in [0, 2]"),
    (["--control", "IMG", "--control-start", "0.9", "--control-end", "0.2"], "must be below its end"),
    (["--control", "IMG", "--deep-shrink", "2"], "deep_shrink cannot be combined with ControlNet controls"),
])
def test_bad_control_options_are_one_line_errors(capsys, tiny_model_dir, controlnet_dir, scene_png, tmp_path,
                                                 extra, message):
    extra = [str(scene_png) if a == "IMG" else a.replace("IMG", str(scene_png)) for a in extra]
    models = ["--controlnet", controlnet_dir] * (3 if extra.count("--control") == 2 else 1)
    code, _, err = run(capsys, "generate", "x", "--model", tiny_model_dir, "--steps", 1, *extra, *models,
                       "--out", tmp_path / "o")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_parse_spec():
    assert parse_spec("a.png") == ("a.png", "none", 1.0)
    assert parse_spec("a.png:mask") == ("a.png", "mask", 1.0)
    assert parse_spec("dir/a.png:layout:0.25") == ("dir/a.png", "layout", 0.25)
    with pytest.raises(ConfigError, match="--controlnet needs a control image"):
        controls_from_specs([], ["cn"])


def test_preprocessors_keep_shape_position_and_size_and_drop_colour(scene_png):
    from PIL import Image

    image = Image.open(scene_png).convert("RGB")
    truth = oracle.read(image).main
    mask = np.asarray(preprocess(image, "mask"))[..., 0] > 127
    assert (mask == truth.mask).mean() > 0.98
    layout = preprocess(image, "layout")
    assert np.asarray(layout).std(axis=-1).max() == 0        # grey: no colour left
    read = oracle.read(layout).main
    assert (read.shape, read.position, read.size) == (truth.shape, truth.position, truth.size)
    edges = np.asarray(preprocess(image, "edges"))[..., 0] > 127
    ys, xs = np.nonzero(edges)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx(truth.bbox, abs=1)
    assert edges.sum() < 0.5 * truth.area                     # an outline, not the filled shape
    other = render(single_object_scene("square", "green", "large", "left", "white", random.Random(0)))
    assert np.array_equal(np.asarray(preprocess(other, "mask")), np.asarray(preprocess(image, "mask")))
