"""Training logs: the loss CSV, a loss-curve PNG (drawn with Pillow) and validation grids."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..io.atomic import atomic_save, atomic_write_text

FIELDS = ("step", "loss", "lr")


class LossLog:
    """`logs/loss.csv` (step, loss, lr). On resume, rows past the resumed step are dropped
    so the file matches what an uninterrupted run writes."""

    def __init__(self, folder: Path, resume_step: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / "loss.csv"
        self.rows: list[dict] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.rows = [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"])} for r in self.rows]

    def add(self, step: int, loss: float, lr: float) -> None:
        self.rows.append({"step": step, "loss": loss, "lr": lr})

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())
        if self.rows:
            image = loss_curve([r["step"] for r in self.rows], [r["loss"] for r in self.rows])
            atomic_save(self.folder / "loss.png", lambda tmp: image.save(tmp, format="PNG"))


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def loss_curve(steps: list[int], losses: list[float], size=(640, 360)) -> Image.Image:
    """Raw loss (light) and its exponential moving average (dark), log-scaled y axis."""
    w, h = size
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 28
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [math.log10(max(v, 1e-12)) for v in losses]
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1
    s0, s1 = min(steps), max(steps)
    s1 = s1 if s1 > s0 else s0 + 1

    def xy(step, y):
        return (pad_l + (step - s0) / (s1 - s0) * (w - pad_l - pad_r),
                pad_t + (hi - y) / (hi - lo) * (h - pad_t - pad_b))

    d.rectangle([pad_l, pad_t, w - pad_r, h - pad_b], outline=(160, 160, 160))
    for series, colour in ((ys, (170, 190, 230)), (_smooth(ys), (20, 60, 160))):
        pts = [xy(s, y) for s, y in zip(steps, series)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        else:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
    d.text((4, pad_t), f"{10 ** hi:.3g}", fill="black")
    d.text((4, h - pad_b - 10), f"{10 ** lo:.3g}", fill="black")
    d.text((pad_l, h - pad_b + 6), f"step {s0}", fill="black")
    d.text((w - pad_r - 70, h - pad_b + 6), f"step {s1}", fill="black")
    d.text((w // 2 - 20, h - pad_b + 6), "loss", fill="black")
    return img


def save_grid(images, path: Path, cols: int) -> Path:
    from ..io.images import make_grid

    grid = make_grid(images, cols=cols)
    return atomic_save(path, lambda tmp: grid.save(tmp, format="PNG"))
