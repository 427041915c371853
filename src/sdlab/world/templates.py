"""Shape templates: outlines rasterised into a square box with their aspect ratio kept, and
the intersection-over-union the oracle and the silhouette generator compare them by."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from . import spec

RES = 32                   # template side in pixels
_SS = 4                    # supersampling of the rasterisation

Ring = tuple[tuple[float, float], ...]


def rasterize(rings: tuple[Ring, ...], cuts: tuple[Ring, ...] = (), res: int = RES) -> np.ndarray:
    """Soft mask (res x res, values in [0, 1]) of filled `rings` with `cuts` cut out,
    scaled so the longer side fills the box, centred, aspect kept."""
    xs = [p[0] for r in rings for p in r]
    ys = [p[1] for r in rings for p in r]
    x0, y0 = min(xs), min(ys)
    w, h = max(xs) - x0, max(ys) - y0
    side = max(w, h)
    big = res * _SS
    ox, oy = (side - w) / 2 - x0, (side - h) / 2 - y0
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for ring, value in [(r, 255) for r in rings] + [(c, 0) for c in cuts]:
        draw.polygon([((x + ox) / side * big, (y + oy) / side * big) for x, y in ring], fill=value)
    return np.asarray(mask.resize((res, res), Image.Resampling.BOX), dtype=np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


@functools.lru_cache(maxsize=None)
def named_templates() -> dict[str, np.ndarray]:
    """Every named shape (reserved ones included), upright as the world draws them."""
    return {s: rasterize((tuple(spec.shape_polygon(s)),)) for s in spec.SHAPES}


def rotate(ring, angle: float, mirror: bool = False) -> Ring:
    c, s = math.cos(angle), math.sin(angle)
    return tuple((c * (-x if mirror else x) - s * y, s * (-x if mirror else x) + c * y) for x, y in ring)


@functools.lru_cache(maxsize=None)
def poses(shape: str, n: int = 8) -> tuple[np.ndarray, ...]:
    """`shape` turned by every multiple of 360/n degrees, and mirrored: a reserved outline
    must stay out of training in any pose."""
    ring = tuple(spec.shape_polygon(shape))
    return tuple(rasterize((rotate(ring, 2 * math.pi * k / n, m),)) for k in range(n) for m in (False, True))


def best_match(mask: np.ndarray) -> tuple[str, float]:
    """(name, IoU) of the named template nearest to `mask`."""
    scores = {name: iou(mask, t) for name, t in named_templates().items()}
    name = max(scores, key=scores.get)
    return name, scores[name]
