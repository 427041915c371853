"""CLIP skip (A1111's CLIP_stop_at_last_layers): 1 = the last layer, N = the N-th layer from the end
through the text encoder's final layer norm."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError
from sdlab.io.metadata import parse_infotext


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _direct(pipe, prompt: str, skip: int) -> torch.Tensor:
    """transformers' CLIPTextModel on its own: hidden_states[-skip] through final_layer_norm."""
    enc = pipe.c.text_encoder
    ids = pipe.tokenize([prompt])
    out = enc(ids, output_hidden_states=True)
    if skip == 1:
        return out.last_hidden_state
    norm = getattr(enc, "text_model", enc).final_layer_norm
    return norm(out.hidden_states[-skip])


@pytest.mark.parametrize("skip", [1, 2])
def test_encoding_is_the_layer_from_the_end(pipe, skip):
    with torch.no_grad():
        got = pipe.encode_prompt(["a red circle on a blue background"], clip_skip=skip)
        want = _direct(pipe, "a red circle on a blue background", skip)
    torch.testing.assert_close(got, want)


def test_skip_2_differs_from_1_and_last_hidden_state_is_normed(pipe):
    with torch.no_grad():
        one = pipe.encode_prompt(["a red circle"])
        two = pipe.encode_prompt(["a red circle"], clip_skip=2)
        states = pipe.c.text_encoder(pipe.tokenize(["a red circle"]), output_hidden_states=True).hidden_states
    assert not torch.allclose(one, two)
    assert not torch.allclose(two, states[-2])           # the final layer norm is applied


def test_bounds(pipe):
    with pytest.raises(ConfigError, match="clip_skip must be between 1 and 12"):
        GenerationConfig("x", clip_skip=0)
    layers = pipe.c.text_encoder.config.num_hidden_layers
    with pytest.raises(ConfigError, match=f"clip_skip must be an integer from 1 to {layers}"):
        pipe.generate(GenerationConfig("x", steps=1, clip_skip=layers + 1))


def test_generation_uses_it_and_infotext_round_trips(pipe):
    base = dict(seed=2, steps=4)
    one = pipe.generate(GenerationConfig("a red circle", **base))
    two = pipe.generate(GenerationConfig("a red circle", clip_skip=2, **base))
    assert not np.array_equal(np.asarray(one.images[0]), np.asarray(two.images[0]))
    assert "Clip skip" not in parse_infotext(one.infotexts[0])[2] and "clip_skip" not in one.settings[0]
    assert parse_infotext(two.infotexts[0])[2]["Clip skip"] == 2
    assert two.settings[0]["clip_skip"] == 2
    again = pipe.generate(GenerationConfig(**{k: v for k, v in two.settings[0].items()
                                              if k in GenerationConfig.field_names()}))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(two.images[0]))


def test_cli_flag(tiny_model_dir, tmp_path):
    from sdlab.cli.main import main
    from sdlab.io.metadata import read_png_metadata

    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "1",
                 "--clip-skip", "2", "--out", str(tmp_path)]) == 0
    (png,) = tmp_path.glob("*.png")
    assert read_png_metadata(png)["params"]["Clip skip"] == 2


# --- mix, interpolate, attend and edit encode as generate does ----------------------------------------

def _arr(im) -> np.ndarray:
    return np.asarray(im, np.int16)


def test_mix_overrides_encode_with_clip_skip(pipe):
    from sdlab.text.embedding_ops import encode_with_overrides, mix

    prompt = "a red circle on a blue background"
    same = encode_with_overrides(pipe, prompt, {"circle": "circle"}, clip_skip=2)
    assert torch.equal(same, pipe.encode_prompt([prompt], clip_skip=2))
    mixed = encode_with_overrides(pipe, prompt, {"circle": mix({"circle": 1, "square": 1})}, clip_skip=2)
    assert not torch.allclose(mixed, encode_with_overrides(pipe, prompt, {"circle": mix({"circle": 1, "square": 1})}))
    with pytest.raises(ConfigError, match="clip_skip must be an integer from 1 to 2"):
        encode_with_overrides(pipe, prompt, {"circle": "square"}, clip_skip=3)


def test_interpolate_encodes_with_the_configs_clip_skip(pipe):
    from sdlab.text.interpolation import interpolate

    a, b = "a red circle", "a green star"
    config = GenerationConfig("x", steps=2, cfg_scale=2.0, clip_skip=2)
    result = interpolate(pipe, a, b, n=2, seed=4, config=config)
    assert torch.equal(result.cond[0], pipe.encode_prompt([a], 2)[0])
    assert torch.equal(result.cond[-1], pipe.encode_prompt([b], 2)[0])
    first = pipe.generate(GenerationConfig(a, steps=2, cfg_scale=2.0, seed=4, clip_skip=2)).images[0]
    assert np.abs(_arr(result.images[0]) - _arr(first)).max() <= 1
    with pytest.raises(ConfigError, match="clip_skip must be an integer from 1 to 2"):
        interpolate(pipe, a, b, n=2, config=GenerationConfig("x", steps=1, clip_skip=3))


def test_attend_samples_and_maps_with_clip_skip(pipe):
    from sdlab.attention.store import attend

    config = GenerationConfig("a red circle", steps=2, seed=3, clip_skip=2)
    result, maps = attend(pipe, config)
    assert np.array_equal(_arr(result.images[0]), _arr(pipe.generate(config).images[0]))
    assert parse_infotext(result.infotexts[0])[2]["Clip skip"] == 2
    _, maps_1 = attend(pipe, GenerationConfig("a red circle", steps=2, seed=3))
    assert not torch.allclose(maps, maps_1)


def test_edit_source_row_is_the_plain_generation_at_its_clip_skip(pipe):
    from sdlab.attention.edit import edit

    config = GenerationConfig("a red circle on a blue background", steps=3, seed=11, clip_skip=2)
    r = edit(pipe, config.prompt, "a red square on a blue background", config=config)
    assert np.abs(_arr(r.source_image) - _arr(pipe.generate(config).images[0])).max() <= 2
    keyword = edit(pipe, config.prompt, "a red square on a blue background", steps=3, seed=11, clip_skip=2)
    assert np.array_equal(_arr(keyword.target_image), _arr(r.target_image))
    plain = edit(pipe, config.prompt, "a red square on a blue background", steps=3, seed=11)
    assert not np.array_equal(_arr(plain.target_image), _arr(r.target_image))
    with pytest.raises(ConfigError, match="clip_skip must be an integer from 1 to 2"):
        edit(pipe, config.prompt, "a red square on a blue background", steps=1, clip_skip=3)


CLI_COMMANDS = {
    "mix": ["mix", "a red {}", "circle=0.5", "square=0.5"],
    "interpolate": ["interpolate", "a red circle", "a green star", "--frames", "2"],
    "attend": ["attend", "a red circle", "--res", "8"],
    "edit": ["edit", "a red circle", "a red square"],
}


@pytest.mark.parametrize("command", sorted(CLI_COMMANDS))
def test_cli_commands_take_clip_skip_and_check_it(command, tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main
    from sdlab.io.metadata import read_png_metadata

    argv = [*CLI_COMMANDS[command], "--model", str(tiny_model_dir), "--steps", "1", "--seed", "2"]
    images = []
    for skip in ("1", "2"):
        out = tmp_path / (f"sweep{skip}.png" if command == "interpolate" else f"out{skip}")
        assert main([*argv, "--clip-skip", skip, "--out", str(out)]) == 0
        images.append(capsys.readouterr().out.split()[0])
    assert not np.array_equal(_arr(Image.open(images[0])), _arr(Image.open(images[1])))
    if command in ("mix", "edit"):                  # attend's image and interpolate's strip carry no metadata
        assert read_png_metadata(images[1])["params"]["Clip skip"] == 2
    for bad, message in (("0", "clip_skip must be between 1 and 12"),
                         ("3", "clip_skip must be an integer from 1 to 2")):  # the tiny encoder's 2 layers
        assert main([*argv, "--clip-skip", bad, "--out", str(tmp_path / f"bad{bad}.png")]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("sdlab: error:") and message in err and "Traceback" not in err


@pytest.fixture
def client(pipe, tmp_path):
    from fastapi.testclient import TestClient

    from sdlab.server.app import create_app
    from sdlab.server.settings import ServerSettings

    app = create_app(ServerSettings(output_dir=tmp_path / "out"), load_pipeline=lambda device: pipe)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


@pytest.mark.parametrize("route, body", [("/api/attend", {"prompt": "a red circle"}),
                                         ("/api/edit", {"source": "a red circle", "target": "a red square"})])
def test_studio_attend_and_edit_jobs_take_clip_skip(client, route, body):
    from server_util import wait_job

    r = client.post(route, json={**body, "steps": 1, "seed": 1, "clip_skip": 2})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    image = job["result"]["image" if route == "/api/attend" else "source"]
    assert parse_infotext(image["infotext"])[2]["Clip skip"] == 2
    r = client.post(route, json={**body, "steps": 1, "clip_skip": 13})
    assert r.status_code == 422 and "clip_skip" in r.text
