"""The public pipeline on a tiny random model: our loop vs diffusers, seeds, img2img, metadata."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError
from sdlab.io.metadata import parse_infotext, read_png_metadata
from sdlab.io.outputs import save_result


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def test_native_size_and_batch(pipe):
    res = pipe.generate(GenerationConfig("a red circle", steps=3, seed=5, batch_size=2, batch_count=2))
    assert pipe.native_size == 16
    assert [im.size for im in res.images] == [(16, 16)] * 4
    assert res.seeds == [5, 6, 7, 8]


def test_same_seed_same_image_and_batch_position_does_not_matter(pipe):
    cfg = GenerationConfig("a blue star", steps=4, seed=11, sampler="Euler a", batch_size=3)
    a = pipe.generate(cfg).images
    b = pipe.generate(cfg).images
    alone = pipe.generate(GenerationConfig("a blue star", steps=4, seed=12, sampler="Euler a")).images[0]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert np.array_equal(np.asarray(a[1]), np.asarray(alone))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


@pytest.mark.parametrize("cfg_scale", [1.0, 7.5])
def test_loop_matches_diffusers_pipeline(pipe, cfg_scale):
    """Our Euler loop and diffusers' StableDiffusionPipeline + EulerDiscreteScheduler agree."""
    steps, seed = 8, 3
    config = GenerationConfig("a large green square on a white background", steps=steps, cfg_scale=cfg_scale,
                              sampler="Euler", seed=seed)
    ours = pipe.sample_latents(config, [seed], 16, 16)
    ref_pipe = pipe.c.to_pipeline()
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    ref = ref_pipe(config.prompt, num_inference_steps=steps, guidance_scale=cfg_scale, latents=noise,
                   negative_prompt="", output_type="latent", height=16, width=16).images
    scale = ref.abs().max().item()
    assert torch.allclose(ours, ref, atol=2e-3 * scale), (ours - ref).abs().max()


def test_img2img_strength_edges(pipe):
    init = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    zero = pipe.generate(GenerationConfig("x", steps=5, strength=0.0, seed=1), init_image=init).images[0]
    roundtrip = pipe.decode(pipe.encode_image(torch.full((1, 3, 16, 16), 200 / 127.5 - 1)))
    expect = ((roundtrip.clamp(-1, 1) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(zero), expect)
    steps = []
    pipe.generate(GenerationConfig("x", steps=10, strength=0.5, seed=1), init_image=init,
                  callback=lambda e: steps.append(e.step))
    assert steps == list(range(5))
    with pytest.raises(ConfigError, match="strength"):
        GenerationConfig("x", strength=1.5)


def test_png_metadata_a1111_and_json(pipe, tmp_path):
    cfg = GenerationConfig("a small cyan cross", negative_prompt="black", steps=3, seed=42, batch_size=2)
    paths = save_result(pipe.generate(cfg), tmp_path)
    assert [p.name for p in paths] == ["00000-42.png", "00001-43.png", "grid-00001.png"]
    meta = read_png_metadata(paths[1])
    prompt, negative, params = parse_infotext(meta["parameters"])
    assert (prompt, negative) == ("a small cyan cross", "black")
    assert params["Seed"] == 43 and params["Steps"] == 3 and params["Sampler"] == "Euler a"
    assert params["Size"] == "16x16" and params["CFG scale"] == 7.5 and len(params["Model hash"]) == 10
    assert meta["settings"]["seed"] == 43 and meta["settings"]["mode"] == "txt2img"
    assert Image.open(paths[2]).size == (32, 16)


def test_generation_config_errors():
    with pytest.raises(ConfigError, match="unknown sampler 'Eulerx'.*DPM\\+\\+ 2M Karras"):
        GenerationConfig("x", sampler="Eulerx")
    with pytest.raises(ConfigError, match="width must be a multiple of 8"):
        GenerationConfig("x", width=63)
    with pytest.raises(ConfigError, match="steps must be between 1 and 1000, got -3"):
        GenerationConfig("x", steps=-3)
    with pytest.raises(ConfigError, match="cfg_scale must be a number"):
        GenerationConfig("x", cfg_scale="high")
