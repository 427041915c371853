"""Oracle evaluation of a text-to-image model on the shapes world (`sdlab world eval-model`).

Each sample of a prompt set (sdlab.world.prompt_sets: seen, held_out, two) gets a fresh scene's
full caption and its own seed; scores are per-attribute accuracies.
"""

from __future__ import annotations

import time

from ..config import GenerationConfig
from ..world.captions import full_caption
from ..world.metrics import accuracy
from ..world.prompt_sets import PROMPT_SETS, SCORED, prompt_set


def evaluate(pipe, n: int = 64, steps: int = 25, cfgs=None, sampler: str = "Euler a",
             batch: int = 16, sets=tuple(PROMPT_SETS), guidance_rescale: float = 0.0) -> dict:
    """`cfgs` default: Stable Diffusion's 7.5, no guidance (1) and the model's recommended scale;
    `guidance_rescale` is CFG rescale's phi (Lin et al. 2023), 0 = plain guidance."""
    if cfgs is None:
        cfgs = tuple(dict.fromkeys((7.5, 1.0, float(pipe.generation_defaults["cfg_scale"]))))
    report = {"n": n, "steps": steps, "sampler": sampler, "guidance_rescale": guidance_rescale, "results": {}}
    for name in sets:
        scenes = prompt_set(name, n)
        for cfg in cfgs:
            start, images = time.time(), []
            for i in range(0, n, batch):
                for j, scene in enumerate(scenes[i:i + batch]):
                    config = GenerationConfig(full_caption(scene), steps=steps, cfg_scale=cfg, sampler=sampler,
                                              seed=10_000 + i + j, guidance_rescale=guidance_rescale)
                    images += pipe.generate(config).images
            acc = accuracy(scenes, images, attributes=SCORED)
            acc["seconds_per_image"] = (time.time() - start) / n
            report["results"][f"{name}@cfg{cfg:g}"] = {k: round(v, 4) for k, v in acc.items()}
    return report
