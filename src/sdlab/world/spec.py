"""The shapes world: its vocabulary of colours, shapes, sizes and positions.

Everything the renderer, captioner and oracle agree on lives here, so the three cannot drift.
"""

from __future__ import annotations

import math

IMAGE_SIZE = 64

# Named colours keep their everyday meaning; pairwise RGB distance >= 110.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "purple": (150, 60, 190),
    "cyan": (40, 210, 210),
}

BASE_SHAPES = ("circle", "square", "triangle", "star", "cross",
               "diamond", "crescent", "arrow", "semicircle", "hourglass")
RESERVED_SHAPES = ("heart",)          # never in base training: for personalization
SHAPES = BASE_SHAPES + RESERVED_SHAPES
# Unnamed procedural silhouettes (world.silhouettes): their `shape` is this class word, their
# outline comes from the object's `variant`; captions call them "a shape" or "an object".
GENERIC = "shape"
GENERIC_NOUNS = ("shape", "object")

BASE_FILLS = ("solid", "outlined")
RESERVED_FILLS = ("striped",)         # never in base training: for fine-tuning tests
FILLS = BASE_FILLS + RESERVED_FILLS
OUTLINE_WIDTH = 3                     # pixels at 64x64: an outlined object is a band this wide
# Patterned fills only on large objects: at 22 pixels a 3-pixel band or 6-pixel stripes
# cannot be told from a solid fill (nor drawn by the 4x autoencoder).
LARGE_ONLY_FILLS = ("outlined", "striped")

# Side of the square box a shape is drawn in, in pixels.
SIZES: dict[str, int] = {"small": 22, "large": 34}
SIZE_THRESHOLD = 28                   # oracle: box side below -> small

# Canonical object centres (x, y); renders jitter them by up to POSITION_JITTER pixels.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (18, 32),
    "right": (46, 32),
    "top": (32, 18),
    "bottom": (32, 46),
    "center": (32, 32),
}
POSITION_JITTER = 3
POSITION_LOW, POSITION_HIGH = 25, 39  # oracle: centre x/y thresholds between regions

# Two-object scenes: both objects small, in one of these relations; a "count" scene is two
# identical objects ("two red circles side by side").
RELATIONS = ("left of", "above")
COUNT_WORDS = {2: "two"}

# (colour, shape) pairs never rendered in training: they measure composition.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("blue", "star"),
    ("yellow", "triangle"),
    ("green", "circle"),
    ("red", "square"),
    ("white", "cross"),
    ("purple", "circle"),
})

# Coarse enough for the shipped 4x autoencoder: its round trip keeps the oracle's "striped" on
# 88 % of renders at period 12, but 0 % at period 6 (a fine-tune cannot adopt a fill the VAE
# cannot draw). A lower mix draws better still but blurs the oracle's shape masks.
STRIPE_PERIOD = 12                    # pixels at 64x64
STRIPE_MIX = 0.5                      # stripe colour: this mix of object and background


def shape_polygon(shape: str, n_arc: int = 48) -> list[tuple[float, float]]:
    """Outline of `shape` in the unit box [-1, 1]^2 (y down), as a polygon."""
    if shape in ("circle",):
        return [(math.cos(2 * math.pi * k / n_arc), math.sin(2 * math.pi * k / n_arc)) for k in range(n_arc)]
    if shape == "square":
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if shape == "triangle":
        return [(0, -1), (1, 1), (-1, 1)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.1))
        return pts
    if shape == "cross":
        w = 0.36
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                (-w, w), (-1, w), (-1, -w), (-w, -w)]
    if shape == "diamond":
        return [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    if shape == "crescent":
        outer = _arc(0, 0, 1, math.pi * 0.5, math.pi * 1.5, n_arc // 2)
        return _fit(outer + _arc(0.45, 0, 0.85, math.pi * 1.5 - 0.25, math.pi * 0.5 + 0.25, n_arc // 2))
    if shape == "arrow":
        return [(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)]
    if shape == "semicircle":
        return _arc(0, 0.5, 1, math.pi, 2 * math.pi, n_arc // 2)
    if shape == "hourglass":
        return [(-1, -1), (1, -1), (0.12, 0), (1, 1), (-1, 1), (-0.12, 0)]
    if shape == "heart":
        pts = []
        for k in range(n_arc):
            t = 2 * math.pi * k / n_arc
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5, (y + 2.5) / 15.5 - 0.325))
        return pts
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a0 + (a1 - a0) * k / (n - 1)), cy + r * math.sin(a0 + (a1 - a0) * k / (n - 1)))
            for k in range(n)]


def _fit(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Centre the outline's box on the origin and scale its longer side to span [-1, 1]."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in pts]


def plural(noun: str) -> str:
    """"circle" -> "circles", "cross" -> "crosses"."""
    return noun + ("es" if noun.endswith(("s", "x")) else "s")
