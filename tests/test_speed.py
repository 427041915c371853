"""The fast path (channels_last, fused QKV) gives the reference path's images; options validate."""

import numpy as np
import pytest

from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.models.speed import SpeedOptions
from sdlab.pipeline import Pipeline


@pytest.mark.parametrize("options, processor", [
    (SpeedOptions.fast(), "FusedAttnProcessor2_0"),
    (SpeedOptions(attention_slicing=True, vae_slicing=True), "SlicedAttnProcessor"),
])
def test_fast_and_sliced_paths_match_reference(tiny_model_dir, options, processor):
    config = GenerationConfig("a red circle", steps=5, seed=11, cfg_scale=5.0, batch_size=2)
    ref = Pipeline.load(tiny_model_dir)
    fast = Pipeline.load(tiny_model_dir, speed=options)
    assert {type(p).__name__ for p in fast.c.unet.attn_processors.values()} == {processor}
    a = ref.sample_latents(config, [11, 12], 32, 32)
    b = fast.sample_latents(config, [11, 12], 32, 32)
    assert (a - b).abs().max().item() < 1e-4
    img_a = np.asarray(ref.generate(config).images[0], dtype=int)
    img_b = np.asarray(fast.generate(config).images[0], dtype=int)
    assert np.abs(img_a - img_b).max() <= 1


def test_vae_tiling_keeps_small_images_identical(tiny_model_dir):
    config = GenerationConfig("a red circle", steps=2, seed=1)
    ref = np.asarray(Pipeline.load(tiny_model_dir).generate(config).images[0], dtype=int)
    tiled = np.asarray(Pipeline.load(tiny_model_dir, speed=SpeedOptions(vae_tiling=True)).generate(config).images[0],
                       dtype=int)
    assert np.abs(ref - tiled).max() <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"compile": "fastest"}, "compile must be one of off, default, reduce-overhead, max-autotune"),
    ({"cpu_offload": "sequential"}, "cpu_offload must be one of none, model"),
])
def test_bad_speed_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SpeedOptions(**kwargs)


def test_cpu_offload_needs_cuda(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: offload is allowed")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Pipeline.load(tiny_model_dir, speed=SpeedOptions(cpu_offload="model"))


def test_deep_cache_shallow_branch_is_exact_on_the_cached_input(tiny_model_dir):
    """Shallow pass on the same input as the full pass that filled the cache = full output."""
    import torch

    from sdlab.sampling.deepcache import DeepCacheUNet

    pipe = Pipeline.load(tiny_model_dir)
    unet = DeepCacheUNet(pipe.c.unet, interval=2)
    x = torch.randn(2, 4, 4, 4)
    ctx = pipe.encode_prompt(["a red circle", "a blue square"])
    full = unet(x, torch.tensor(500.0), encoder_hidden_states=ctx).sample
    shallow = unet(x, torch.tensor(500.0), encoder_hidden_states=ctx).sample
    assert unet.full_calls == 1 and unet.calls == 2
    assert (full - shallow).abs().max().item() < 1e-5
    unet(x, torch.tensor(900.0), encoder_hidden_states=ctx)     # timestep rose: a new loop
    assert unet.full_calls == 2 and unet.calls == 1


def test_deep_cache_in_the_loop_is_close_and_skips_calls(tiny_model_dir):
    config = GenerationConfig("a red circle", steps=8, seed=5, cfg_scale=4.0, sampler="Euler")
    ref = Pipeline.load(tiny_model_dir).sample_latents(config, [5], 32, 32)
    cached = Pipeline.load(tiny_model_dir, speed=SpeedOptions(deep_cache=2))
    out = cached.sample_latents(config, [5], 32, 32)
    assert cached.c.unet.full_calls == 4
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5
    with pytest.raises(ConfigError, match="deep_cache must be an integer >= 0"):
        SpeedOptions(deep_cache=-1)
