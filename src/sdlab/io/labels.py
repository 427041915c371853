"""Labelled image grids: a header row of column labels and a margin of row labels.

Used by trajectory strips, interpolation strips and img2img strength sweeps, so that every
figure sdlab writes reads the same way. Small images (the shipped model draws 64x64) are
enlarged with nearest-neighbour by an integer `scale` so that the labels stay readable.
"""

from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError
from .images import to_rgb

PAD = 3
FONT_SIZE = 11
TEXT = (235, 235, 235)
BACK = (24, 24, 24)


def font() -> ImageFont.ImageFont:
    """Pillow's built-in font (no font file needed)."""
    return ImageFont.load_default(size=FONT_SIZE)


def auto_scale(size: int, target: int = 96) -> int:
    """The integer factor that enlarges a `size`-pixel image to at least `target` pixels."""
    return max(1, -(-target // max(size, 1)))


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font())
    return right - left, bottom - top


def labelled_grid(rows: Sequence[Sequence[Image.Image]], col_labels: Optional[Sequence[str]] = None,
                  row_labels: Optional[Sequence[str]] = None, scale: int = 1) -> Image.Image:
    """Tile `rows` (a list of rows of images) into one RGB image with optional labels.

    Cells take the largest image size times `scale`; `col_labels` go above the columns,
    `row_labels` to the left of the rows.
    """
    rows = [list(r) for r in rows]
    if not rows or not all(rows):
        raise ConfigError("labelled_grid needs at least one image in every row")
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be an integer >= 1, got {scale!r}")
    n_cols = max(len(r) for r in rows)
    for name, labels, n in (("col_labels", col_labels, n_cols), ("row_labels", row_labels, len(rows))):
        if labels is not None and len(labels) != n:
            raise ConfigError(f"{name} has {len(labels)} entries for {n} {name[:3]}s")
    cw = max(im.width for r in rows for im in r) * scale
    ch = max(im.height for r in rows for im in r) * scale
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = _text_size(probe, "Xg")[1] + 2 * PAD
    top = text_h if col_labels else 0
    left = max((_text_size(probe, s)[0] for s in row_labels), default=0) + 2 * PAD if row_labels else 0
    grid = Image.new("RGB", (left + n_cols * cw, top + len(rows) * ch), BACK)
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(col_labels or []):
        w, _ = _text_size(draw, label)
        draw.text((left + j * cw + max((cw - w) // 2, 0), PAD), label, fill=TEXT, font=font())
    for i, row in enumerate(rows):
        if row_labels:
            draw.text((PAD, top + i * ch + (ch - text_h) // 2 + PAD), row_labels[i], fill=TEXT, font=font())
        for j, im in enumerate(row):
            im = to_rgb(im)
            if scale > 1:
                im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
            grid.paste(im, (left + j * cw + (cw - im.width) // 2, top + i * ch + (ch - im.height) // 2))
    return grid
