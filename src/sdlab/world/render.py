"""Renderer of the shapes world: 64x64 RGB, anti-aliased by 4x supersampling."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import spec
from .scene import Scene, ShapeObject

SUPERSAMPLE = 4


def _shape_mask(obj: ShapeObject, canvas: int) -> Image.Image:
    """Binary mask ("L") of one object at the supersampled resolution."""
    s = SUPERSAMPLE
    half = spec.SIZES[obj.size] * s / 2
    cx, cy = (obj.center[0] + 0.5) * s, (obj.center[1] + 0.5) * s
    pts = [(cx + x * half, cy + y * half) for x, y in spec.shape_polygon(obj.shape)]
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    return mask


def _stripes(canvas: int) -> np.ndarray:
    """Diagonal stripe pattern (True = stripe colour) at the supersampled resolution."""
    period = spec.STRIPE_PERIOD * SUPERSAMPLE
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    return ((xx + yy) % period) >= period // 2


def render(scene: Scene) -> Image.Image:
    """Draw `scene` as a 64x64 RGB PIL image."""
    canvas = spec.IMAGE_SIZE * SUPERSAMPLE
    bg = np.array(spec.COLORS[scene.background], dtype=np.float32)
    img = np.broadcast_to(bg, (canvas, canvas, 3)).copy()
    for obj in scene.objects:
        mask = np.asarray(_shape_mask(obj, canvas)) > 127
        color = np.array(spec.COLORS[obj.color], dtype=np.float32)
        if obj.fill == "striped":
            stripe = spec.STRIPE_MIX * color + (1 - spec.STRIPE_MIX) * bg
            fill = np.where(_stripes(canvas)[..., None], stripe, color)
            img[mask] = fill[mask]
        else:
            img[mask] = color
    big = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return big.resize((spec.IMAGE_SIZE, spec.IMAGE_SIZE), Image.Resampling.BOX)


def template_mask(shape: str, res: int = 32) -> np.ndarray:
    """Soft mask of `shape` stretched to fill a res x res box (for the oracle's matching)."""
    pts = spec.shape_polygon(shape)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    big = res * SUPERSAMPLE
    scaled = [((x - x0) / (x1 - x0) * big, (y - y0) / (y1 - y0) * big) for x, y in pts]
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(scaled, fill=255)
    return np.asarray(mask.resize((res, res), Image.Resampling.BOX), dtype=np.float32) / 255.0
