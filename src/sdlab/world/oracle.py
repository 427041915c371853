"""The oracle: reads a shapes-world scene back from any RGB image.

Background = median border colour; objects = connected components far from it, their holes
filled; colour = nearest palette entry of the object's core pixels; shape = best IoU against
the named shape templates in a square box with the aspect ratio kept, or the generic
"shape" when no template reaches NAMED_IOU; fill = striped (diagonal contrast), outlined (a
thin band around an empty inside) or solid; size, position from box and centroid.
It is the ground truth that turns claims about generated images into numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from . import spec
from .templates import RES as TEMPLATE_RES
from .templates import iou

STRIPE_THRESHOLD = 0.015
NAMED_IOU = 0.72            # below this IoU with every template, an object is an unnamed shape
OUTLINE_THIN = 3.3          # outlined: a band at most this thick (max distance to its edge) ...
OUTLINE_HOLE = 0.10         # ... or an empty inside of at least this share of the object
OUTLINE_THICKNESS = 4.5     #     inside a band at most this thick (blur widens bands)
_PALETTE_NAMES = tuple(spec.COLORS)
_PALETTE = np.array([spec.COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)


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


def _normalised(mask: np.ndarray, bbox) -> np.ndarray:
    """The object's mask in a TEMPLATE_RES square box, centred, aspect ratio kept."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    side = max(w, h)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = mask[y0:y1, x0:x1] * 255
    crop = Image.fromarray(square)
    return np.asarray(crop.resize((TEMPLATE_RES, TEMPLATE_RES), Image.Resampling.BILINEAR), np.float32) / 255


@functools.lru_cache(maxsize=1)
def observed_templates() -> dict[str, tuple[np.ndarray, ...]]:
    """Each named shape as the oracle itself sees a clean render of it, at every size
    (a small star loses the tips of its arms to anti-aliasing; matching what is seen
    keeps small shapes well above NAMED_IOU)."""
    from .render import render
    from .scene import Scene, ShapeObject

    out = {}
    for shape in spec.SHAPES:
        views = []
        for size in spec.SIZES:
            image = render(Scene("black", (ShapeObject(shape, "white", size, "center", (32, 32)),)))
            obj = read(image, classify=False).main
            views.append(_normalised(obj.mask, obj.bbox))
        out[shape] = tuple(views)
    return out


def shape_scores(mask: np.ndarray, bbox) -> dict[str, float]:
    """IoU of an object's mask with every named shape as the oracle sees it."""
    norm = _normalised(mask, bbox)
    return {name: max(iou(norm, v) for v in views) for name, views in observed_templates().items()}


def _classify_shape(mask: np.ndarray, bbox) -> tuple[str, float]:
    """(name, IoU): the best named template, or spec.GENERIC when none reaches NAMED_IOU."""
    scores = shape_scores(mask, bbox)
    name = max(scores, key=scores.get)
    return (name if scores[name] >= NAMED_IOU else spec.GENERIC), scores[name]


def _is_outlined(band: np.ndarray, filled: np.ndarray) -> bool:
    """A thin band, around an empty inside where the object is wide enough to have one
    (a large solid object is thicker; holes of solid silhouettes are small)."""
    hole = 1 - band.sum() / max(filled.sum(), 1)
    thickness = ndimage.distance_transform_edt(np.pad(band, 1)).max()
    return thickness <= OUTLINE_THIN or (hole >= OUTLINE_HOLE and thickness <= OUTLINE_THICKNESS)


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


def _read_object(img, dist, band, classify: bool = True) -> ObjectReading:
    mask = ndimage.binary_fill_holes(band)
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    d = dist[band]
    core = d >= 0.8 * np.percentile(d, 90)
    color = nearest_color(np.median(img[band][core], axis=0))
    shape, score = _classify_shape(mask, bbox) if classify else (spec.GENERIC, 0.0)
    side = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
    size = "small" if side < spec.SIZE_THRESHOLD else "large"
    if size == "small":                  # the world's small objects are solid (spec.LARGE_ONLY_FILLS)
        fill = "solid"
    elif _stripe_score(img, band, np.percentile(d, 90)) > STRIPE_THRESHOLD:
        fill = "striped"
    elif _is_outlined(band, mask):
        fill = "outlined"
    else:
        fill = "solid"
    cx, cy = (bbox[0] + bbox[2] - 1) / 2, (bbox[1] + bbox[3] - 1) / 2
    return ObjectReading(color, shape, size, _position(cx, cy), fill, bbox, (cx, cy), int(mask.sum()), score, mask)


def read(image, classify: bool = True) -> SceneReading:
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
            objects.append(_read_object(img, dist, labels == i + 1, classify))
    return SceneReading(nearest_color(bg_rgb), objects)
