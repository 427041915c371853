"""Oracle scores: how often images show the attributes their scenes asked for."""

from __future__ import annotations

from collections import Counter

from . import oracle
from .scene import Scene

ATTRIBUTES = ("background", "count", "color", "shape", "size", "position", "fill")


def _match(reading, obj):
    """The read object nearest to the intended object's centre."""
    return min(reading.objects, default=None,
               key=lambda r: (r.center[0] - obj.center[0]) ** 2 + (r.center[1] - obj.center[1]) ** 2)


def scene_checks(scene: Scene, reading, attributes=ATTRIBUTES) -> dict[str, bool]:
    """Per-attribute correctness of one reading (object attributes: all objects right).
    Position is matched by region, not by the jittered centre."""
    checks = {}
    if "background" in attributes:
        checks["background"] = reading.background == scene.background
    if "count" in attributes:
        checks["count"] = len(reading.objects) == len(scene.objects)
    for attr in ("color", "shape", "size", "position", "fill"):
        if attr not in attributes:
            continue
        ok = True
        for obj in scene.objects:
            got = _match(reading, obj)
            ok &= got is not None and getattr(got, attr) == getattr(obj, attr)
        checks[attr] = ok
    checks["all"] = all(checks.values())
    return checks


def accuracy(scenes, images, attributes=ATTRIBUTES) -> dict[str, float]:
    """Mean per-attribute accuracy (and 'all') of `images` against `scenes`."""
    hits, n = Counter(), 0
    for scene, image in zip(scenes, images):
        for k, v in scene_checks(scene, oracle.read(image), attributes).items():
            hits[k] += int(v)
        n += 1
    return {k: hits[k] / max(n, 1) for k in hits}
