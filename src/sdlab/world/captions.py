"""Captions for shapes-world scenes, from varied templates with attributes sometimes left out.

A named object is always called by its shape word; an unnamed silhouette is "a shape" or
"an object", sometimes with words that describe its outline ("a spiky shape", "an object
with a hole"). Two objects are related ("a red circle to the left of a blue star") or
counted ("two red circles side by side").
"""

from __future__ import annotations

import random

from . import spec
from .scene import Scene, ShapeObject
from .silhouettes import silhouette

PREFIXES = ("a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "{}", "{}")
POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "at the top"),
    "bottom": ("at the bottom", "at the bottom"),
    "center": ("in the center", "in the middle"),
}
BACKGROUND_PHRASES = ("on a {} background", "on a {} background", "against a {} background")
ARRANGEMENTS = {"left of": ("side by side", "next to each other"), "above": ("one above the other", "stacked")}
DESCRIBE_PROB = 0.5        # how often a caption describes an unnamed outline


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: ShapeObject, pick, describe: bool) -> tuple[list[str], str, str]:
    """(adjectives, noun, trailing phrase) of an object's shape."""
    if obj.shape != spec.GENERIC:
        return [], obj.shape, ""
    noun = pick(spec.GENERIC_NOUNS)
    if not describe:
        return [], noun, ""
    sil = silhouette(obj.variant)
    adjectives = [pick(sil.adjectives)]
    phrase = pick(sil.phrases) if sil.phrases else ""
    return adjectives, noun, phrase


def object_phrase(obj: ShapeObject, *, size: bool = True, color: bool = True, pick=None,
                  describe: bool = False, count: int = 1) -> str:
    """"large red outlined circle", "red spiky shape with a hole", "red circles" (count 2)."""
    pick = pick or (lambda seq: seq[0])
    adjectives, noun, phrase = _noun(obj, pick, describe)
    words = [obj.size] if size else []
    if color:
        words.append(obj.color)
    if obj.fill != "solid":
        words.append(obj.fill)
    words += adjectives
    words.append(spec.plural(noun) if count > 1 else noun)
    if phrase:
        words.append(phrase.replace("with a hole", "with holes") if count > 1 else phrase)
    return " ".join(words)


def full_caption(scene: Scene) -> str:
    """The canonical caption naming every attribute (used for evaluation prompts)."""
    return caption(scene, None)


def caption(scene: Scene, rng: random.Random | None, drop: float = 0.25) -> str:
    """A caption for `scene`. With `rng`, template varies and each attribute is dropped
    with probability `drop`; with rng=None, the canonical full caption."""
    keep = (lambda: True) if rng is None else (lambda: rng.random() >= drop)
    pick = (lambda seq: seq[0]) if rng is None else rng.choice
    describe = (lambda: False) if rng is None else (lambda: rng.random() < DESCRIBE_PROB)
    bg = pick(BACKGROUND_PHRASES).format(scene.background) if keep() else ""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        color = rng is None or rng.random() >= drop / 3
        text = article(object_phrase(obj, size=keep(), color=color, pick=pick, describe=describe()))
        if keep():
            text += " " + pick(POSITION_PHRASES[obj.position])
    elif scene.count:
        text = f"{spec.COUNT_WORDS[2]} {object_phrase(scene.objects[0], size=False, pick=pick, describe=describe(), count=2)}"
        if keep():
            text += " " + pick(ARRANGEMENTS[scene.relation])
    else:
        a, b = (article(object_phrase(o, size=False, pick=pick, describe=describe())) for o in scene.objects)
        text = _relation(a, b, scene.relation, rng, keep)
    if bg:
        text += " " + bg
    return pick(PREFIXES).format(text)


def _relation(a: str, b: str, relation: str, rng: random.Random | None, keep) -> str:
    """"A to the left of B" or its mirror "B to the right of A"; in training, sometimes
    just "A and B"."""
    if rng is not None and not keep() and not keep():
        return f"{a} and {b}"
    mirrored = rng is not None and rng.random() < 0.5
    if relation == "left of":
        return f"{b} to the right of {a}" if mirrored else f"{a} to the left of {b}"
    return f"{b} below {a}" if mirrored else f"{a} above {b}"
