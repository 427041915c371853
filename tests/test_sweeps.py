"""img2img strength sweeps and the mix / interpolate / img2img-sweep commands on a tiny random model."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdlab import GenerationConfig
from sdlab.cli.embed import mix_target, parse_weights
from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.io.metadata import read_png_metadata
from sdlab.pipeline import Pipeline
from sdlab.sampling.strength_sweep import strength_sweep


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out.split(), out.err


def test_strength_sweep_grid_and_results(pipe, source):
    config = GenerationConfig("a red circle", steps=4, seed=2, batch_size=2, cfg_scale=2.0)
    sweep = strength_sweep(pipe, source, config, [0.25, 1.0], scale=2)
    side = pipe.native_size * 2
    # columns: input + 2 strengths; rows: 2 images; plus label header and row-label margin
    assert 3 * side < sweep.grid.width < 3 * side + 60 and 2 * side < sweep.grid.height < 2 * side + 30
    assert [r.settings[0]["strength"] for r in sweep.results] == [0.25, 1.0]
    again = pipe.generate(replace(config, strength=1.0), init_image=source)
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(sweep.results[1].images[1]))
    # the lower strength stays closer to the input's own VAE round trip than strength 1
    ref = np.asarray(pipe.generate(replace(config, strength=0.0), init_image=source).images[0], np.float32)
    far = [np.abs(np.asarray(r.images[0], np.float32) - ref).mean() for r in sweep.results]
    assert far[0] < far[1]


@pytest.mark.parametrize("strengths, message", [([], "non-empty list"), ([0.5, 1.5], "strength must be in"),
                                                ("0.5", "non-empty list")])
def test_strength_sweep_errors(pipe, source, strengths, message):
    with pytest.raises(ConfigError, match=message):
        strength_sweep(pipe, source, GenerationConfig("x", steps=2), strengths)


def test_img2img_cli_sweep(capsys, tiny_model_dir, tmp_path, source):
    src = tmp_path / "in.png"
    source.save(src)
    code, out, _ = run(capsys, "img2img", src, "a red circle", "--model", tiny_model_dir, "--steps", 4, "--seed", 1,
                       "--strength", 0.5, 1.0, "--out", tmp_path / "o")
    assert code == 0 and [p.rsplit("/", 1)[1] for p in out] == ["00000-1.png", "00001-1.png", "sweep-00001.png"]
    assert read_png_metadata(out[-1])["settings"]["strength"] == [0.5, 1.0]
    assert read_png_metadata(out[1])["params"]["Denoising strength"] == 1.0


def test_mix_cli(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(capsys, "mix", "a large red {} on a blue background", "circle=0.5", "square=0.5",
                       "--model", tiny_model_dir, "--steps", 2, "--seed", 4, "--out", tmp_path)
    assert code == 0 and len(out) == 1
    meta = read_png_metadata(out[0])
    assert meta["settings"]["embedding_mix"] == {"circle": {"circle": 0.5, "square": 0.5}}
    assert meta["settings"]["prompt"] == "a large red circle on a blue background"
    code, out, _ = run(capsys, "mix", "a red {}", "circle", "square", "--sweep", 3, "--model", tiny_model_dir,
                       "--steps", 2, "--seed", 4, "--out", tmp_path)
    assert code == 0 and out[0].endswith("/mix-sweep-00001.png")  # numbered after 00000-4.png
    code, _, err = run(capsys, "mix", "a red circle", "hexagon=1", "--word", "circle", "--model", tiny_model_dir,
                       "--out", tmp_path)
    assert code == 2 and "unknown token: 'hexagon'" in err
    code, _, err = run(capsys, "mix", "a red circle", "square=1", "--word", "star", "--model", tiny_model_dir,
                       "--out", tmp_path)
    assert code == 2 and "'star' is not in the prompt; the prompt's tokens are: a, red, circle" in err


def test_mix_argument_parsing():
    assert parse_weights(["circle=0.25", "square"]) == {"circle": 0.25, "square": 1.0}
    assert mix_target("a {} here", {"circle": 1.0}, None) == ("a circle here", "circle")
    assert mix_target("a red star", {"circle": 1.0}, "star") == ("a red star", "star")
    with pytest.raises(ConfigError, match="weight of 'circle' must be a number, got 'half'"):
        parse_weights(["circle=half"])
    with pytest.raises(ConfigError, match="either"):
        mix_target("a {}", {"circle": 1.0}, "star")


def test_interpolate_cli(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(capsys, "interpolate", "a red circle", "a blue square", "--frames", 3, "--steps", 2,
                       "--seed", 1, "--model", tiny_model_dir, "--out", tmp_path / "s.gif")
    assert code == 0 and [p.rsplit("/", 1)[1] for p in out] == ["s.gif", "s-strip.png"]
    with Image.open(out[0]) as im:
        assert im.n_frames == 3
    code, _, err = run(capsys, "interpolate", "a", "b", "--frames", 1, "--model", tiny_model_dir,
                       "--out", tmp_path / "s.gif")
    assert code == 2 and "frames must be an integer between 2" in err
    code, _, err = run(capsys, "interpolate", "a", "b", "--model", tiny_model_dir, "--out", tmp_path / "s.avi")
    assert code == 2 and "must end in .png, .gif, .mp4" in err
