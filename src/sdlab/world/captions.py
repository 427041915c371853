"""Captions for shapes-world scenes, from varied templates with attributes sometimes left out."""

from __future__ import annotations

import random

from .scene import Scene, ShapeObject

PREFIXES = ("a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "{}", "{}")
POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "at the top"),
    "bottom": ("at the bottom", "at the bottom"),
    "center": ("in the center", "in the middle"),
}
BACKGROUND_PHRASES = ("on a {} background", "on a {} background", "against a {} background")


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_phrase(obj: ShapeObject, *, size: bool = True, color: bool = True) -> str:
    """"large red striped circle" with the chosen attributes."""
    words = [obj.size] if size else []
    if color:
        words.append(obj.color)
    if obj.fill != "solid":
        words.append(obj.fill)
    words.append(obj.shape)
    return " ".join(words)


def full_caption(scene: Scene) -> str:
    """The canonical caption naming every attribute (used for evaluation prompts)."""
    return caption(scene, None)


def caption(scene: Scene, rng: random.Random | None, drop: float = 0.25) -> str:
    """A caption for `scene`. With `rng`, template varies and each attribute is dropped
    with probability `drop`; with rng=None, the canonical full caption."""
    keep = (lambda: True) if rng is None else (lambda: rng.random() >= drop)
    pick = (lambda seq: seq[0]) if rng is None else rng.choice
    bg = pick(BACKGROUND_PHRASES).format(scene.background) if keep() else ""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        text = article(object_phrase(obj, size=keep(), color=rng is None or rng.random() >= drop / 3))
        if keep():
            text += " " + pick(POSITION_PHRASES[obj.position])
    else:
        a, b = scene.objects
        pa, pb = article(object_phrase(a, size=False)), article(object_phrase(b, size=False))
        if scene.relation == "left of":
            text = f"{pa} to the left of {pb}" if rng is None or rng.random() < 0.5 else f"{pb} to the right of {pa}"
        else:
            text = f"{pa} above {pb}" if rng is None or rng.random() < 0.5 else f"{pb} below {pa}"
    if bg:
        text += " " + bg
    return pick(PREFIXES).format(text)
