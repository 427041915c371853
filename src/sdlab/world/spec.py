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

BASE_SHAPES = ("circle", "square", "triangle", "star", "cross")
RESERVED_SHAPES = ("heart",)          # never in base training: for personalization
SHAPES = BASE_SHAPES + RESERVED_SHAPES

BASE_FILLS = ("solid",)
RESERVED_FILLS = ("striped",)         # never in base training: for fine-tuning tests
FILLS = BASE_FILLS + RESERVED_FILLS

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

# Two-object scenes: both objects small, in one of these relations.
RELATIONS = ("left of", "above")

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
    if shape == "heart":
        pts = []
        for k in range(n_arc):
            t = 2 * math.pi * k / n_arc
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5, (y + 2.5) / 15.5 - 0.325))
        return pts
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
