"""Deep Shrink (sdlab.sampling.deep_shrink): past a UNet's training size its deep layers run at that
size; at or below it, and outside the block, the UNet is untouched. On the tiny random model:
the generate path, its metadata and the refusals."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from sdlab import GenerationConfig, Pipeline
from sdlab.control import Control
from sdlab.control.loading import controlnet_from_unet
from sdlab.errors import ConfigError
from sdlab.sampling.deep_shrink import deep_shrink, shrunk_side


def two_block_unet():
    """The tiny model's layout: one downsampler."""
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
                                cross_attention_dim=32, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def sd_layout_unet():
    """Stable Diffusion 1.x's layout (four blocks, three downsamplers), shrunk."""
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
                                norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2).eval()


def run(unet, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(1, 4, side, side, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=cond).sample


def sizes_seen_by(block) -> list:
    seen = []
    block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[-2:])),
        with_kwargs=True)
    return seen


@pytest.mark.parametrize("make", [two_block_unet, sd_layout_unet])
def test_the_deep_layers_run_at_the_trained_size(make):
    unet = make()
    trained = sizes_seen_by(unet.down_blocks[1])
    run(unet, 8)
    with deep_shrink(unet, 2):
        out = run(unet, 16)
    assert out.shape[-2:] == (16, 16) and torch.isfinite(out).all()
    assert trained[1] == trained[0] == (4, 4)       # what the second block sees of the trained 8x8 latents


@pytest.mark.parametrize("make", [two_block_unet, sd_layout_unet])
def test_the_unet_is_untouched_at_its_size_and_after_the_block(make):
    unet = make()
    small, large = run(unet, 8), run(unet, 16)
    with deep_shrink(unet, 2):
        assert torch.equal(run(unet, 8), small)
        shrunk = run(unet, 16)
    assert not torch.allclose(shrunk, large, atol=1e-3)
    assert torch.equal(run(unet, 16), large)


def test_off_and_refused_factors():
    unet = two_block_unet()
    large = run(unet, 16)
    for off in (0, 1):
        with deep_shrink(unet, off):
            assert torch.equal(run(unet, 16), large)
    for bad in (0.5, 5):
        with pytest.raises(ConfigError, match="deep_shrink must be"):
            GenerationConfig("a red circle", deep_shrink=bad)


def test_shrunk_sides_stay_halvable():
    assert shrunk_side(32, 2, 4) == 16 and shrunk_side(24, 1.5, 4) == 16 and shrunk_side(12, 4, 4) == 4
    assert shrunk_side(20, 2, 1) == 10


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def test_generate_past_the_trained_size_records_it(pipe):
    side = pipe.c.unet.config.sample_size * pipe.vae_scale * 2
    config = GenerationConfig("a red circle", steps=3, seed=2, width=side, height=side, deep_shrink=2)
    result = pipe.generate(config)
    assert result.images[0].size == (side, side)
    assert "Deep Shrink: 2" in result.infotexts[0] and result.settings[0]["deep_shrink"] == 2
    plain = pipe.generate(GenerationConfig("a red circle", steps=3, seed=2, width=side, height=side))
    assert "Deep Shrink" not in plain.infotexts[0] and "deep_shrink" not in plain.settings[0]
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_refused_with_controlnet(pipe):
    torch.manual_seed(0)
    net = controlnet_from_unet(pipe.c.unet, conditioning_embedding_out_channels=(8, 8)).eval()
    control = Control(Image.new("RGB", (16, 16)), net)
    with pytest.raises(ConfigError, match="deep_shrink cannot be combined with ControlNet"):
        pipe.generate(GenerationConfig("a red circle", steps=2, deep_shrink=2), controls=[control])


def test_with_deep_cache_the_cached_features_keep_the_full_size(tiny_model_dir):
    """DeepCache caches the input of the last up block, which Deep Shrink has already scaled back."""
    from sdlab.models.speed import SpeedOptions

    config = GenerationConfig("a red circle", steps=8, seed=5, cfg_scale=4.0, sampler="Euler", deep_shrink=2)
    side = 2 * 8 * 2                    # twice the tiny UNet's 8x8 latents, VAE scale 2
    ref = Pipeline.load(tiny_model_dir).sample_latents(config, [5], side, side)
    cached = Pipeline.load(tiny_model_dir, speed=SpeedOptions(deep_cache=2))
    deep = sizes_seen_by(cached.c.unet.down_blocks[1])
    out = cached.sample_latents(config, [5], side, side)
    assert cached.c.unet.full_calls == 4 and torch.isfinite(out).all()
    assert set(deep) == {(4, 4)}        # the trained 8x8 latents' size there, on every full call
    assert 0 < ((out - ref).norm() / ref.norm()).item() < 0.5
