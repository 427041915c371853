"""Scenes of the shapes world and their seeded sampling (train / held-out / reserved splits)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from . import spec


@dataclass(frozen=True)
class ShapeObject:
    """One flat-coloured shape: its attributes and its centre in pixels."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[int, int]
    fill: str = "solid"


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two objects; `relation` links two objects."""

    background: str
    objects: tuple[ShapeObject, ...]
    relation: str | None = None       # "left of" or "above": objects[0] REL objects[1]

    def to_dict(self) -> dict:
        return asdict(self)


def jittered_center(position: str, size: str, rng: random.Random, spread: int = 0) -> tuple[int, int]:
    """Canonical centre of `position` moved `spread` pixels further from the middle,
    jittered, clamped so the shape stays inside."""
    cx, cy = spec.POSITIONS[position]
    cx += spread * ((cx > 32) - (cx < 32))
    cy += spread * ((cy > 32) - (cy < 32))
    half = spec.SIZES[size] // 2
    lo, hi = half + 1, spec.IMAGE_SIZE - half - 2
    j = spec.POSITION_JITTER
    return (min(hi, max(lo, cx + rng.randint(-j, j))), min(hi, max(lo, cy + rng.randint(-j, j))))


@dataclass(frozen=True)
class SceneSampler:
    """Draws scenes for a split.

    split "train": base shapes and fills, held-out (colour, shape) pairs excluded.
    split "held_out": single objects whose (colour, shape) pair is held out.
    `shapes` / `fills` widen the vocabulary, e.g. to render a reserved concept.
    """

    split: str = "train"
    two_object_prob: float = 0.25
    shapes: tuple[str, ...] = spec.BASE_SHAPES
    fills: tuple[str, ...] = spec.BASE_FILLS
    colors: tuple[str, ...] = field(default=tuple(spec.COLORS))

    def __post_init__(self):
        if self.split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {self.split!r}")

    def _pair(self, rng: random.Random, exclude_color: str) -> tuple[str, str]:
        while True:
            color, shape = rng.choice(self.colors), rng.choice(self.shapes)
            if color == exclude_color:
                continue
            held = (color, shape) in spec.HELD_OUT_COMBOS
            if held == (self.split == "held_out"):
                return color, shape

    def sample(self, rng: random.Random) -> Scene:
        background = rng.choice(tuple(spec.COLORS))
        fill = rng.choice(self.fills)
        if self.split == "train" and rng.random() < self.two_object_prob:
            return self._two_objects(rng, background, fill)
        color, shape = self._pair(rng, background)
        size = rng.choice(tuple(spec.SIZES))
        position = rng.choice(tuple(spec.POSITIONS))
        obj = ShapeObject(shape, color, size, position, jittered_center(position, size, rng), fill)
        return Scene(background, (obj,))

    def _two_objects(self, rng: random.Random, background: str, fill: str) -> Scene:
        relation = rng.choice(spec.RELATIONS)
        places = ("left", "right") if relation == "left of" else ("top", "bottom")
        objs = []
        for place in places:
            color, shape = self._pair(rng, background)
            objs.append(ShapeObject(shape, color, "small", place, jittered_center(place, "small", rng, spread=3), fill))
        return Scene(background, tuple(objs), relation)


def single_object_scene(shape: str, color: str, size: str, position: str, background: str,
                        rng: random.Random, fill: str = "solid") -> Scene:
    """A scene with exactly the given attributes (centre jittered by `rng`)."""
    obj = ShapeObject(shape, color, size, position, jittered_center(position, size, rng), fill)
    return Scene(background, (obj,))
