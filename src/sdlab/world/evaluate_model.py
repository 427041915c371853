"""Oracle evaluation of a text-to-image model on the shapes world.

Prompt sets: "seen" (single named objects whose colour/shape pair was in training),
"held_out" (pairs never rendered in training: composition) and "two" (two objects, related
or counted: binding). Each sample gets a fresh scene's full caption and its own seed;
scores are per-attribute accuracies.
"""

from __future__ import annotations

import random
import time

from ..config import GenerationConfig
from .captions import full_caption
from .metrics import accuracy
from .scene import SceneSampler

PROMPT_SETS = {"seen": SceneSampler(split="train", two_object_prob=0.0, generic_prob=0.0),
               "held_out": SceneSampler(split="held_out", two_object_prob=0.0),
               "two": SceneSampler(split="train", two_object_prob=1.0, generic_prob=0.0)}
SCORED = ("background", "count", "color", "shape", "size", "position", "fill")


def prompt_set(name: str, n: int, seed: int = 2024):
    rng = random.Random(seed)
    return [PROMPT_SETS[name].sample(rng) for _ in range(n)]


def evaluate(pipe, n: int = 64, steps: int = 25, cfgs=(7.5, 1.0), sampler: str = "Euler a",
             batch: int = 16, sets=tuple(PROMPT_SETS)) -> dict:
    report = {"n": n, "steps": steps, "sampler": sampler, "results": {}}
    for name in sets:
        scenes = prompt_set(name, n)
        for cfg in cfgs:
            start, images = time.time(), []
            for i in range(0, n, batch):
                for j, scene in enumerate(scenes[i:i + batch]):
                    config = GenerationConfig(full_caption(scene), steps=steps, cfg_scale=cfg, sampler=sampler,
                                              seed=10_000 + i + j)
                    images += pipe.generate(config).images
            acc = accuracy(scenes, images, attributes=SCORED)
            acc["seconds_per_image"] = (time.time() - start) / n
            report["results"][f"{name}@cfg{cfg:g}"] = {k: round(v, 4) for k, v in acc.items()}
    return report
