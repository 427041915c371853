"""Scenes of the shapes world and their seeded sampling (train / held-out / reserved splits)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from . import spec
from .silhouettes import VARIANTS


@dataclass(frozen=True)
class ShapeObject:
    """One flat-coloured shape: its attributes and its centre in pixels. An unnamed object
    (shape == spec.GENERIC) takes its outline from `variant` (world.silhouettes)."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[int, int]
    fill: str = "solid"
    variant: int = 0


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two objects. `relation` links two objects
    (objects[0] REL objects[1]); `count` says the objects are identical ("two circles")."""

    background: str
    objects: tuple[ShapeObject, ...]
    relation: str | None = None       # "left of" or "above"
    count: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = tuple(ShapeObject(**dict(o, center=tuple(o["center"]))) for o in d["objects"])
        return cls(d["background"], objs, d.get("relation"), d.get("count", False))


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

    split "train": base shapes and fills, held-out (colour, shape) pairs excluded, a share
    `generic_prob` of objects unnamed silhouettes, a share `two_object_prob` of scenes with
    two objects (of which `count_prob` are two identical objects).
    split "held_out": single objects whose (colour, shape) pair is held out.
    `shapes` / `fills` widen or narrow the vocabulary, e.g. to render a reserved concept.
    """

    split: str = "train"
    two_object_prob: float = 0.35
    count_prob: float = 0.25
    generic_prob: float = 0.25
    shapes: tuple[str, ...] = spec.BASE_SHAPES
    fills: tuple[str, ...] = spec.BASE_FILLS
    fill_weights: tuple[float, ...] | None = (0.7, 0.3)
    colors: tuple[str, ...] = field(default=tuple(spec.COLORS))

    def __post_init__(self):
        if self.split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {self.split!r}")

    def _fill(self, rng: random.Random, size: str) -> tuple[str, str]:
        """(fill, size): a patterned fill drawn for a small object makes it solid, or large
        when this sampler has no solid fill."""
        weights = self.fill_weights if self.fill_weights and len(self.fill_weights) == len(self.fills) else None
        fill = rng.choices(self.fills, weights)[0]
        if size == "small" and fill in spec.LARGE_ONLY_FILLS:
            return ("solid", size) if "solid" in self.fills else (fill, "large")
        return fill, size

    def _pair(self, rng: random.Random, exclude_color: str) -> tuple[str, str, int]:
        """(colour, shape, variant) of one object."""
        while True:
            color = rng.choice(self.colors)
            if color == exclude_color:
                continue
            if self.split == "train" and rng.random() < self.generic_prob:
                return color, spec.GENERIC, rng.randrange(VARIANTS)
            shape = rng.choice(self.shapes)
            held = (color, shape) in spec.HELD_OUT_COMBOS
            if held == (self.split == "held_out"):
                return color, shape, 0

    def sample(self, rng: random.Random) -> Scene:
        background = rng.choice(tuple(spec.COLORS))
        if self.split == "train" and rng.random() < self.two_object_prob:
            return self._two_objects(rng, background)
        color, shape, variant = self._pair(rng, background)
        fill, size = self._fill(rng, rng.choice(tuple(spec.SIZES)))
        position = rng.choice(tuple(spec.POSITIONS))
        obj = ShapeObject(shape, color, size, position, jittered_center(position, size, rng), fill, variant)
        return Scene(background, (obj,))

    def _two_objects(self, rng: random.Random, background: str) -> Scene:
        relation = rng.choice(spec.RELATIONS)
        places = ("left", "right") if relation == "left of" else ("top", "bottom")
        count = rng.random() < self.count_prob
        color, shape, variant = self._pair(rng, background)
        objs = []
        for place in places:
            if objs and not count:
                color, shape, variant = self._pair(rng, background)
            objs.append(ShapeObject(shape, color, "small", place, jittered_center(place, "small", rng, spread=3),
                                    "solid", variant))
        return Scene(background, tuple(objs), relation, count)


def single_object_scene(shape: str, color: str, size: str, position: str, background: str,
                        rng: random.Random, fill: str = "solid", variant: int = 0) -> Scene:
    """A scene with exactly the given attributes (centre jittered by `rng`)."""
    obj = ShapeObject(shape, color, size, position, jittered_center(position, size, rng), fill, variant)
    return Scene(background, (obj,))
