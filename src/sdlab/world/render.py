"""Renderer of the shapes world: 64x64 RGB, anti-aliased by 4x supersampling."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import spec
from .scene import Scene, ShapeObject
from .silhouettes import silhouette
from .templates import Ring

SUPERSAMPLE = 4


def outline(obj: ShapeObject) -> tuple[tuple[Ring, ...], tuple[Ring, ...]]:
    """(filled rings, cut-outs) of the object in the unit box: a named shape's polygon, or
    its silhouette's rings."""
    if obj.shape == spec.GENERIC:
        sil = silhouette(obj.variant)
        return sil.rings, sil.cuts
    return (tuple(spec.shape_polygon(obj.shape)),), ()


def _shape_mask(rings: tuple[Ring, ...], cuts: tuple[Ring, ...], size: str, center: tuple[int, int],
                canvas: int) -> np.ndarray:
    """Boolean mask of a silhouette (filled rings, then cut-outs) at the supersampled resolution."""
    s = SUPERSAMPLE
    half = spec.SIZES[size] * s / 2
    cx, cy = (center[0] + 0.5) * s, (center[1] + 0.5) * s
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for ring, value in [(r, 255) for r in rings] + [(c, 0) for c in cuts]:
        draw.polygon([(cx + x * half, cy + y * half) for x, y in ring], fill=value)
    return np.asarray(mask) > 127


def _stripes(canvas: int) -> np.ndarray:
    """Diagonal stripe pattern (True = stripe colour) at the supersampled resolution."""
    period = spec.STRIPE_PERIOD * SUPERSAMPLE
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    return ((xx + yy) % period) >= period // 2


def _band(mask: np.ndarray, width: int) -> np.ndarray:
    """The band of `mask` within `width` pixels of its edge (an outlined object)."""
    inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return mask & (inside <= width * SUPERSAMPLE)


def render(scene: Scene) -> Image.Image:
    """Draw `scene` as a 64x64 RGB PIL image."""
    return _draw(scene.background, [(outline(o), o) for o in scene.objects])


def render_object(rings: tuple[Ring, ...], size: str, cuts: tuple[Ring, ...] = ()) -> Image.Image:
    """A white silhouette of `size` in the centre of a black image."""
    return _draw("black", [((rings, cuts), ShapeObject(spec.GENERIC, "white", size, "center", (32, 32)))])


def _draw(background: str, objects) -> Image.Image:
    canvas = spec.IMAGE_SIZE * SUPERSAMPLE
    bg = np.array(spec.COLORS[background], dtype=np.float32)
    img = np.broadcast_to(bg, (canvas, canvas, 3)).copy()
    for (rings, cuts), obj in objects:
        mask = _shape_mask(rings, cuts, obj.size, obj.center, canvas)
        color = np.array(spec.COLORS[obj.color], dtype=np.float32)
        if obj.fill == "striped":
            stripe = spec.STRIPE_MIX * color + (1 - spec.STRIPE_MIX) * bg
            fill = np.where(_stripes(canvas)[..., None], stripe, color)
            img[mask] = fill[mask]
        elif obj.fill == "outlined":
            img[_band(mask, spec.OUTLINE_WIDTH)] = color
        else:
            img[mask] = color
    big = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return big.resize((spec.IMAGE_SIZE, spec.IMAGE_SIZE), Image.Resampling.BOX)
