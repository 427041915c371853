"""Reading input images robustly, decoded pixels as images, and tiling outputs into grids."""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageOps

from sdlab.errors import ConfigError, ImageReadError

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto


# Largest image a user may hand sdlab (an 8192 x 8192 square, 67 MP): enough for camera photos,
# small enough that a decompression bomb (a few KB of PNG for 9000 x 9000) is refused unread.
MAX_PIXELS = 8192 * 8192


def _fail(path, reason: str, what: str = "image") -> ImageReadError:
    return ImageReadError(f"cannot read {what} '{path}': {reason}")


def load_image(path: str | Path, max_pixels: int | None = None, what: str = "image", convert=None) -> Image.Image:
    """Open a user's image file as RGB: EXIF orientation applied, alpha composited on white
    (`convert(image)` instead of to_rgb: another conversion, e.g. a mask's, sdlab.inpaint.masks).

    The one safe reader of user images: anything but a regular file (a FIFO, a device, a folder)
    is refused before it is read, and an image over ``max_pixels`` (default: MAX_PIXELS, or
    ``PIL.Image.MAX_IMAGE_PIXELS`` when lower) is refused from its header, before any pixel is
    decoded. Failures raise ImageReadError("cannot read WHAT 'PATH': REASON").
    """
    p = Path(path)
    limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS) if max_pixels is None else max_pixels
    with _open_regular(p, what) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
                with Image.open(f) as img:
                    w, h = img.size
                    if limit and w * h > limit:
                        raise _fail(p, f"{w}x{h} is {w * h} pixels, over the limit of {limit} "
                                       "(decompression bomb guard)", what)
                    img.load()
                    return (convert or to_rgb)(ImageOps.exif_transpose(img))
        except ImageReadError:
            raise
        except Image.DecompressionBombError as exc:     # PIL's own guard, at twice its MAX_IMAGE_PIXELS
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{found.group(1)} pixels" if found else "too many pixels"
            raise _fail(p, f"{size}, over the limit of {limit} (decompression bomb guard)", what) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's "corrupt file" family
            raise _fail(p, str(exc) or type(exc).__name__, what) from exc


_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
            (stat.S_ISBLK, "a device"))


def _open_regular(p: Path, what: str):
    """`p` opened for reading, refused unless it is a regular file. Opened without blocking and
    checked on the open descriptor, so a FIFO never hangs and nothing swaps in between."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise _fail(p, "no such file", what) from None
    except IsADirectoryError:
        raise _fail(p, "it is a folder", what) from None
    except OSError as exc:
        raise _fail(p, exc.strerror or str(exc), what) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _SPECIAL if test(mode)), "a special file")
        raise _fail(p, f"it is {kind}, not a regular file", what)
    return os.fdopen(fd, "rb")


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


def to_pil(pixels) -> list[Image.Image]:
    """Images in [-1, 1], a (B, 3, H, W) tensor (what a VAE decodes), as PIL RGB images; NaN/inf
    refused (NonFiniteError), as they would be written as black."""
    import torch

    from sdlab.models.precision import require_finite

    require_finite(pixels)
    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


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
