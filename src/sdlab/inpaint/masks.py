"""The pixel side of inpainting, as AUTOMATIC1111 does it (modules/processing.py, masking.py):
reading a mask, its blur, the crop around it ("only masked"), the colour fill, the outpainting
canvas, and the final composite that keeps every pixel outside the blurred mask the source's.
White (255) means repaint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from ..errors import ConfigError
from ..io.images import load_image, to_rgb
from .options import Expand

Box = tuple[int, int, int, int]          # x0, y0, x1, y1 (exclusive)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def mask_from_image(img: Image.Image) -> Image.Image:
    """An "L" mask from any image: a transparent image's alpha (opaque = repaint, cut at 128, as
    A1111's create_binary_mask), else its grey levels."""
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda v: 255 if v > 128 else 0)
    return to_rgb(img).convert("L")


def load_mask(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """A mask file (any format Pillow reads) through the safe image reader, as "L"."""
    return load_image(path, max_pixels=max_pixels, what="mask", convert=mask_from_image)


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> Image.Image:
    """`mask` as "L" at the image's `size` (resized when it differs, as A1111 resizes it), inverted
    if asked; ConfigError if nothing is left to repaint."""
    if not isinstance(mask, Image.Image):
        raise ConfigError(f"mask must be a PIL image, got {type(mask).__name__}")
    m = mask if mask.mode == "L" else mask_from_image(mask)
    if abs(m.size[0] * size[1] - m.size[1] * size[0]) > max(size[0], size[1], *m.size):
        raise ConfigError(f"the mask is {m.size[0]}x{m.size[1]} but the image {size[0]}x{size[1]}: give a mask of "
                          "the image's size (or the same shape at another scale)")
    if m.size != size:
        m = m.resize(size, Image.Resampling.LANCZOS)
    if invert:
        m = ImageOps.invert(m)
    if m.getextrema()[1] == 0:
        raise ConfigError("the mask is all black: nothing to repaint (white marks the area to repaint"
                          + (", and the mask is inverted" if invert else "") + ")")
    return m


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of std `blur` pixels along x then y, kernel radius
    int(2.5 * blur + 0.5), borders mirrored (OpenCV's GaussianBlur), rounded to 8 bits each pass."""
    if blur <= 0:
        return mask.copy()
    arr = np.asarray(mask, dtype=np.float64)
    for axis in (1, 0):
        arr = ndimage.gaussian_filter1d(arr, blur, axis=axis, mode="mirror", radius=int(2.5 * blur + 0.5))
        arr = np.clip(np.rint(arr), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "L")


def crop_region(mask: Image.Image, padding: int) -> Box:
    """The box around the mask's non-zero pixels grown by `padding` and clipped (A1111's get_crop_region_v2)."""
    x0, y0, x1, y1 = mask.getbbox()
    w, h = mask.size
    return max(x0 - padding, 0), max(y0 - padding, 0), min(x1 + padding, w), min(y1 + padding, h)


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """[lo, hi) grown about its centre to `want` long, shifted back inside [0, limit)."""
    diff = int(want - (hi - lo))
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def fit_region(box: Box, width: int, height: int, image_size: tuple[int, int]) -> Box:
    """`box` grown to the processing aspect ratio width:height inside the image (A1111's expand_crop_region)."""
    x0, y0, x1, y1 = box
    ratio = width / height
    if (x1 - x0) / (y1 - y0) > ratio:
        y0, y1 = _grow(y0, y1, (x1 - x0) / ratio, image_size[1])
    else:
        x0, x1 = _grow(x0, x1, (y1 - y0) * ratio, image_size[0])
    return x0, y0, x1, y1


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area painted with ever less blurred colours of the
    unmasked surroundings (masking.fill)."""
    out = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def overlay_mask(blurred: Image.Image, whole_picture: bool) -> Image.Image:
    """How much of the generated image shows in the composite: the blurred mask, doubled (clipped)
    for a whole-picture run so it covers the mask fully and ramps off outside it (A1111's mask_for_overlay)."""
    if not whole_picture:
        return blurred
    return Image.fromarray(np.clip(np.asarray(blurred, dtype=np.float32) * 2, 0, 255).astype(np.uint8), "L")


def composite(source: Image.Image, generated: Image.Image, overlay: Image.Image) -> Image.Image:
    """source * (1 - a) + generated * a with a = overlay / 255: exactly the source where a = 0."""
    src = np.asarray(source.convert("RGB"), dtype=np.float64)
    gen = np.asarray(generated.convert("RGB").resize(source.size, Image.Resampling.LANCZOS), dtype=np.float64)
    a = np.asarray(overlay, dtype=np.float64)[..., None] / 255.0
    out = np.where(a > 0, np.rint(src + (gen - src) * a), src)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def paste_region(source: Image.Image, generated: Image.Image, box: Box) -> Image.Image:
    """The source with `generated` resized into `box` (an only-masked crop put back)."""
    out = source.convert("RGB").copy()
    out.paste(generated.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
    return out


def expand_canvas(image: Image.Image, expand: Expand) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask) for outpainting: the image on a larger canvas whose new border is filled from
    the image's colours (A1111's fill), and a mask that is white on that border only."""
    image = image.convert("RGB")
    w, h = image.size
    size = (w + expand.left + expand.right, h + expand.top + expand.bottom)
    canvas = Image.new("RGB", size)
    canvas.paste(image, (expand.left, expand.top))
    mask = Image.new("L", size, 255)
    mask.paste(0, (expand.left, expand.top, expand.left + w, expand.top + h))
    return fill(canvas, mask), mask
