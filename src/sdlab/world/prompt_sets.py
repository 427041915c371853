"""The scenes a model evaluation draws its prompts from, and the attributes it scores.

"seen": single named objects whose colour/shape pair was in training; "held_out": pairs never
rendered in training (composition); "two": two objects, related or counted (binding).
"""

from __future__ import annotations

import random

from .scene import SceneSampler

PROMPT_SETS = {"seen": SceneSampler(split="train", two_object_prob=0.0, generic_prob=0.0),
               "held_out": SceneSampler(split="held_out", two_object_prob=0.0),
               "two": SceneSampler(split="train", two_object_prob=1.0, generic_prob=0.0)}
SCORED = ("background", "count", "color", "shape", "size", "position", "fill")


def prompt_set(name: str, n: int, seed: int = 2024):
    """`n` scenes of prompt set `name`, the same for the same seed."""
    rng = random.Random(seed)
    return [PROMPT_SETS[name].sample(rng) for _ in range(n)]
