"""Control-image preprocessors (A1111 ControlNet's "Module"): what a ControlNet is conditioned on.

- none:   the image as it is (already a mask, an edge map, a layout...).
- mask:   the objects' filled silhouettes, white on black (foreground = far from the border colour).
- edges:  the outlines of colour changes, white on black (PIL FIND_EDGES on each channel, then a
          threshold; a Canny-like map without OpenCV).
- layout: colour-free: every pixel's colour distance from the background, white = far, so the
          objects, their fills and outlines stay and their colours go.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ConfigError

PREPROCESSORS = ("none", "mask", "edges", "layout")
EDGE_THRESHOLD = 48       # of 255: a step in any channel above this is an edge


def check_type(name: str) -> str:
    """`name` if it is a known preprocessor, else a one-line ConfigError naming the allowed ones."""
    if name not in PREPROCESSORS:
        raise ConfigError(f"unknown control type {name!r}; allowed: {', '.join(PREPROCESSORS)}")
    return name


def _distance(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's RGB distance from the median colour of the 2-pixel border (the background)."""
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                             rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    return np.sqrt(((rgb - np.median(border, axis=0)) ** 2).sum(-1))


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")


def mask_map(image: Image.Image) -> Image.Image:
    """The objects' filled silhouettes, white on black."""
    from scipy import ndimage           # here: `sdlab generate --help` lists PREPROCESSORS only

    dist = _distance(np.asarray(image.convert("RGB"), dtype=np.float32))
    fg = ndimage.binary_fill_holes(dist > max(30.0, 0.25 * float(np.percentile(dist, 99.5))))
    return _grey(fg * 255.0)


def edge_map(image: Image.Image) -> Image.Image:
    """Edges of colour changes, white on black (the strongest channel's FIND_EDGES response)."""
    channels = [np.asarray(c.filter(ImageFilter.FIND_EDGES), dtype=np.float32) for c in image.convert("RGB").split()]
    edges = np.max(channels, axis=0)
    edges[[0, -1], :] = edges[:, [0, -1]] = 0       # FIND_EDGES marks the image border itself
    return _grey((edges > EDGE_THRESHOLD) * 255.0)


def layout_map(image: Image.Image) -> Image.Image:
    """Colour-free layout: distance from the background colour, scaled so the farthest is white."""
    dist = _distance(np.asarray(image.convert("RGB"), dtype=np.float32))
    peak = float(dist.max())
    return _grey(dist * (255.0 / peak) if peak > 0 else dist)


def preprocess(image: Image.Image, kind: str) -> Image.Image:
    """The control image for preprocessor `kind` (one of PREPROCESSORS), RGB."""
    fn = {"none": lambda im: im.convert("RGB"), "mask": mask_map, "edges": edge_map, "layout": layout_map}
    return fn[check_type(kind)](image)
