"""Unnamed procedural silhouettes: the broad family of outlines the base model learns to
draw without a name ("a red shape", "an object"), as real Stable Diffusion has seen almost
every outline before it is personalised.

An object's `variant` seeds one outline: a random polygon, a spiky star-like polygon, a
smooth Fourier blob, or two or three overlapping ellipses, rectangles and triangles,
sometimes with a hole or a notch cut out, turned and stretched at random. Captions may
describe it with words derived from how it was made ("five-sided", "spiky", "round",
"lumpy", "with a hole"). Outlines that read
as a named shape, or that resemble a reserved one in any pose, are redrawn, so the reserved
heart stays out of training named or unnamed.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np

from . import spec
from .templates import Ring, iou, poses, rasterize, rotate

NUMBERS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
# Upper bounds on a silhouette's IoU with the named shapes: drawn in the template box and
# as the oracle reads its renders, below the oracle's naming threshold (0.72) with a margin,
# a wider one from the reserved shapes; and from a reserved shape in any pose.
NAMED_MAX_IOU = 0.62
RENDERED_NAMED_MAX_IOU = 0.66
RENDERED_RESERVED_MAX_IOU = 0.60
RESERVED_MAX_IOU = 0.70
VARIANTS = 50_000          # distinct unnamed outlines (variant ids are drawn from range(VARIANTS))


@dataclass(frozen=True)
class Silhouette:
    """Filled rings in the unit box (y down), then `cuts` (holes, notches) drawn empty."""

    rings: tuple[Ring, ...]
    cuts: tuple[Ring, ...]
    family: str
    adjectives: tuple[str, ...]      # words that may precede the noun
    phrases: tuple[str, ...]         # "with a hole", after the noun


def _polygon(rng: random.Random) -> tuple[tuple[Ring, ...], tuple[str, ...]]:
    k = rng.randint(4, 8)
    cuts = sorted(rng.uniform(0, 2 * math.pi) for _ in range(k))
    while min((b - a) % (2 * math.pi) for a, b in zip(cuts, cuts[1:] + cuts[:1])) < 0.35:
        cuts = sorted(rng.uniform(0, 2 * math.pi) for _ in range(k))
    radii = [rng.uniform(0.5, 1.0) for _ in cuts]
    return (tuple((r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, cuts)),), (f"{NUMBERS[k]}-sided",)


def _spiky(rng: random.Random) -> tuple[tuple[Ring, ...], tuple[str, ...]]:
    n, inner = rng.randint(3, 8), rng.uniform(0.3, 0.6)
    pts = []
    for k in range(2 * n):
        r = (1.0 if k % 2 == 0 else inner) * rng.uniform(0.7, 1.0)
        a = math.pi * k / n + rng.uniform(-0.15, 0.15)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return (tuple(pts),), ("spiky", f"{NUMBERS[n]}-pointed")


def _blob(rng: random.Random) -> tuple[tuple[Ring, ...], tuple[str, ...]]:
    terms = [(k, rng.uniform(0.12, 0.4) / (k - 1) ** 0.5, rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    pts = []
    for i in range(64):
        a = 2 * math.pi * i / 64
        r = max(0.15, 1 + sum(amp * math.cos(k * a + ph) for k, amp, ph in terms))
        pts.append((r * math.cos(a), r * math.sin(a)))
    return (tuple(pts),), ("round", "blobby")


def _primitive(rng: random.Random) -> Ring:
    """An ellipse, a rectangle or a triangle at a random place, size and angle."""
    cx, cy, w, h = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.25, 0.7), rng.uniform(0.15, 0.5)
    kind = rng.choice(("ellipse", "rectangle", "triangle"))
    if kind == "ellipse":
        ring = tuple((w * math.cos(2 * math.pi * k / 32), h * math.sin(2 * math.pi * k / 32)) for k in range(32))
    elif kind == "rectangle":
        ring = ((-w, -h), (w, -h), (w, h), (-w, h))
    else:
        ring = ((0, -h), (w, h), (-w, h))
    return tuple((cx + x, cy + y) for x, y in rotate(ring, rng.uniform(0, math.pi)))


def _compound(rng: random.Random) -> tuple[tuple[Ring, ...], tuple[str, ...]]:
    """Two or three overlapping primitives: L, T, dumbbell and snowman-like outlines."""
    parts = [_primitive(rng)]
    while len(parts) < rng.choice((2, 3)):
        ring = _primitive(rng)
        cx, cy = (sum(p[0] for p in parts[-1]) / len(parts[-1]), sum(p[1] for p in parts[-1]) / len(parts[-1]))
        # shift the new part so it overlaps the previous one
        mx, my = sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring)
        t = rng.uniform(0.3, 0.6)
        parts.append(tuple((x - (mx - cx) * t, y - (my - cy) * t) for x, y in ring))
    return tuple(parts), ("irregular", "lumpy")


FAMILIES = {"polygon": _polygon, "spiky": _spiky, "blob": _blob, "compound": _compound}


def _hole(rng: random.Random) -> Ring:
    r, cx, cy = rng.uniform(0.18, 0.28), rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
    n = rng.choice((4, 5, 6, 32))
    return tuple((cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n))


def _notch(rng: random.Random) -> Ring:
    a, depth, half = rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.6), rng.uniform(0.25, 0.45)
    tip = ((1 - depth) * math.cos(a), (1 - depth) * math.sin(a))
    out = 1.6
    return (tip, (out * math.cos(a - half), out * math.sin(a - half)), (out * math.cos(a + half), out * math.sin(a + half)))


def _normalise(rings: list[Ring], n_filled: int, angle: float, stretch: float, along_x: bool) -> tuple[Ring, ...]:
    """Turn, stretch one axis, then scale so the filled rings' longer side spans [-1, 1]."""
    turned = [rotate(r, angle) for r in rings]
    sx, sy = (stretch, 1.0) if along_x else (1.0, stretch)
    turned = [tuple((x * sx, y * sy) for x, y in r) for r in turned]
    xs, ys = [p[0] for r in turned[:n_filled] for p in r], [p[1] for r in turned[:n_filled] for p in r]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(tuple(((x - cx) / half, (y - cy) / half) for x, y in r) for r in turned)


def _draw(rng: random.Random) -> Silhouette:
    family = rng.choice(tuple(FAMILIES))
    filled, adjectives = FAMILIES[family](rng)
    cuts, phrases = [], ()
    extra = rng.random()
    if extra < 0.2:
        cuts, phrases = [_hole(rng)], ("with a hole",)
    elif extra < 0.4:
        cuts, phrases = [_notch(rng)], ("with a notch",)
    norm = _normalise(list(filled) + cuts, len(filled), rng.uniform(0, 2 * math.pi), rng.uniform(0.65, 1.0),
                      rng.random() < 0.5)
    return Silhouette(norm[:len(filled)], norm[len(filled):], family, adjectives, phrases)


def named_score(mask: np.ndarray) -> float:
    """The best IoU of a template-box mask with the named shapes as the oracle sees them."""
    from .oracle import observed_templates

    return max(iou(mask, view) for views in observed_templates().values() for view in views)


def _read_as_unnamed(sil: Silhouette) -> bool:
    """Drawn large and small, the oracle finds one object, far from every named shape and
    further still from the reserved ones (so degraded renders never read as one)."""
    from .oracle import read, shape_scores
    from .render import render_object

    for size in spec.SIZES:
        objects = read(render_object(sil.rings, size, sil.cuts), classify=False).objects
        if len(objects) != 1:
            return False
        scores = shape_scores(objects[0].mask, objects[0].bbox)
        if max(scores.values()) > RENDERED_NAMED_MAX_IOU:
            return False
        if max(scores[s] for s in spec.RESERVED_SHAPES) > RENDERED_RESERVED_MAX_IOU:
            return False
    return True


def acceptable(sil: Silhouette) -> bool:
    """Resembles no reserved shape in any pose, and the oracle reads it as no named shape."""
    mask = rasterize(sil.rings, sil.cuts)
    if any(iou(mask, pose) > RESERVED_MAX_IOU for shape in spec.RESERVED_SHAPES for pose in poses(shape)):
        return False
    return named_score(mask) <= NAMED_MAX_IOU and _read_as_unnamed(sil)


@functools.lru_cache(maxsize=65536)
def silhouette(variant: int) -> Silhouette:
    """The outline of unnamed object `variant` (deterministic: redrawn until acceptable)."""
    rng = random.Random(variant)
    while True:
        sil = _draw(rng)
        if acceptable(sil):
            return sil
