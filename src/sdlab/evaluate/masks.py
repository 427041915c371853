"""Measures of bool masks and maps in [0, 1]: overlap (IoU), Otsu's threshold, and how much of its
bounding box a mask fills (a disc pi/4, a square 1)."""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold (maximum between-class variance) of values in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(p), np.cumsum(p * centers)
    w1, mt = 1 - w0, m0[-1]
    between = (mt * w0 - m0) ** 2 / np.clip(w0 * w1, 1e-12, None)
    return float(edges[1:][int(np.argmax(between[:-1]))]) if bins > 1 else 0.5


def squareness(mask: np.ndarray) -> float:
    """Mask area / bounding-box area of a bool mask (disc ~ 0.785, square 1.0; nan when empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return float("nan")
    return float(mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
