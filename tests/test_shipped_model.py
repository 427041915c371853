"""The shipped shapes-world model: loads in plain diffusers, matches our loop, follows prompts."""

import random

import pytest
import torch

from sdlab import GenerationConfig, Pipeline
from sdlab.io.outputs import save_result
from sdlab.pipeline import DEFAULT_MODEL
from sdlab.world.captions import full_caption
from sdlab.recipe.evaluate import evaluate
from sdlab.world.metrics import accuracy

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").exists(), reason="no shipped model")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load()


def test_shipped_model_layout_and_size():
    names = {p.name for p in DEFAULT_MODEL.iterdir()}
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "MODEL_CARD.md"} <= names
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size < 64 * 2**20
    assert not list(DEFAULT_MODEL.rglob("*.bin")) and list(DEFAULT_MODEL.rglob("*.safetensors"))


def test_plain_diffusers_loads_and_generates():
    from diffusers import StableDiffusionPipeline

    from sdlab.world import oracle

    ref = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    image = ref("a photo of a large white square in the center on a black background", num_inference_steps=20,
                generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert oracle.read(image).background == "black"


def test_our_loop_matches_diffusers_on_shipped_model(pipe):
    steps, seed = 12, 4
    config = GenerationConfig("a large red star on the left on a blue background", steps=steps, sampler="Euler",
                              seed=seed, cfg_scale=7.5)
    ours = pipe.sample_latents(config, [seed], 64, 64)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    ref = pipe.c.to_pipeline()(config.prompt, num_inference_steps=steps, guidance_scale=7.5, latents=noise,
                               negative_prompt="", output_type="latent").images
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-3, err


def test_same_seed_gives_identical_files(pipe, tmp_path):
    cfg = GenerationConfig("a small green triangle at the top on a white background", steps=10, seed=123)
    a = save_result(pipe.generate(cfg), tmp_path / "a")[0].read_bytes()
    b = save_result(pipe.generate(cfg), tmp_path / "b")[0].read_bytes()
    assert a == b


@pytest.mark.parametrize("scale", [7.5, None], ids=["cfg7.5", "recommended"])
def test_prompt_following(pipe, scale):
    """A 24-sample slice of the model evaluation at the issue's 25 steps (fixed seeds, so
    deterministic on the CPU), at SD's CFG 7.5 and at the model's recommended scale (its
    generation_defaults.json, what a user gets by default); the slow test checks the issue's
    targets on 64 samples per set."""
    scale = scale or pipe.generation_defaults["cfg_scale"]
    report = evaluate(pipe, n=24, steps=25, cfgs=(scale,), sets=("seen",))["results"]
    guided = report[f"seen@cfg{scale:g}"]
    print(report)
    assert guided["background"] >= 0.9 and guided["color"] >= 0.9
    assert guided["shape"] >= 0.8 and guided["position"] >= 0.8 and guided["size"] >= 0.8


def test_the_shipped_model_recommends_a_guidance_scale(pipe):
    """generation_defaults.json: CFG 3, where every sampler stays within 0.10 of Euler's oracle rate
    (tests/test_samplers_reference.py); SD's 7.5 over-guides this model (MODEL_CARD.md)."""
    assert pipe.generation_defaults == {"cfg_scale": 3.0}


def test_img2img_keeps_layout_at_low_strength(pipe):
    from sdlab.world import oracle
    from sdlab.world.render import render
    from sdlab.world.scene import single_object_scene

    scene = single_object_scene("square", "yellow", "large", "left", "purple", random.Random(3))
    out = pipe.generate(GenerationConfig(full_caption(scene), steps=20, strength=0.3, seed=5),
                        init_image=render(scene)).images[0]
    assert accuracy([scene], [out])["all"] == 1.0, oracle.read(out).to_dict(with_mask=False)


@pytest.mark.slow
def test_model_targets_from_the_issue(pipe):
    """Issue targets: 64 samples per set, 25 steps, CFG 7.5."""
    r = evaluate(pipe, n=64, steps=25, cfgs=(7.5,))["results"]
    seen, held = r["seen@cfg7.5"], r["held_out@cfg7.5"]
    print(r)
    assert seen["color"] >= 0.95 and seen["background"] >= 0.95
    assert seen["shape"] >= 0.90 and seen["size"] >= 0.90 and seen["position"] >= 0.90
    assert held["all"] >= 0.70


@pytest.mark.xfail(strict=True, reason="v3's autoencoder never saw the reserved fill: its round trip reads "
                   "striped in 21 of 32 renders (issue 20; a fine-tune of the striped fill trains the decoder too)")
def test_shipped_vae_can_draw_the_reserved_fill(pipe):
    """A fine-tune can only adopt a fill style the autoencoder reproduces: the round trip of
    striped renders must still read as striped (v2: 88 % at period 12; v3: 66 %)."""
    import numpy as np

    from sdlab.world import oracle
    from sdlab.world.render import render
    from sdlab.world.scene import SceneSampler

    rng, sampler = random.Random(1), SceneSampler(fills=("striped",), two_object_prob=0.0)
    images = [render(sampler.sample(rng)) for _ in range(32)]
    x = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
    vae = pipe.c.vae
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    out = ((y.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    striped = [(r := oracle.read(o).main) is not None and r.fill == "striped" for o in out]
    assert sum(striped) / len(striped) >= 0.8, sum(striped)
