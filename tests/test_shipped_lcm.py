"""The shipped latent consistency model (shapes-sd-lcm, issue 22): a diffusers folder that shares
the base's text encoder, tokenizer and VAE, samples in a few steps, and reads in plain diffusers."""

import numpy as np
import pytest
import torch

from sdlab import GenerationConfig, Pipeline
from sdlab.models.shipped import SHIPPED
from sdlab.sampling.denoiser import w_conditioned
from sdlab.world.captions import full_caption
from sdlab.world.metrics import accuracy
from sdlab.world.prompt_sets import prompt_set

LCM, BASE = SHIPPED["shapes-sd-lcm"], SHIPPED["shapes-sd"]
pytestmark = pytest.mark.skipif(not (LCM / "model_index.json").exists(), reason="no shipped LCM")
PROMPT = "a large red star on the left on a blue background"


@pytest.fixture(scope="module")
def lcm():
    return Pipeline.load("shapes-sd-lcm")


def test_the_lcm_is_the_base_with_its_own_unet_and_scheduler(lcm):
    for sub in ("text_encoder", "tokenizer", "vae"):
        assert (LCM / sub).resolve() == (BASE / sub).resolve()            # shared, not a second copy
    own = sum(f.stat().st_size for f in (LCM / "unet").rglob("*") if f.is_file())
    assert own < 20 * 2**20 and not list(LCM.rglob("*.bin"))
    assert w_conditioned(lcm.c.unet) and lcm.c.scheduler_config["_class_name"] == "LCMScheduler"
    # w 2, under the base's CFG 3 that `sdlab train lcm` carries over: measured best at 4 Karras steps
    assert lcm.generation_defaults["cfg_scale"] == 2.0 < Pipeline.load().generation_defaults["cfg_scale"]


def test_plain_diffusers_takes_the_same_first_step(lcm):
    """One LCM step is the consistency function of pure noise (no re-noising): diffusers'
    LatentConsistencyModelPipeline from the same latents gives the same x0."""
    from diffusers import LatentConsistencyModelPipeline

    ref = LatentConsistencyModelPipeline.from_pretrained(LCM, safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    seed, w = 4, 3.0
    config = GenerationConfig(PROMPT, sampler="LCM", steps=1, seed=seed, cfg_scale=w)
    ours = lcm.sample_latents(config, [seed], 64, 64)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    theirs = ref(PROMPT, num_inference_steps=1, guidance_scale=w, latents=noise, output_type="latent").images
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    assert err < 1e-3, err


def test_four_steps_follow_the_prompts(lcm):
    """16 seen prompts at 4 LCM steps (one UNet pass each): the oracle reads every attribute right
    in most; benchmarks/lcm_eval.py measures the gap to the base model on 64 per set."""
    scenes = prompt_set("seen", 16)
    config = GenerationConfig("", sampler="LCM", steps=4, seed=3000, batch_size=len(scenes))
    images = lcm.generate(config, cond=lcm.encode_prompt([full_caption(s) for s in scenes])).images
    assert all(np.isfinite(np.asarray(i, dtype=float)).all() for i in images)
    assert accuracy(scenes, images)["all"] >= 0.75


def test_the_readme_command_generates(tmp_path):
    from sdlab.cli.main import main

    assert main(["generate", PROMPT, "--model", "shapes-sd-lcm", "--sampler", "LCM", "--steps", "4", "--schedule",
                 "Karras", "--seed", "1", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("*.png"))) == 1
