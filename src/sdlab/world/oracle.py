"""The oracle: reads a shapes-world scene back from any RGB image.

Background = median border colour; objects = connected components far from it; colour =
nearest palette entry of the object's core pixels; shape = best IoU against the shape
templates after normalising the object's box; size, position from box and centroid.
It is the ground truth that turns claims about generated images into numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from . import spec
from .render import template_mask

TEMPLATE_RES = 32
STRIPE_THRESHOLD = 0.015
_PALETTE_NAMES = tuple(spec.COLORS)
_PALETTE = np.array([spec.COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_TEMPLATES: dict[str, np.ndarray] = {}


def _templates() -> dict[str, np.ndarray]:
    if not _TEMPLATES:
        for s in spec.SHAPES:
            _TEMPLATES[s] = template_mask(s, TEMPLATE_RES)
    return _TEMPLATES


@dataclass
class ObjectReading:
    color: str
    shape: str
    size: str
    position: str
    fill: str
    bbox: tuple[int, int, int, int]          # x0, y0, x1, y1 (inclusive-exclusive)
    center: tuple[float, float]
    area: int
    shape_score: float                        # IoU with the best template
    mask: np.ndarray = field(repr=False)      # bool HxW

    def to_dict(self, with_mask: bool = True) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "mask"}
        d["center"] = [round(v, 2) for v in self.center]
        d["shape_score"] = round(self.shape_score, 3)
        if with_mask:
            d["mask_rle"] = mask_to_rle(self.mask)
        return d


@dataclass
class SceneReading:
    background: str
    objects: list[ObjectReading]

    @property
    def main(self) -> ObjectReading | None:
        """The largest object, or None when the oracle found none."""
        return self.objects[0] if self.objects else None

    def to_dict(self, with_mask: bool = True) -> dict:
        return {"background": self.background, "objects": [o.to_dict(with_mask) for o in self.objects]}


def mask_to_rle(mask: np.ndarray) -> dict:
    """Row-major run-length encoding: counts alternate background, foreground, ..."""
    flat = np.concatenate([[False], mask.ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    counts, prev = [], 0
    for e in edges:
        counts.append(int(e - prev))
        prev = e
    counts.append(int(mask.size - prev))
    return {"size": list(mask.shape), "counts": counts}


def nearest_color(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def _to_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"oracle needs an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.max() <= 1.0 + 1e-6 and arr.dtype != np.uint8:
        arr = arr * 255.0
    if arr.shape[:2] != (spec.IMAGE_SIZE, spec.IMAGE_SIZE):
        pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        arr = np.asarray(pil.resize((spec.IMAGE_SIZE, spec.IMAGE_SIZE), Image.Resampling.BILINEAR), np.float32)
    return arr


def _classify_shape(mask: np.ndarray, bbox) -> tuple[str, float]:
    x0, y0, x1, y1 = bbox
    crop = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255)
    norm = np.asarray(crop.resize((TEMPLATE_RES, TEMPLATE_RES), Image.Resampling.BILINEAR), np.float32) / 255
    best, best_iou = "circle", -1.0
    for name, tmpl in _templates().items():
        iou = np.minimum(norm, tmpl).sum() / max(np.maximum(norm, tmpl).sum(), 1e-6)
        if iou > best_iou:
            best, best_iou = name, float(iou)
    return best, best_iou


def _stripe_score(img, mask, core_dist) -> float:
    """Diagonal stripes run along x+y = const: pixel differences across them (1, 1) exceed
    those along them (1, -1); noise and flat fills raise both alike."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    m = inner[1:, 1:] & inner[:-1, :-1] & inner[1:, :-1] & inner[:-1, 1:]
    if m.sum() < 5:
        return 0.0
    across = np.abs(img[1:, 1:] - img[:-1, :-1]).sum(-1)[m].mean()
    along = np.abs(img[1:, :-1] - img[:-1, 1:]).sum(-1)[m].mean()
    return float((across - along) / max(core_dist, 1e-6))


def _position(cx: float, cy: float) -> str:
    dx = 0 if spec.POSITION_LOW <= cx <= spec.POSITION_HIGH else (cx - 32)
    dy = 0 if spec.POSITION_LOW <= cy <= spec.POSITION_HIGH else (cy - 32)
    if dx == 0 and dy == 0:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _read_object(img, dist, mask) -> ObjectReading:
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    d = dist[mask]
    core = d >= 0.8 * np.percentile(d, 90)
    color = nearest_color(np.median(img[mask][core], axis=0))
    fill = "striped" if _stripe_score(img, mask, np.percentile(d, 90)) > STRIPE_THRESHOLD else "solid"
    shape, score = _classify_shape(mask, bbox)
    side = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
    size = "small" if side < spec.SIZE_THRESHOLD else "large"
    cx, cy = (bbox[0] + bbox[2] - 1) / 2, (bbox[1] + bbox[3] - 1) / 2
    return ObjectReading(color, shape, size, _position(cx, cy), fill, bbox, (cx, cy), int(mask.sum()), score, mask)


def read(image) -> SceneReading:
    """Read background and objects (largest first) from an RGB image (PIL or array)."""
    img = _to_array(image)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    fg = dist > max(30.0, 0.25 * np.percentile(dist, 99.5))
    fg = ndimage.binary_opening(fg, iterations=1)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    objects = []
    if n:
        areas = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
        order = np.argsort(-areas)
        keep = [i for i in order if areas[i] >= max(30, 0.15 * areas[order[0]])][:2]
        for i in keep:
            objects.append(_read_object(img, dist, labels == i + 1))
    return SceneReading(nearest_color(bg_rgb), objects)
