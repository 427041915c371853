"""Training logs: the loss CSV, a loss-curve PNG (drawn with Pillow) and validation grids."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..io.atomic import atomic_save, atomic_write_text

FIELDS = ("step", "loss", "lr", "val_loss")


class LossLog:
    """`logs/loss.csv` (step, loss, lr, val_loss where measured). On resume, rows past the
    resumed step are dropped so the file matches what an uninterrupted run writes."""

    def __init__(self, folder: Path, resume_step: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / "loss.csv"
        self.rows = [r for r in read_rows(self.path) if r["step"] <= resume_step]

    def add(self, step: int, loss: float, lr: float, val_loss: float | None = None) -> None:
        self.rows.append({"step": step, "loss": loss, "lr": lr, "val_loss": val_loss})

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())
        if self.rows:
            val = [(r["step"], r["val_loss"]) for r in self.rows if r["val_loss"] is not None]
            image = loss_curve([r["step"] for r in self.rows], [r["loss"] for r in self.rows], val)
            atomic_save(self.folder / "loss.png", lambda tmp: image.save(tmp, format="PNG"))


def read_rows(path: Path) -> list[dict]:
    """The rows of a loss.csv (none when there is no file); val_loss is None where not measured."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"]),
                 "val_loss": float(r["val_loss"]) if r.get("val_loss") else None} for r in csv.DictReader(f)]


def validation_losses(run_dir: str | Path) -> dict[int, float]:
    """step -> validation loss, from a run's logs/loss.csv (empty when it logged none)."""
    rows = read_rows(Path(run_dir) / "logs" / "loss.csv")
    return {r["step"]: r["val_loss"] for r in rows if r["val_loss"] is not None}


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def loss_curve(steps: list[int], losses: list[float], val: list[tuple[int, float]] = (),
               size=(640, 360)) -> Image.Image:
    """Raw loss (light) and its exponential moving average (dark), and the validation loss
    (orange) at the steps it was measured, on a log-scaled y axis."""
    w, h = size
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 28
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [math.log10(max(v, 1e-12)) for v in losses]
    val_ys = [math.log10(max(v, 1e-12)) for _, v in val]
    lo, hi = min(ys + val_ys), max(ys + val_ys)
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
    val_pts = [xy(s, y) for (s, _), y in zip(val, val_ys)]
    if len(val_pts) > 1:
        d.line(val_pts, fill=(230, 120, 20), width=2)
    for x, y in val_pts:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(230, 120, 20))
    d.text((4, pad_t), f"{10 ** hi:.3g}", fill="black")
    d.text((4, h - pad_b - 10), f"{10 ** lo:.3g}", fill="black")
    d.text((pad_l, h - pad_b + 6), f"step {s0}", fill="black")
    d.text((w - pad_r - 70, h - pad_b + 6), f"step {s1}", fill="black")
    d.text((w // 2 - 20, h - pad_b + 6), "loss" + (" / validation loss" if val else ""), fill="black")
    return img


def save_grid(images, path: Path, cols: int) -> Path:
    from ..io.images import make_grid

    grid = make_grid(images, cols=cols)
    return atomic_save(path, lambda tmp: grid.save(tmp, format="PNG"))
