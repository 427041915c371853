"""CLIP skip (A1111's CLIP_stop_at_last_layers): 1 = the last layer, N = the N-th layer from the end
through the text encoder's final layer norm."""

import numpy as np
import pytest
import torch

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
