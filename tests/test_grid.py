"""X/Y/Z plots (sdlab grid, sdlab.sampling.xyz_grid) on a tiny random model: axes derived from
the declared settings, A1111 ranges, cells equal to plain generations, labelled grids, files."""

from dataclasses import replace

import numpy as np
import pytest

from sdlab import GenerationConfig
from sdlab.cli.main import main
from sdlab.config import settings_of
from sdlab.errors import ConfigError
from sdlab.io.grids import save_grid
from sdlab.io.metadata import read_png_metadata
from sdlab.pipeline import Pipeline
from sdlab.sampling.xyz_axes import axis_names, make_axis, parse_axis
from sdlab.sampling.xyz_grid import xyz_grid

BASE = GenerationConfig("a red circle on a blue background", steps=2, seed=3, cfg_scale=2.0, sampler="Euler")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def arr(image):
    return np.asarray(image, dtype=np.int16)


def test_every_flagged_setting_is_an_axis():
    flagged = [s.option(n).lstrip("-") for n, (_, _, s) in settings_of(GenerationConfig).items()
               if s.option(n) and n not in ("batch_size", "batch_count")]
    assert axis_names() == [*flagged, "prompt-sr", "lora-scale"]
    assert {"steps", "cfg-scale", "sampler", "seed", "negative-prompt"} <= set(flagged)
    assert make_axis("cfg_scale", "1,2").field == "cfg_scale"      # the field name works too


@pytest.mark.parametrize("spec, values", [
    ("steps=10,20,30", (10, 20, 30)),
    ("steps=10-30 (+10)", (10, 20, 30)),
    ("steps=10-30 [3]", (10, 20, 30)),
    ("steps=1-4", (1, 2, 3, 4)),
    ("steps=5-1", (5, 4, 3, 2, 1)),
    ("steps=30-10 (-10), 5", (30, 20, 10, 5)),
    ("cfg-scale=1, 4,7.5", (1.0, 4.0, 7.5)),
    ("cfg-scale=0-1 (+0.25)", (0.0, 0.25, 0.5, 0.75, 1.0)),
    ("cfg-scale=1-2 [3]", (1.0, 1.5, 2.0)),
    ("sampler=Euler a,DPM++ 2M Karras", ("Euler a", "DPM++ 2M Karras")),
    ('negative-prompt="green, square",', ("green, square",)),
    ("prompt-sr=red,green", ("red", "green")),
])
def test_axis_values_and_ranges(spec, values):
    axis = parse_axis(spec)
    assert axis.values == values and all(type(v) is type(w) for v, w in zip(axis.values, values))
    assert len(axis.labels) == len(values)


@pytest.mark.parametrize("spec, message", [
    ("colour=1,2", "unknown grid axis 'colour'; allowed axes: negative-prompt, steps, cfg-scale"),
    ("steps", "a grid axis is NAME=VALUES"),
    ("steps=abc", "grid axis steps: 'abc' is not an integer"),
    ("steps=1.5", "is not an integer"),
    ("cfg-scale=1,x", "grid axis cfg-scale: 'x' is not a number"),
    ("steps=1-10 (+0)", "must be non-zero"),
    ("steps=1-10 (-1)", "point from start to end"),
    ("steps=1-1000", "has 1000 values; at most 100"),
    ("steps=", "has no values"),
])
def test_bad_axes_one_line(spec, message):
    with pytest.raises(ConfigError) as err:
        parse_axis(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kw, message", [
    (dict(x="steps=0,2"), "grid cell steps=0: steps must be between 1 and 1000, got 0"),
    (dict(x="sampler=Euler,Nope"), "grid cell sampler=Nope: unknown sampler 'Nope'"),
    (dict(x="steps=2,3", y="steps=4"), "a grid axis is given twice"),
    (dict(x="strength=0.5"), "the strength axis is img2img's"),
    (dict(x="lora-scale=0,1"), "the lora-scale axis scales the grid's LoRA files"),
    (dict(x="prompt-sr=square,star"), "prompt-sr: 'square' (its first value) is not in the prompt"),
    (dict(y="steps=2"), "give the x axis first"),
])
def test_bad_grids_refused_before_sampling(kw, message):
    class NoPipe:
        def generate(self, *a, **k):
            raise AssertionError("sampled before the checks")

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        xyz_grid(NoPipe(), BASE, **kw)


def test_2x2_grid_equals_plain_generations(pipe):
    events = []
    result = xyz_grid(pipe, BASE, ("steps", [2, 3]), "cfg-scale=1,4", callback=events.append, scale=2)
    assert [(c.x, c.y) for c in result.cells] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    for cell in result.cells:
        steps, cfg = (2, 3)[cell.x], (1.0, 4.0)[cell.y]
        plain = pipe.generate(replace(BASE, steps=steps, cfg_scale=cfg)).images[0]
        assert np.array_equal(arr(plain), arr(result.image(cell.x, cell.y)))
        assert cell.result.settings[0]["steps"] == steps and cell.result.settings[0]["seed"] == BASE.seed
    assert [e.step for e in events] == list(range(10)) and {e.total for e in events} == {10}
    # layout: two 32 px cells each way, a label strip on top and a label margin on the left
    side = 2 * pipe.native_size
    grid = arr(result.grid)
    top, left = grid.shape[0] - 2 * side, grid.shape[1] - 2 * side
    assert 8 <= top <= 30 and 20 <= left <= 120 and result.grids == [result.grid]
    assert np.array_equal(grid[top:top + side, left:left + side], arr(result.image(0, 0).resize((side, side), 0)))
    for strip in (grid[:top, left:left + side], grid[:top, left + side:], grid[top:top + side, :left],
                  grid[top + side:, :left]):
        assert strip.max() - strip.min() > 100        # text drawn in every label strip
    assert not np.array_equal(grid[:top, left:left + side], grid[:top, left + side:])   # "steps: 2" vs "steps: 3"


def test_z_axis_seeds_and_prompt_sr(pipe):
    result = xyz_grid(pipe, BASE, "prompt-sr=red,green", z="cfg-scale=1,3", vary_seeds=True, scale=1)
    assert len(result.grids) == 2 and result.grid.width > sum(g.width for g in result.grids)
    assert result.grid.height > result.grids[0].height                 # the Z labels above
    prompts = [c.config.prompt for c in result.cells]
    assert prompts == ["a red circle on a blue background", "a green circle on a blue background"] * 2
    assert [c.config.seed for c in result.cells] == [3, 4, 5, 6]
    same = xyz_grid(pipe, BASE, "seed=7,7,8", scale=1)
    assert np.array_equal(arr(same.image(0)), arr(same.image(1))) and not np.array_equal(arr(same.image(0)),
                                                                                        arr(same.image(2)))


def test_lora_scale_axis(pipe, lora_file):
    before = {k: v.clone() for k, v in pipe.c.unet.state_dict().items()}
    result = xyz_grid(pipe, BASE, "lora-scale=0,1", loras=[lora_file], scale=1)
    assert pipe.loras == [] and all(torch_close(before[k], v) for k, v in pipe.c.unet.state_dict().items())
    assert np.abs(arr(result.image(0)) - arr(pipe.generate(BASE).images[0])).max() <= 1
    with pipe_lora(pipe, lora_file, 1.0):
        assert np.abs(arr(result.image(1)) - arr(pipe.generate(BASE).images[0])).max() <= 1
    assert result.cells[1].result.settings[0]["loras"][0]["scale"] == 1.0


def torch_close(a, b):
    import torch

    return torch.allclose(a, b, atol=1e-6)


class pipe_lora:
    def __init__(self, pipe, path, scale):
        self.handle = pipe.load_lora(path, scale)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_save_grid_numbers_and_metadata(pipe, tmp_path):
    result = xyz_grid(pipe, BASE, "steps=2,3", z="cfg-scale=1,2", scale=1)
    paths = save_grid(result, tmp_path)
    assert [p.name for p in paths] == ["00000-3.png", "00001-3.png", "00002-3.png", "00003-3.png",
                                       "grid-00004.png", "grid-00005.png", "grid-00006.png"]
    cell = read_png_metadata(paths[3])
    assert cell["params"]["Steps"] == 3 and cell["params"]["CFG scale"] == 2.0
    whole = read_png_metadata(paths[-1])["settings"]
    assert whole["xyz"] == {"x": {"axis": "steps", "values": [2, 3]}, "z": {"axis": "cfg-scale", "values": [1.0, 2.0]}}
    assert whole["grid_of"] == [p.name for p in paths[:4]]
    assert read_png_metadata(paths[5])["settings"]["grid_of"] == ["00002-3.png", "00003-3.png"]
    again = save_grid(result, tmp_path)                    # a second run never replaces the first
    assert again[0].name == "00007-3.png" and paths[0].read_bytes() != b""


def test_cli_grid(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["grid", "--x", "steps=2,3", "--y", "cfg-scale=1,4", "a red circle", "--model", str(tiny_model_dir),
                 "--seed", "5", "--sampler", "Euler", "--out", str(out)])
    written = capsys.readouterr().out.split()
    assert code == 0 and [p.rsplit("/", 1)[1] for p in written] == [
        "00000-5.png", "00001-5.png", "00002-5.png", "00003-5.png", "grid-00004.png"]
    pipe = Pipeline.load(tiny_model_dir)
    plain = pipe.generate(GenerationConfig("a red circle", steps=3, cfg_scale=4.0, seed=5, sampler="Euler"))
    from PIL import Image

    assert np.array_equal(arr(Image.open(written[3])), arr(plain.images[0]))


@pytest.mark.parametrize("argv, message", [
    (["--x", "color=red"], "sdlab: error: unknown grid axis 'color'; allowed axes: negative-prompt, steps,"),
    (["--x", "steps=2", "--y", "cfg-scale=one"], "sdlab: error: grid axis cfg-scale: 'one' is not a number"),
])
def test_cli_grid_errors(capsys, tiny_model_dir, tmp_path, argv, message):
    code = main(["grid", *argv, "a red circle", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
