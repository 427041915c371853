"""What a personalized model learned, read by the shapes-world oracle.

- detection: share of samples of "a <concept>" whose main object has the concept's
  attributes (e.g. shape "heart", or fill "striped");
- fidelity: share of "a red <concept>" / "a <concept> on the left" samples that keep the
  requested colour / position, with and without the concept, and of "a red <concept> on the
  left" that have all three;
- drift (DreamBooth's "language drift", Ruiz et al. 2023): on class prompts, the tuned
  model's oracle accuracy next to the base model's, and how often the two models, given the
  same seed, draw objects the oracle reads alike;
- adoption (a fine-tune on a style or data set, no token): the world's own captions with the
  concept's attributes put in ("a large red striped circle on the left ..."), how often the
  samples show them, and how often plain captions already do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..config import GenerationConfig
from ..world import oracle
from ..world.captions import full_caption
from ..world.prompt_sets import prompt_set
from ..world.metrics import accuracy
from ..world.render import render
from ..world.scene import single_object_scene
from ..world.spec import COLORS, LARGE_ONLY_FILLS, POSITIONS

ATTRS = ("shape", "color", "fill", "position", "size")


@dataclass(frozen=True)
class Probe:
    """A prompt and the attributes its samples' main object should have."""

    prompt: str
    target: dict


def sample(pipe, prompt: str, n: int, seed: int = 0, steps: int = 20, cfg_scale: float = 7.5, batch: int = 8):
    cfg = GenerationConfig(prompt, steps=steps, cfg_scale=cfg_scale, seed=seed, batch_size=min(batch, n),
                           batch_count=-(-n // min(batch, n)))
    return pipe.generate(cfg).images[:n]


def hits(images, target: dict) -> list[bool]:
    """Per image: does the oracle's main object have every attribute in `target`?"""
    out = []
    for im in images:
        main = oracle.read(im).main
        out.append(main is not None and all(getattr(main, k) == v for k, v in target.items()))
    return out


def rate(images, target: dict) -> float:
    h = hits(images, target)
    return sum(h) / max(len(h), 1)


def concept_probes(token: str, concept: dict, color: str = "red", position: str = "left") -> dict[str, Probe]:
    """The standard probes for a concept token (e.g. "<my-shape>", {"shape": "heart"})."""
    return {"detection": Probe(f"a {token}", concept),
            "color": Probe(f"a {color} {token}", {"color": color}),
            "color+concept": Probe(f"a {color} {token}", {**concept, "color": color}),
            "position": Probe(f"a {token} on the {position}", {"position": position}),
            "position+concept": Probe(f"a {token} on the {position}", {**concept, "position": position}),
            "color+position+concept": Probe(f"a {color} {token} on the {position}",
                                            {**concept, "color": color, "position": position})}


def concept_report(pipe, probes: dict[str, Probe], n: int, seed: int = 0, steps: int = 20,
                   cfg_scale: float = 7.5) -> tuple[dict[str, float], dict]:
    """Rates per probe (samples shared between probes with the same prompt) and the images."""
    images: dict[str, list] = {}
    for probe in probes.values():
        if probe.prompt not in images:
            images[probe.prompt] = sample(pipe, probe.prompt, n, seed, steps, cfg_scale)
    return {name: rate(images[p.prompt], p.target) for name, p in probes.items()}, images


def class_probes(shapes=("circle", "square", "triangle", "star"), colors=("red", "blue")) -> list[Probe]:
    return [Probe(f"a {c} {s}", {"shape": s, "color": c}) for s in shapes for c in colors]


def drift(base_pipe, tuned_pipe, probes: list[Probe], n: int, seed: int = 0, steps: int = 20,
          cfg_scale: float = 7.5) -> dict[str, float]:
    """Class-prompt accuracy of both models and their same-seed oracle agreement."""
    acc_b, acc_t, agree, total = 0, 0, 0, 0
    for probe in probes:
        ib = sample(base_pipe, probe.prompt, n, seed, steps, cfg_scale)
        it = sample(tuned_pipe, probe.prompt, n, seed, steps, cfg_scale)
        acc_b += sum(hits(ib, probe.target))
        acc_t += sum(hits(it, probe.target))
        for a, b in zip(ib, it):
            ma, mb = oracle.read(a).main, oracle.read(b).main
            agree += (ma is None and mb is None) or (ma is not None and mb is not None and
                                                   (ma.shape, ma.color) == (mb.shape, mb.color))
        total += n
    return {"base_accuracy": acc_b / total, "tuned_accuracy": acc_t / total,
            "accuracy_drop": (acc_b - acc_t) / total, "same_seed_agreement": agree / total}


def concept_images(n: int, shape: str = "heart", fill: str = "solid", seed: int = 0):
    """`n` renders of a (reserved) concept in varied colours, sizes, positions, backgrounds."""
    rng = random.Random(seed)
    colors = tuple(COLORS)
    out = []
    for _ in range(n):
        color = rng.choice(colors)
        bg = rng.choice([c for c in colors if c != color])
        scene = single_object_scene(shape, color, rng.choice(("small", "large")), rng.choice(tuple(POSITIONS)),
                                    bg, rng, fill=fill)
        out.append(render(scene))
    return out


def world_scenes(concept: dict, n: int) -> tuple[list, list]:
    """`n` single-object scenes of the world's evaluation prompts ("seen"), and the same scenes
    with the concept's attributes (e.g. fill "striped") put into their object."""
    def fits(scene) -> bool:      # a solid single object the concept can go into (striped: large only)
        obj = scene.objects[0] if len(scene.objects) == 1 else None
        return bool(obj) and obj.fill == "solid" and (concept.get("fill") not in LARGE_ONLY_FILLS
                                                      or obj.size == "large")

    plain = [s for s in prompt_set("seen", 40 * n) if fits(s)][:n]
    return plain, [replace(s, objects=(replace(s.objects[0], **concept),)) for s in plain]


def world_report(pipe, concept: dict, n: int, seed: int = 0, steps: int = 20, cfg_scale: float = 7.5,
                 sampler: str = "Euler a") -> tuple[dict[str, float], list, list[str]]:
    """Adoption of a concept without a token (a fine-tune on a style or data set): the full
    captions of `world_scenes` with the concept in them, prompt i with seed `seed` + i.
    adoption: the oracle reads the concept's attributes; all_attributes: and every other one
    the caption names; plain_adoption: the concept shows in samples of the captions without it
    (how far the plain vocabulary moved). Returns (rates, the concept samples, their prompts)."""
    plain, styled = world_scenes(concept, n)

    def draw(scenes):
        return [pipe.generate(GenerationConfig(full_caption(s), seed=seed + i, steps=steps, cfg_scale=cfg_scale,
                                               sampler=sampler)).images[0] for i, s in enumerate(scenes)]

    images, plain_images = draw(styled), draw(plain)
    rates = {"adoption": accuracy(styled, images, tuple(concept))["all"],
             "all_attributes": accuracy(styled, images)["all"],
             "plain_adoption": accuracy(styled, plain_images, tuple(concept))["all"]}
    return rates, images, [full_caption(s) for s in styled]
