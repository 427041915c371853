"""Reading input images robustly and tiling outputs into grids."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageOps

from sdlab.errors import ConfigError, ImageReadError

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto


def _fail(path, reason: str) -> ImageReadError:
    return ImageReadError(f"cannot read image '{path}': {reason}")


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied, alpha composited on white.

    ``max_pixels`` (default ``PIL.Image.MAX_IMAGE_PIXELS``) refuses decompression bombs before
    any pixel is decoded. Failures raise ImageReadError("cannot read image 'PATH': REASON").
    """
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such file")
    if p.is_dir():
        raise _fail(p, "it is a folder")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if limit and w * h > limit:
                    raise _fail(p, f"{w}x{h} is {w * h} pixels, over the limit of {limit} "
                                   "(decompression bomb guard)")
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _fail(p, f"too many pixels (decompression bomb guard): {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's "corrupt file" family
        raise _fail(p, str(exc) or type(exc).__name__) from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (RGBA, LA, P, CMYK, L, I;16, F, ...) to RGB."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _scale_to_l(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """High bit depth grey -> 8-bit "L" (16-bit integer range, or 0..1 floats)."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size == 0 or arr.max() <= 1.0 else float(arr.max())
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:  # 32-bit "I": PIL's mode for 16-bit PNGs; assume 8-bit data if it fits
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def make_grid(images: Sequence[Image.Image], cols: int | None = None,
              background=(0, 0, 0)) -> Image.Image:
    """Tile images row by row into one RGB image; cells take the largest width and height.

    ``cols`` defaults to ceil(sqrt(n)), so 4 images make 2x2 and 6 make 3x2.
    """
    images = list(images)
    if not images:
        raise ConfigError("make_grid needs at least one image")
    n = len(images)
    if cols is None:
        cols = math.ceil(math.sqrt(n))
    if not isinstance(cols, int) or cols < 1:
        raise ConfigError(f"grid cols must be an integer >= 1, got {cols!r}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), tuple(background))
    for i, im in enumerate(images):
        x = (i % cols) * cell_w + (cell_w - im.width) // 2
        y = (i // cols) * cell_h + (cell_h - im.height) // 2
        grid.paste(to_rgb(im), (x, y))
    return grid
